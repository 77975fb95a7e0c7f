"""The one decision function, numpy only: raw scores + CADA statistics -> aligned scores, verdicts and types.

    d = decide(scores, u, gamma, threshold, defect_types)    # Decision: aligned score, is_anomaly, type, ...

Evaluation, ``uniadc predict``, the HTTP service, the MLflow pyfunc and the exported ONNX runtime all
decide through it, so what is evaluated is what is served; it needs neither torch nor the models.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_NONE = np.iinfo(np.int64).max
MIN_SPREAD = 1e-3  # default floor on gamma - u so the division is safe (fit_cada.min_spread sets it)


class Scores(NamedTuple):
    """Discriminator outputs for N images, as numpy, at the model's input size S."""

    score: np.ndarray  # (N,) raw image score
    anomaly_map: np.ndarray  # (N, S, S) float32
    type_probs: np.ndarray  # (N, K)
    pixel_types: np.ndarray  # (N, S, S) uint8 defect index 1..K
    embedding: np.ndarray  # (N, E)
    pixel_type_prob: np.ndarray  # (N, S, S) uint8: the probability of each pixel's type, in 1/255 steps


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
    region_prob: np.ndarray  # (N, S, S) uint8: over each decided region, its type's probability in 1/255 steps (0 elsewhere)
    type_known: np.ndarray  # (N,) bool: the image's type probability is at least ``abstain_below`` (else "unknown")


UNKNOWN = "unknown"  # the type reported when its probability is below the line's ``abstain_below``


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) int64 labels of the 8-connected components of a bool mask (0 outside, 1..n in scan order of their
    first pixel) and n: each pixel takes the smallest index in its 3x3 neighbourhood, then jumps to that
    pixel's label (pointer jumping), until nothing changes."""
    h, w = mask.shape
    label = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), _NONE)
    while True:
        padded = np.pad(label, 1, constant_values=_NONE)
        low = label.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(low, padded[dy:dy + h, dx:dx + w], out=low)
        low = np.where(mask, low, _NONE)
        flat = low.ravel()
        inside = flat != _NONE
        flat[inside] = np.minimum(flat[inside], label.ravel()[flat[inside]])
        if np.array_equal(low, label):
            break
        label = low
    out = np.zeros((h, w), np.int64)
    roots, dense = np.unique(label[mask], return_inverse=True)
    out[mask] = dense + 1
    return out, len(roots)


def region_labels(amap: np.ndarray, pixel_types: np.ndarray, pixel_prob: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) uint8 labels and type probabilities (1/255 steps, as ``pixel_prob``) of one image's decided regions: each
    8-connected region of pixels above ``threshold`` takes, whole, the type (and its probability) at its most anomalous
    pixel."""
    labels, probs = np.zeros(amap.shape, np.uint8), np.zeros(amap.shape, np.uint8)
    above = amap > threshold
    rows, cols = np.flatnonzero(above.any(1)), np.flatnonzero(above.any(0))
    if not len(rows):
        return labels, probs
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # the regions' bounding box: components on it alone
    comp, count = components(above[box])
    scores, kinds, chance = amap[box].ravel(), pixel_types[box].ravel(), pixel_prob[box].ravel()
    flat, where = comp.ravel(), np.flatnonzero(comp)
    order = where[np.lexsort((-scores[where], flat[where]))]  # by region, highest score first
    first = order[np.r_[0, np.flatnonzero(np.diff(flat[order])) + 1]]  # each region's peak pixel
    peak_type, peak_prob = np.zeros(count + 1, np.uint8), np.zeros(count + 1, np.uint8)  # index 0: outside every region
    peak_type[flat[first]], peak_prob[flat[first]] = kinds[first], chance[first]
    labels[box], probs[box] = peak_type[comp], peak_prob[comp]
    return labels, probs


def check_probability(p: float, name: str = "abstain_below") -> float:
    """``p`` if it is a probability, else a ValueError naming ``name``."""
    if not 0.0 <= p <= 1.0:
        msg = f"{name} must be a probability in [0, 1], got {p}"
        raise ValueError(msg)
    return float(p)


def decide(scores: Scores, u: np.ndarray, gamma: np.ndarray, threshold: float, defect_types: list[str],
           abstain_below: float = 0.0) -> Decision:
    """Align raw scores and maps with (u, gamma) per image, then threshold them and name the defect type: each
    decided region's at its peak, the image's at its own peak (its strongest region's, when it has one). A type whose
    probability is below ``abstain_below`` is reported as ``UNKNOWN``."""
    aligned = align(scores.score, u, gamma)
    amap = align(scores.anomaly_map, u[:, None, None], gamma[:, None, None])
    n = len(scores.score)
    best = scores.type_probs.argmax(1) if n else np.zeros(0, int)
    prob = scores.type_probs[np.arange(n), best] if n else np.zeros(0)
    known = np.round(prob * 255) / 255 >= abstain_below  # in the regions' 1/255 steps: an image and its strongest
    # region never disagree on "unknown" near the level
    is_anomaly = aligned > threshold
    size = amap.shape[1:]
    labels, region_prob = np.zeros((n, *size), np.uint8), np.zeros((n, *size), np.uint8)
    for i in range(n):
        labels[i], region_prob[i] = region_labels(amap[i], scores.pixel_types[i], scores.pixel_type_prob[i], threshold)
    return Decision(
        score=aligned,
        raw_score=scores.score,
        u=u,
        gamma=gamma,
        anomaly_map=amap,
        is_anomaly=is_anomaly,
        label=np.where(is_anomaly, best + 1, 0),
        defect_type=[defect_types[i] if k else UNKNOWN for i, k in zip(best, known, strict=True)],
        defect_prob=prob,
        pixel_labels=labels,
        type_index=best + 1,
        pixel_types=scores.pixel_types,
        region_prob=region_prob,
        type_known=known,
    )
