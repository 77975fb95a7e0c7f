"""The evaluate stage: test-set metrics with no class label given to the model.

Three normalisations of the same discriminator scores:
- ``none``: one global (u, gamma) from all held-out normals pooled (no alignment);
- ``cada``: (u, gamma) predicted per image by the CADA regressor;
- ``oracle``: each image's true class statistics (class-aware upper bound).
An image is called anomalous when its aligned score exceeds ``threshold``; a pixel gets a defect
type when its aligned map value does. Pixel metrics are computed at the model's input size.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from uniadc_core.cada import Cada, align
from uniadc_core.config import EvaluateConfig
from uniadc_core.inference import Scores, score_arrays
from uniadc_core.io import atomic_path, load_image, load_mask, resize, write_json
from uniadc_core.metrics import accuracy, aupro, auroc, confusion_matrix, f1_max, mean_iou
from uniadc_core.model import Discriminator
from uniadc_core.plots import plot_confusion, plot_overlays, plot_roc, plot_score_histograms

log = logging.getLogger(__name__)

VARIANTS = ("none", "cada", "oracle")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "type_accuracy", "miou", "false_positive_rate", "miss_rate")


class EvalSet(NamedTuple):
    images: list[np.ndarray]  # (H, W, 3) uint8 at model size
    masks: np.ndarray  # (N, H, W) uint8 defect index, 0 = normal
    has_mask: np.ndarray  # (N,) False for anomalies without a mask: left out of pixel metrics
    labels: np.ndarray  # (N,) image defect index, 0 = normal
    classes: list[str]
    paths: list[str]


def load_test_set(manifest: pl.DataFrame, defect_types: list[str], size: int, policy: str = "stretch") -> EvalSet:
    test = manifest.filter(pl.col("role") == "test").sort("path")
    if test.height == 0:
        msg = "the manifest has no test images (role 'test'); nothing to evaluate"
        raise ValueError(msg)
    unknown = sorted(set(test["defect_type"].drop_nulls().to_list()) - set(defect_types))
    if unknown:
        msg = f"test defect types {unknown} are not in the model's vocabulary {defect_types}; retrain on this dataset"
        raise ValueError(msg)
    images, masks, labels, has_mask = [], [], [], []
    for row in test.iter_rows(named=True):
        images.append(resize(load_image(row["path"]), size, policy=policy))
        label = defect_types.index(row["defect_type"]) + 1 if row["is_anomaly"] else 0
        known = not row["is_anomaly"] or row["mask_path"] is not None
        mask = resize(load_mask(row["mask_path"]), size, policy=policy) if row["is_anomaly"] and known else np.zeros((size, size), bool)
        masks.append(mask.astype(np.uint8) * label)
        labels.append(label)
        has_mask.append(known)
    return EvalSet(images, np.stack(masks), np.array(has_mask), np.array(labels), test["object_class"].to_list(), test["path"].to_list())


def variant_stats(cada: Cada, scores: Scores, classes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = len(classes)
    gu, gg = cada.global_stats()
    oracle = np.array([cada.class_stats(c) for c in classes])
    return {
        "none": (np.full(n, gu), np.full(n, gg)),
        "cada": cada.predict_stats(scores.embedding),
        "oracle": (oracle[:, 0], oracle[:, 1]),
    }


def compute_metrics(scores: Scores, test: EvalSet, u: np.ndarray, gamma: np.ndarray, cfg: EvaluateConfig, num_types: int) -> tuple[dict, dict]:
    """Metrics of one variant, and its per-image predictions."""
    s = align(scores.score, u, gamma)
    px = test.has_mask  # pixel metrics only where the truth is known
    maps = align(scores.anomaly_map[px], u[px, None, None], gamma[px, None, None])
    is_anom = test.labels > 0
    gt_pix = test.masks[px] > 0
    pred_label = np.where(s > cfg.threshold, scores.type_probs.argmax(1) + 1, 0)
    pred_pix = np.where(maps > cfg.threshold, scores.pixel_types[px], 0)
    pix_conf = confusion_matrix(test.masks[px], pred_pix, num_types + 1)
    present = np.flatnonzero(pix_conf.sum(1) > 0)
    metrics = {
        "image_auroc": _safe(auroc, s, is_anom),
        "pixel_auroc": _safe(auroc, maps, gt_pix),
        "aupro": _safe(aupro, maps, gt_pix, cfg.max_fpr),
        "f1_max": _safe(f1_max, s, is_anom),
        "type_accuracy": _safe(accuracy, test.labels, pred_label),
        "miou": _safe(mean_iou, pix_conf, present),
        # the decision at the threshold: normals flagged, anomalies missed
        "false_positive_rate": float((s[~is_anom] > cfg.threshold).mean()) if (~is_anom).any() else None,
        "miss_rate": float((s[is_anom] <= cfg.threshold).mean()) if is_anom.any() else None,
    }
    return metrics, {"score": s, "pred_label": pred_label}


def _safe(metric, *args) -> float | None:
    """A metric that cannot be computed on this test set (one class only, no mask) is None, with a warning."""
    try:
        return metric(*args)
    except ValueError as exc:
        log.warning("%s not computed: %s", metric.__name__, exc)
        return None


def _per_class(test: EvalSet, preds: dict[str, dict]) -> pl.DataFrame:
    rows = []
    classes = np.asarray(test.classes)
    for cls in sorted(set(test.classes)):
        sel = classes == cls
        row = {"object_class": cls, "images": int(sel.sum()), "anomalies": int((test.labels[sel] > 0).sum())}
        for v, p in preds.items():
            labels = test.labels[sel] > 0
            row[f"image_auroc_{v}"] = auroc(p["score"][sel], labels) if 0 < labels.sum() < sel.sum() else None
            row[f"type_accuracy_{v}"] = accuracy(test.labels[sel], p["pred_label"][sel])
        rows.append(row)
    return pl.DataFrame(rows)


def evaluate(model: Discriminator, cada: Cada, manifest: pl.DataFrame, cfg: EvaluateConfig, out_dir: str | Path | None) -> dict:
    """Score the test set, write metrics.json, per_class.csv, predictions.csv and plots (not when ``out_dir``
    is None: the metrics alone, as promotion needs); return the flat metrics."""
    types = model.config.defect_types
    test = load_test_set(manifest, types, model.config.image_size, model.config.resize)
    scores = score_arrays(model, test.images, progress=True)
    stats = variant_stats(cada, scores, test.classes)
    threshold = cada.decision_threshold(cfg.threshold)
    cfg = dataclasses.replace(cfg, threshold=threshold)
    flat, preds, per_variant = {"threshold": threshold, "calibrated_threshold": cada.config.threshold}, {}, {}
    for v in VARIANTS:
        m, preds[v] = compute_metrics(scores, test, *stats[v], cfg, len(types))
        per_variant[v] = m
        flat.update({f"{k}_{v}": None if x is None else round(float(x), 6) for k, x in m.items()})
    flat["test_images"] = len(test.labels)
    flat["test_anomalies"] = int((test.labels > 0).sum())
    for v in VARIANTS:
        log.info("%-6s %s", v, "  ".join(f"{k}={per_variant[v][k]}" for k in METRICS))
    if out_dir is None:
        return flat

    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", flat)
    table = _per_class(test, preds)
    with atomic_path(out_dir / "per_class.csv") as tmp:
        table.write_csv(tmp)
    log.info("per class:\n%s", table)
    u, gamma = stats["cada"]
    predictions = pl.DataFrame({
        "path": test.paths,
        "object_class": test.classes,
        "true_type": ["normal" if i == 0 else types[i - 1] for i in test.labels],
        "raw_score": scores.score,
        "u": u,
        "gamma": gamma,
        "score": preds["cada"]["score"],
        "pred_type": ["normal" if i == 0 else types[i - 1] for i in preds["cada"]["pred_label"]],
        "type_prob": scores.type_probs.max(1),
    })
    with atomic_path(out_dir / "predictions.csv") as tmp:
        predictions.write_csv(tmp)

    plots = out_dir / "plots"
    names = ["normal", *types]
    if 0 < (test.labels > 0).sum() < len(test.labels):  # a ROC curve needs both kinds of image
        plot_roc({v: (preds[v]["score"], test.labels > 0) for v in VARIANTS}, plots / "roc.png")
    plot_confusion(confusion_matrix(test.labels, preds["cada"]["pred_label"], len(names)), names, plots / "confusion.png")
    plot_score_histograms(scores.score, preds["cada"]["score"], test.classes, test.labels > 0, plots / "scores.png")
    maps = align(scores.anomaly_map, u[:, None, None], gamma[:, None, None])
    plot_overlays(test.images, maps, test.masks, test.labels, preds["cada"]["pred_label"], preds["cada"]["score"], names,
                  cfg.threshold, cfg.overlays, plots / "overlays.png")
    return flat
