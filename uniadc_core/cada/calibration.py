"""The decision threshold from out-of-sample normal scores, with a stated false-positive guarantee (numpy only).

    threshold, per_class = calibrate(aligned, classes, percentile=99.0)          # fit_cada
    threshold = threshold_for_rate(cada.config.calibration_scores, 0.02)        # a line's own false-alarm rate

A conformal threshold: with n held-out normal scores, the k-th smallest (k = ceil((n + 1) p / 100)) is
exceeded by a new exchangeable normal with probability at most 1 - p / 100. ``per_class`` takes the
highest of the classes' thresholds so that no class is expected above that rate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def conformal_rank(n: int, percentile: float) -> int:
    """The 1-based rank k = ceil((n + 1) * percentile / 100) of the held-out score used as a threshold: a new
    score exchangeable with the n held-out ones exceeds the k-th smallest with probability (n + 1 - k) / (n + 1)
    <= 1 - percentile / 100. k > n means n is too few for that guarantee (n < ``min_normals(percentile)``)."""
    return max(1, math.ceil((n + 1) * percentile / 100.0 - 1e-9))


def min_normals(percentile: float) -> int | None:
    """The fewest held-out normals whose conformal rank is within them (``conformal_rank(n, p) <= n``), i.e.
    ceil(p / (100 - p)); None at the 100th percentile, which no finite count supports."""
    return math.ceil(percentile / (100.0 - percentile) - 1e-9) if percentile < 100 else None


@dataclass(frozen=True)
class ClassThreshold:
    threshold: float
    count: int  # held-out normals it was taken from
    expected_false_positive_rate: float  # expected false-positive rate on new normals: (n + 1 - k) / (n + 1), k capped at n
    enough: bool  # whether count supports the percentile (k <= n)


def class_threshold(scores: np.ndarray, percentile: float) -> ClassThreshold:
    """The conformal ``percentile`` threshold of one set of held-out normal scores: the k-th smallest
    (``conformal_rank``), or their maximum where they are too few."""
    s, n = np.sort(np.asarray(scores, np.float64)), len(scores)
    if n == 0:
        raise ValueError("no held-out normal scores to calibrate a threshold on")
    k = conformal_rank(n, percentile)
    kept = min(k, n)
    return ClassThreshold(float(s[kept - 1]), n, (n + 1 - kept) / (n + 1), k <= n)


def calibrate(aligned: np.ndarray, classes: list[str], percentile: float, scope: str = "per_class") -> tuple[float, dict[str, ClassThreshold]]:
    """The decision threshold on aligned held-out normal scores, and each class's conformal ``percentile``.

    ``per_class``: the highest of the classes' thresholds, so no class's false-positive rate on new normals is
    expected above ``100 - percentile`` % (alignment brings the classes close, never exactly together);
    ``pooled``: the threshold of all scores together, which a class whose normals sit high can exceed. A class
    with too few held-out normals for the percentile keeps their maximum, with a warning that names the fix."""
    labels = np.asarray(classes)
    per = {c: class_threshold(aligned[labels == c], percentile) for c in sorted(set(classes))}
    if scope == "per_class":
        for cls, t in per.items():
            _warn_if_few(t, f"class '{cls}'", percentile)
        return max(t.threshold for t in per.values()), per
    pooled = class_threshold(aligned, percentile)
    _warn_if_few(pooled, "the pooled classes", percentile)
    return pooled.threshold, per


def _warn_if_few(t: ClassThreshold, who: str, percentile: float) -> None:
    if t.enough:
        return
    need = min_normals(percentile)
    log.warning("%s: %d out-of-sample normals are too few for a %.4gth-percentile threshold (%s): it is their maximum, whose expected "
                "false-positive rate on new normals is %.1f %%, not %.4g %%; add normal images, raise ingest.holdout_min (or holdout_fraction), "
                "set fit_cada.leave_item_out: true (with a memory) or lower fit_cada.threshold_percentile", who, t.count, percentile,
                f"it needs {need}" if need else "no finite count suffices", 100 * t.expected_false_positive_rate, 100 - percentile)


def threshold_for_rate(scores: dict[str, list[float]], rate: float, scope: str = "per_class") -> float:
    """The threshold whose expected false-positive rate on new normals is at most ``rate`` (0 < rate < 1), from the
    aligned held-out normal scores a model keeps per class (``CadaConfig.calibration_scores``)."""
    if not 0.0 < rate < 1.0:
        msg = f"false-alarm rate {rate}: give a fraction between 0 and 1, e.g. 0.01 for 1 %"
        raise ValueError(msg)
    if not scores or not any(scores.values()):
        msg = "this model keeps no held-out normal scores (fit_cada before uniadc recorded them): re-run fit_cada, or give --threshold"
        raise ValueError(msg)
    classes = [c for c, v in scores.items() for _ in v]
    aligned = np.concatenate([np.asarray(v, np.float64) for v in scores.values()])
    return calibrate(aligned, classes, 100.0 * (1.0 - rate), scope)[0]


def line_threshold(threshold: float | None, false_alarm_rate: float | None, scores: dict[str, list[float]],
                   scope: str = "per_class") -> float | None:
    """The threshold a line asks for: ``threshold`` as given, or the one for ``false_alarm_rate`` from the saved
    held-out normal ``scores``; None (neither): the model's own."""
    if threshold is not None and false_alarm_rate is not None:
        raise ValueError("give a threshold or a false-alarm rate, not both")
    if threshold is not None and not math.isfinite(threshold):
        msg = f"threshold {threshold}: give a finite number (aligned-score units; the model's own is near 1.0)"
        raise ValueError(msg)
    return threshold_for_rate(scores, false_alarm_rate, scope) if false_alarm_rate is not None else threshold
