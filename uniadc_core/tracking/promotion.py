"""The promotion gate: is the challenger good enough, and better than the champion on the same data?

Pure decision logic (no MLflow): the flow scores both registered versions on today's evaluation
data and hands the two metric dicts here.

Rules, in order:
1. every gated and tracked metric of the challenger must be present (a missing one rejects);
2. the challenger must meet the absolute gates (``min_image_auroc``, ``min_type_accuracy``);
3. with no champion, a challenger that passes the gates is promoted;
4. no tracked metric may drop by more than ``max_drop`` below the champion's;
5. the challenger must be better: the mean of the tracked metrics strictly above the champion's
   (a tie keeps the champion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uniadc_core.config import PromoteConfig


@dataclass
class Decision:
    promote: bool
    reason: str
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None

    def tags(self, prefix: str = "promotion") -> dict[str, str]:
        """What is written on the versions: the decision, the reason and the figures behind it."""
        out = {f"{prefix}.decision": "promoted" if self.promote else "rejected", f"{prefix}.reason": self.reason}
        out.update({f"{prefix}.challenger.{k}": f"{v:.4f}" for k, v in self.challenger.items()})
        out.update({f"{prefix}.champion.{k}": f"{v:.4f}" for k, v in (self.champion or {}).items()})
        return out


def _pick(metrics: dict, keys: list[str]) -> tuple[dict[str, float], list[str]]:
    got, missing = {}, []
    for k in keys:
        v = metrics.get(k)
        if v is None or v != v:  # absent, null or NaN
            missing.append(k)
        else:
            got[k] = float(v)
    return got, missing


def decide(challenger: dict, champion: dict | None, cfg: PromoteConfig) -> Decision:
    keys = list(dict.fromkeys([*cfg.tracked, cfg.image_auroc_key, cfg.type_accuracy_key]))
    mine, missing = _pick(challenger, keys)
    if missing:
        return Decision(False, f"challenger lacks metrics {missing}; re-run evaluation", mine, None)
    gates = [(cfg.image_auroc_key, cfg.min_image_auroc), (cfg.type_accuracy_key, cfg.min_type_accuracy)]
    for key, floor in gates:
        if mine[key] < floor:
            return Decision(False, f"{key} {mine[key]:.4f} is below the gate {floor:.4f}", mine, None)
    if champion is None:
        return Decision(True, "no champion yet; the challenger passes the gates", mine, None)
    theirs, missing = _pick(champion, keys)
    if missing:  # a champion scored without some metric: compare on what both have
        keys = [k for k in keys if k in theirs]
    drops = {k: theirs[k] - mine[k] for k in cfg.tracked if k in theirs and theirs[k] - mine[k] > cfg.max_drop}
    if drops:
        worst = max(drops, key=drops.get)
        return Decision(False, f"{worst} drops by {drops[worst]:.4f} (> max_drop {cfg.max_drop:.4f}) against the champion", mine, theirs)
    tracked = [k for k in cfg.tracked if k in theirs]
    gain = sum(mine[k] - theirs[k] for k in tracked) / max(1, len(tracked))
    if gain <= cfg.min_gain:
        what = "a tie with" if gain == 0 else "not better than"
        return Decision(False, f"{what} the champion (mean tracked gain {gain:+.4f}, needs > {cfg.min_gain:.4f})", mine, theirs)
    return Decision(True, f"better than the champion (mean tracked gain {gain:+.4f})", mine, theirs)
