"""Gated promotion: `uniadc promote` (or `python -m flows.promote`), and the last step of retraining.

Scores `@challenger` and `@champion` on the same evaluation data (the current manifest's test
images), applies the `promote` gates, tags both versions with the decision and the figures, and
moves `@champion` only when the challenger passes. `--rollback` moves `@champion` back one version.
One promotion runs at a time per project (a lock in `.uniadc/`); a second one started meanwhile stops with a
message naming the first, and a promotion whose champion moved while it scored refuses to record.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.layout import Layout
from tasks.promote import decide_promotion, record, rollback, score_version
from uniadc_core.config import load_params
from uniadc_core.io import exclusive

LOCK = ".uniadc/promote.lock"


@flow(name="promote")
def promote_flow(root: str = ".", params_path: str = "", rollback_champion: bool = False) -> dict:
    with exclusive(Path(root) / LOCK, "a promotion (`uniadc promote` or retraining) of this project"):
        return _promote(root, params_path, rollback_champion)


def _promote(root: str, params_path: str, rollback_champion: bool) -> dict:
    from uniadc_core.tracking import alias_version, tracking_uri

    layout = Layout.at(root)
    params = load_params(params_path or layout.params)
    cfg = params.evaluate.mlflow
    uri, name = tracking_uri(cfg.tracking_uri, root), cfg.registered_model
    if rollback_champion:
        return {"champion": rollback(uri, name), "decision": "rolled back"}
    challenger, champion = alias_version(uri, name, "challenger"), alias_version(uri, name, "champion")
    if challenger is None:
        msg = f"{name} has no @challenger version at {uri}; run the pipeline (dvc repro) first"
        raise ValueError(msg)
    if challenger == champion:
        return {"challenger": challenger, "champion": champion, "promoted": False, "decision": "already champion"}
    mine = score_version(uri, name, challenger, str(layout.manifest), params.evaluate, root)
    theirs = score_version(uri, name, champion, str(layout.manifest), params.evaluate, root) if champion else None
    decision = decide_promotion(mine, theirs, params.promote)
    record(uri, name, challenger, champion, decision)
    return {"challenger": challenger, "champion": challenger if decision.promote else champion,
            "promoted": decision.promote, "decision": decision.reason, "challenger_metrics": decision.challenger,
            "champion_metrics": decision.champion}


if __name__ == "__main__":
    import sys

    print(promote_flow(rollback_champion="--rollback" in sys.argv[1:]))
