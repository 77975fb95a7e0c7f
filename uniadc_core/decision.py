"""The one decision function, numpy only: raw scores + CADA statistics -> aligned scores, verdicts and types.

    d = decide(scores, u, gamma, threshold, defect_types)    # Decision: aligned score, is_anomaly, type, ...

Evaluation, ``uniadc predict``, the HTTP service, the MLflow pyfunc and the exported ONNX runtime all
decide through it, so what is evaluated is what is served; it needs neither torch nor the models.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_SPREAD = 1e-3  # default floor on gamma - u so the division is safe (fit_cada.min_spread sets it)


class Scores(NamedTuple):
    """Discriminator outputs for N images, as numpy, at the model's input size S."""

    score: np.ndarray  # (N,) raw image score
    anomaly_map: np.ndarray  # (N, S, S) float32
    type_probs: np.ndarray  # (N, K)
    pixel_types: np.ndarray  # (N, S, S) uint8 defect index 1..K
    embedding: np.ndarray  # (N, E)


def align(scores: np.ndarray, u: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """(s - u) / (gamma - u); ``u`` and ``gamma`` broadcast against ``scores``."""
    return (scores - u) / np.maximum(gamma - u, MIN_SPREAD)


class Decision(NamedTuple):
    """What the detector says about N images, with no class label given."""

    score: np.ndarray  # (N,) aligned image score; > threshold means anomalous
    raw_score: np.ndarray  # (N,)
    u: np.ndarray  # (N,) normal-score mean used for the alignment
    gamma: np.ndarray  # (N,) normal-score max used for the alignment
    anomaly_map: np.ndarray  # (N, S, S) aligned like the score
    is_anomaly: np.ndarray  # (N,) bool
    label: np.ndarray  # (N,) int: 0 normal, else the defect index (1..K) of the most likely type
    defect_type: list[str]  # (N,) most likely defect type (whether or not the image is anomalous)
    defect_prob: np.ndarray  # (N,) its probability
    pixel_labels: np.ndarray  # (N, S, S) defect index where the aligned map exceeds the threshold, else 0
    type_index: np.ndarray  # (N,) int 1..K: the most likely type's index, whatever the verdict (a miss keeps its type)
    pixel_types: np.ndarray  # (N, S, S) uint8 1..K: each pixel's most likely type, whatever its score


def decide(scores: Scores, u: np.ndarray, gamma: np.ndarray, threshold: float, defect_types: list[str]) -> Decision:
    """Align raw scores and maps with (u, gamma) per image, then threshold them and name the defect type."""
    aligned = align(scores.score, u, gamma)
    amap = align(scores.anomaly_map, u[:, None, None], gamma[:, None, None])
    n = len(scores.score)
    best = scores.type_probs.argmax(1) if n else np.zeros(0, int)
    is_anomaly = aligned > threshold
    return Decision(
        score=aligned,
        raw_score=scores.score,
        u=u,
        gamma=gamma,
        anomaly_map=amap,
        is_anomaly=is_anomaly,
        label=np.where(is_anomaly, best + 1, 0),
        defect_type=[defect_types[i] for i in best],
        defect_prob=scores.type_probs[np.arange(n), best] if n else np.zeros(0),
        pixel_labels=np.where(amap > threshold, scores.pixel_types, 0).astype(np.uint8),
        type_index=best + 1,
        pixel_types=scores.pixel_types,
    )
