"""Detection, segmentation and classification metrics on numpy arrays.

Degenerate inputs (one class only, no defect region) raise ``ValueError`` with a message
instead of returning NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check_binary(labels: np.ndarray, what: str) -> None:
    pos = int(labels.sum())
    if pos == 0 or pos == labels.size:
        msg = f"{what}: needs both normal and anomalous samples, got {pos} anomalous of {labels.size}"
        raise ValueError(msg)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; ties share one point."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    _check_binary(labels, "ROC")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], int)
    ends = np.concatenate([distinct, [len(s) - 1]])
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return fpr, tpr, np.concatenate([[np.inf], s[ends]])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.01) -> float:
    """The largest share of positives found at any threshold that flags at most ``max_fpr`` of the negatives
    (ties share one point, so a threshold inside a tie is never assumed). For reporting how good the ranking is
    at a line's operating point, apart from where a calibrated threshold happens to sit; it reads the test labels."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def auroc_by_group(scores: np.ndarray, groups: np.ndarray, negative: int = 0) -> dict[int, float]:
    """For every group other than ``negative``, the AUROC of its scores against the ``negative`` group's: the
    chance that one of its samples outscores a negative one, ties counting half (``auroc`` on that subset,
    exactly). The negatives are sorted once, so a per-defect-type pixel AUROC costs one sort of the normal
    pixels, not one per type. A group with no sample is left out; no negative raises ``ValueError``."""
    scores, groups = np.asarray(scores, np.float64).ravel(), np.asarray(groups).ravel()
    neg = np.sort(scores[groups == negative])
    if neg.size == 0:
        msg = f"AUROC by group: no sample of the negative group {negative}"
        raise ValueError(msg)
    out = {}
    for g in np.unique(groups[groups != negative]):
        pos = scores[groups == g]
        below, not_above = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
        out[int(g)] = float((below + not_above).sum() / (2.0 * pos.size * neg.size))
    return out


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """The best F1 over all thresholds."""
    fpr, tpr, _ = roc_curve(scores, labels)
    labels = np.asarray(labels).ravel().astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    tp, fp = tpr * pos, fpr * neg
    f1 = np.where(tp > 0, 2 * tp / (tp + fp + pos), 0.0)
    return float(f1.max())


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 400,
          valid: np.ndarray | None = None) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    maps (N, H, W) float, masks (N, H, W) bool. Regions are 8-connected components of each mask;
    PRO at a threshold is the mean over regions of the fraction of the region above it; FPR is
    over all normal pixels. ``valid`` (N, H, W) bool: the pixels that show the image (a padded view's
    padding is neither normal nor defect); None: all.
    """
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks).astype(bool)
    normal = ~masks
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        masks, normal = masks & valid, normal & valid
    if not masks.any():
        msg = "AUPRO: no defect region in the masks"
        raise ValueError(msg)
    if not normal.any():
        msg = "AUPRO: no normal pixel in the masks"
        raise ValueError(msg)
    labels = np.zeros(masks.shape, np.int64)
    offset = 0
    for i in range(len(masks)):  # label regions per image, ids unique across images
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        labels[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    # thresholds spanning the normal-pixel score range where FPR <= max_fpr, plus region scores
    normal_scores = maps[normal]
    lo = np.quantile(normal_scores, 1 - max_fpr)
    hi = maps.max() if valid is None else maps[masks | normal].max()  # over the pixels that count
    thresholds = np.linspace(hi, lo, num_thresholds)  # decreasing
    # bin = number of thresholds strictly above the pixel: the pixel clears threshold j iff bin <= j
    bins = np.searchsorted(-thresholds, -maps.ravel(), side="left")  # 0..T
    t = num_thresholds
    normal_hist = np.bincount(bins[normal.ravel()], minlength=t + 1)
    fpr = np.cumsum(normal_hist)[:t] / normal_scores.size  # (T,) fraction of normal pixels >= threshold
    region = labels.ravel()
    in_region = region > 0
    counts = np.bincount(region[in_region] * (t + 1) + bins[in_region], minlength=(offset + 1) * (t + 1))
    counts = counts.reshape(offset + 1, t + 1)[1:]  # (R, T+1)
    overlap = np.cumsum(counts, axis=1)[:, :t] / counts.sum(1, keepdims=True)  # (R, T)
    pro = overlap.mean(0)
    # close the curve exactly at max_fpr by interpolation
    keep = fpr <= max_fpr
    f, p = np.concatenate([[0.0], fpr[keep]]), np.concatenate([[0.0], pro[keep]])
    if f[-1] < max_fpr:
        nxt = np.flatnonzero(~keep)
        if len(nxt):
            j = nxt[0]
            w = (max_fpr - f[-1]) / max(fpr[j] - f[-1], 1e-12)
            f, p = np.append(f, max_fpr), np.append(p, p[-1] + w * (pro[j] - p[-1]))
        else:
            f, p = np.append(f, max_fpr), np.append(p, p[-1])
    return float(np.trapezoid(p, f) / max_fpr)


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted."""
    true, pred = np.asarray(true, np.int64).ravel(), np.asarray(pred, np.int64).ravel()
    return np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true).ravel(), np.asarray(pred).ravel()
    if true.size == 0:
        msg = "accuracy: no samples"
        raise ValueError(msg)
    return float((true == pred).mean())


def mean_iou(conf: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean IoU over ``classes`` (default: every class present in truth or prediction)."""
    conf = np.asarray(conf, np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    if classes is None:
        classes = np.flatnonzero(union > 0)
    if len(classes) == 0:
        msg = "mIoU: no class present"
        raise ValueError(msg)
    return float(np.mean(inter[classes] / np.maximum(union[classes], 1)))
