"""The evaluate stage: test-set metrics with no class label given to the model.

Three normalisations of the same discriminator scores:
- ``none``: one global (u, gamma) from all held-out normals pooled (no alignment);
- ``cada``: (u, gamma) predicted per image by the CADA regressor;
- ``oracle``: each image's true class statistics (class-aware upper bound).
Each variant's decision is made by ``uniadc_core.serving.detector.decide``, the function
prediction uses, at the threshold saved in the models folder: an image is anomalous when its
aligned score exceeds it, and a pixel gets a defect type when its aligned map value does. Pixel
metrics are computed at the model's input size, on images preprocessed as the model was trained.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from uniadc_core.cada.regressor import Cada
from uniadc_core.config import EvaluateConfig
from uniadc_core.data.manifest import Role
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decision import Decision, Scores, decide
from uniadc_core.evaluation.plots import plot_confusion, plot_overlays, plot_roc, plot_score_histograms
from uniadc_core.evaluation.report import METRICS, VARIANTS
from uniadc_core.io import atomic_path, write_json
from uniadc_core.metrics import accuracy, aupro, auroc, auroc_by_group, confusion_matrix, f1_max, mean_iou, recall_at_fpr
from uniadc_core.model.scoring import score_images
from uniadc_core.serving.detector import Detector

log = logging.getLogger(__name__)


class EvalSet(NamedTuple):
    images: list[np.ndarray]  # (S, S, 3) uint8, preprocessed for the model (resize tile: native, ``Preprocess.native``)
    masks: np.ndarray  # (N, H, W) uint8 defect index, 0 = normal
    has_mask: np.ndarray  # (N,) False for anomalies without a mask: left out of pixel metrics
    labels: np.ndarray  # (N,) image defect index, 0 = normal (an image with several types: the type of most area)
    classes: list[str]
    paths: list[str]
    present: np.ndarray | None = None  # (N, K+1) bool: the types in each image (column 0: normal); None = labels' alone
    views: list[np.ndarray] | None = None  # (S, S, 3) the images as the maps lie on them (overlays); None = ``images``
    valid: np.ndarray | None = None  # (N, S, S) bool: view pixels that show the image (pad, tile: not the padding); None = all


def load_test_set(manifest: pl.DataFrame, defect_types: list[str], pre: Preprocess) -> EvalSet:
    test = manifest.filter(pl.col("role") == Role.TEST).sort("path")
    if test.height == 0:
        msg = "the manifest has no test images (role 'test'); nothing to evaluate"
        raise ValueError(msg)
    unknown = sorted(set(test["defect_type"].drop_nulls().to_list()) - set(defect_types))
    if unknown:
        msg = f"test defect types {unknown} are not in the model's vocabulary {defect_types}; retrain on this dataset"
        raise ValueError(msg)
    images, masks, labels, has_mask, valid = [], [], [], [], []
    present = np.zeros((test.height, len(defect_types) + 1), bool)
    listed = test["defect_types"] if "defect_types" in test.columns else test["defect_type"]
    for i, (row, types) in enumerate(zip(test.iter_rows(named=True), listed.to_list(), strict=True)):
        decoded = pre.decode_image(row["path"])
        images.append(pre.native(decoded) if pre.tiled else pre.image(decoded))
        valid.append(pre.shown(decoded.shape[:2]))
        label = defect_types.index(row["defect_type"]) + 1 if row["is_anomaly"] else 0
        known = not row["is_anomaly"] or row["mask_path"] is not None
        if row["is_anomaly"] and known:
            mask = pre.load_labels(row["mask_path"], label, row.get("mask_rule"))  # read as ingest stored it, whatever the model's rule
            if mask.max(initial=0) > len(defect_types):
                msg = (f"{row['mask_path']}: defect index {int(mask.max())} in its label map, but the model knows "
                       f"{len(defect_types)} types; evaluate a model trained on this dataset (re-run train)")
                raise ValueError(msg)
        else:
            mask = np.zeros((pre.size, pre.size), np.uint8)
        masks.append(mask)
        labels.append(label)
        has_mask.append(known)
        present[i, label] = True
        for t in (types or "").split(","):
            if t in defect_types:
                present[i, defect_types.index(t) + 1] = True
    return EvalSet(images, np.stack(masks), np.array(has_mask), np.array(labels), test["object_class"].to_list(), test["path"].to_list(),
                   present, [pre.view(im) for im in images] if pre.tiled else None, _padding_left_out(np.stack(valid)))


def _padding_left_out(valid: np.ndarray) -> np.ndarray | None:
    """``EvalSet.valid``: None where every view pixel shows its image (stretch, square images), so the metrics
    need not mask anything."""
    return None if valid.all() else valid


def variant_stats(cada: Cada, scores: Scores, classes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = len(classes)
    gu, gg = cada.global_stats()
    oracle = np.array([cada.class_stats(c) for c in classes])
    return {
        "none": (np.full(n, gu), np.full(n, gg)),
        "cada": cada.predict_stats(scores.embedding),
        "oracle": (oracle[:, 0], oracle[:, 1]),
    }


def compute_metrics(d: Decision, test: EvalSet, max_fpr: float, num_types: int) -> dict:
    """Metrics of one variant's decision."""
    px = test.has_mask  # pixel metrics only where the truth is known, over the pixels that show the image
    maps, is_anom, gt_pix = d.anomaly_map[px], test.labels > 0, test.masks[px] > 0
    shown = None if test.valid is None else test.valid[px]

    def counted(arr: np.ndarray) -> np.ndarray:  # the pixels of ``arr`` that show an image
        return arr if shown is None else arr[shown]

    pix_conf = confusion_matrix(counted(test.masks[px]), counted(d.pixel_labels[px]), num_types + 1)
    present = np.flatnonzero(pix_conf.sum(1) > 0)
    return {
        "image_auroc": _safe(auroc, d.score, is_anom),
        "pixel_auroc": _safe(auroc, counted(maps), counted(gt_pix)),
        "aupro": _safe(aupro, maps, gt_pix, max_fpr, 400, shown),
        "f1_max": _safe(f1_max, d.score, is_anom),
        "recall_at_1pct_fpr": _safe(recall_at_fpr, d.score, is_anom, 0.01),  # the ranking at a line's operating point (test ROC)
        "type_accuracy": _safe(type_accuracy, test, d.label),
        # classification alone: among the true anomalies, is the most likely type right (decided anomalous or not)
        "type_accuracy_given_anomaly": _safe(type_accuracy, test, d.type_index, is_anom) if is_anom.any() else None,
        # is the type probability honest: |accuracy - mean probability| over ten probability bins, weighted by their share
        "type_calibration_error": _safe(calibration_error, d.defect_prob[is_anom], _right(test, d.type_index, is_anom)) if is_anom.any() else None,
        # with --abstain-below 0.5: the share of true anomalies whose type is named, and how often it is right
        **abstaining(test, d, is_anom, ABSTAIN_REPORTED),
        "miou": _safe(mean_iou, pix_conf, present),
        # the decision at the threshold: normals flagged, anomalies missed
        "false_positive_rate": float(d.is_anomaly[~is_anom].mean()) if (~is_anom).any() else None,
        "miss_rate": float((~d.is_anomaly[is_anom]).mean()) if is_anom.any() else None,
        **uniadc_protocol(d, test, num_types),
    }


def uniadc_protocol(d: Decision, test: EvalSet, num_types: int) -> dict:
    """Type accuracy and mIoU by the rule of UniADC's released evaluation, for comparison with its figures only: it
    uses the test set's own statistics (never use it for a choice). The maps are min-max normalised over the whole
    test set, a pixel is a defect above 0.5 with the type its argmax gives, an image is normal when no pixel is a
    defect and otherwise takes the most frequent type of its defect pixels; mIoU is macro over {background, types}."""
    lo, hi = float(d.anomaly_map.min()), float(d.anomaly_map.max())
    defect = (d.anomaly_map - lo) / max(hi - lo, 1e-12) > 0.5
    labels = np.where(defect, d.pixel_types, 0).astype(np.uint8)
    predicted = np.array([np.bincount(lab[lab > 0], minlength=num_types + 1)[1:].argmax() + 1 if (lab > 0).any() else 0
                          for lab in labels], dtype=np.int64)
    px = test.has_mask
    truth, guess = test.masks[px], labels[px]
    if test.valid is not None:
        truth, guess = truth[test.valid[px]], guess[test.valid[px]]
    conf = confusion_matrix(truth, guess, num_types + 1)
    return {"type_accuracy_uniadc_protocol": _safe(type_accuracy, test, predicted),
            "miou_uniadc_protocol": _safe(mean_iou, conf, np.flatnonzero(conf.sum(1) > 0))}


ABSTAIN_REPORTED = 0.5  # the abstain_below level metrics.json reports


def _right(test: EvalSet, predicted: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """(n,) bool: is each selected image's predicted type one present in it."""
    idx = np.flatnonzero(sel)
    if test.present is None:
        return test.labels[idx] == np.asarray(predicted)[idx]
    return test.present[idx, np.asarray(predicted)[idx]].astype(bool)


def calibration_error(prob: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over ``bins`` equal-width probability bins, |accuracy - mean probability| weighted
    by the bin's share of the predictions."""
    if len(prob) == 0:
        msg = "calibration_error: no predictions"
        raise ValueError(msg)
    which = np.minimum((np.asarray(prob) * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        sel = which == b
        total += sel.sum() * abs(float(right[sel].mean()) - float(prob[sel].mean()))
    return total / len(prob)


def abstaining(test: EvalSet, d: Decision, is_anom: np.ndarray, level: float) -> dict:
    """Among the true anomalies: the share whose type probability reaches ``level`` (named, not "unknown") and the
    type accuracy over those."""
    if not is_anom.any():
        return {"type_named_share": None, "type_accuracy_named": None}
    named = is_anom & (d.defect_prob >= level)
    return {"type_named_share": float(named.sum() / is_anom.sum()),
            "type_accuracy_named": float(_right(test, d.type_index, named).mean()) if named.any() else None}


def type_accuracy(test: EvalSet, predicted: np.ndarray, sel: np.ndarray | None = None) -> float:
    """Share of images whose predicted label is right: a type present in the image (an image with several
    types counts any of them), 0 for a normal; the same as plain accuracy where every image has one type."""
    sel = np.ones(len(test.labels), bool) if sel is None else sel
    if not sel.any():
        msg = "type_accuracy: no samples"
        raise ValueError(msg)
    if test.present is None:
        return accuracy(test.labels[sel], predicted[sel])
    return float(test.present[np.flatnonzero(sel), np.asarray(predicted)[sel]].mean())


def _short(x: float | None) -> str:
    return "n/a" if x is None else f"{float(x):.4f}"


def _safe(metric, *args) -> float | None:
    """A metric that cannot be computed on this test set (one class only, no mask) is None, with a warning."""
    try:
        return metric(*args)
    except ValueError as exc:
        log.warning("%s not computed: %s", metric.__name__, exc)
        return None


def _subset(test: EvalSet, d: Decision, sel: np.ndarray) -> tuple[EvalSet, Decision]:
    idx = np.flatnonzero(sel)
    part = EvalSet([test.images[i] for i in idx], test.masks[idx], test.has_mask[idx], test.labels[idx],
                   [test.classes[i] for i in idx], [test.paths[i] for i in idx], None if test.present is None else test.present[idx],
                   None if test.views is None else [test.views[i] for i in idx], None if test.valid is None else test.valid[idx])
    return part, Decision(*(v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx] for v in d))


def _per_class(test: EvalSet, decisions: dict[str, Decision], max_fpr: float, num_types: int) -> pl.DataFrame:
    """Every metric per object class and variant (a pooled model's classes, each judged alone, at the one threshold)."""
    rows = []
    classes = np.asarray(test.classes)
    for cls in sorted(set(test.classes)):
        sel = classes == cls
        row = {"object_class": cls, "images": int(sel.sum()), "anomalies": int((test.labels[sel] > 0).sum())}
        for v, d in decisions.items():
            part, decided = _subset(test, d, sel)
            with _quiet():
                metrics = compute_metrics(decided, part, max_fpr, num_types)
            row.update({f"{k}_{v}": metrics[k] for k in METRICS})
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


@contextlib.contextmanager
def _quiet():
    """Metrics a class cannot have (no anomaly of it in the test set) are None without a warning per class."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def evaluate(detector: Detector, manifest: pl.DataFrame, cfg: EvaluateConfig, out_dir: str | Path | None) -> dict:
    """Score the test set, write metrics.json, per_class.csv, predictions.csv and plots (not when ``out_dir``
    is None: the metrics alone, as promotion needs); return the flat metrics."""
    model, cada, threshold = detector.model, detector.cada, detector.threshold
    types = model.config.defect_types
    test = load_test_set(manifest, types, model.preprocess)
    scores = score_images(model, test.images, progress=True, preprocessed=True)
    stats = variant_stats(cada, scores, test.classes)
    decisions = {v: decide(scores, *stats[v], threshold, types) for v in VARIANTS}
    flat, per_variant = {"threshold": threshold, "calibrated_threshold": cada.config.calibrated_threshold}, {}
    for v in VARIANTS:
        per_variant[v] = compute_metrics(decisions[v], test, cfg.max_fpr, len(types))
        flat.update({f"{k}_{v}": None if x is None else round(float(x), 6) for k, x in per_variant[v].items()})
    flat["test_images"] = len(test.labels)
    flat["test_anomalies"] = int((test.labels > 0).sum())
    for v in VARIANTS:
        log.info("%-6s %s", v, "  ".join(f"{k}={_short(per_variant[v][k])}" for k in METRICS))
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", flat)
        write_report(Path(out_dir), test, scores, decisions, types, threshold, cfg.overlays, cfg.max_fpr)
    return flat


def confusion_table(confusion: np.ndarray, types: list[str]) -> pl.DataFrame:
    """The image-level confusion (rows: true normal + types; columns: decided) as a table whose first column,
    ``decided normal``, holds the misses of every defect row apart from the confusions between types."""
    names = ["normal", *types]
    return pl.DataFrame({"true": names, "decided normal (a miss)": confusion[:, 0],
                         **{f"decided {t}": confusion[:, k + 1] for k, t in enumerate(types)},
                         "images": confusion.sum(1)})


def per_type_detection(test: EvalSet, scores: Scores, d: Decision, types: list[str]) -> pl.DataFrame:
    """For each defect type, how well the model tells images holding it from all others: the AUROC of
    ``aligned score + log p(type)`` (anomalous, and of this type) against "this type is present"; and how
    well its map finds that type's pixels: their share of all defect pixels and their pixel AUROC against
    every normal pixel (of the images whose masks are known, over the pixels that show the image). The
    pooled pixel AUROC weighs the types by their share, so this table says which type holds it down."""
    present = test.present if test.present is not None else np.eye(len(types) + 1, dtype=bool)[test.labels]
    pixel_types, maps = test.masks[test.has_mask], d.anomaly_map[test.has_mask]
    if test.valid is not None:
        shown = test.valid[test.has_mask]
        pixel_types, maps = pixel_types[shown], maps[shown]
    counts = np.bincount(pixel_types.ravel(), minlength=len(types) + 1)
    by_pixel = auroc_by_group(maps, pixel_types) if counts[0] else {}
    defect_pixels = max(int(counts[1:].sum()), 1)
    rows = []
    for k, name in enumerate(types):
        truth = present[:, k + 1]
        score = d.score + np.log(np.clip(scores.type_probs[:, k], 1e-6, 1.0))
        rows.append({"defect_type": name, "images": int(truth.sum()),
                     "auroc": auroc(score, truth) if 0 < truth.sum() < len(truth) else None,
                     "pixel_share": float(counts[k + 1] / defect_pixels), "pixel_auroc": by_pixel.get(k + 1)})
    return pl.DataFrame(rows, schema={"defect_type": pl.Utf8, "images": pl.Int64, "auroc": pl.Float64,
                                      "pixel_share": pl.Float64, "pixel_auroc": pl.Float64})


def write_report(out_dir: Path, test: EvalSet, scores: Scores, decisions: dict[str, Decision], types: list[str],
                 threshold: float, overlays: int, max_fpr: float = 0.3) -> None:
    """per_class.csv, per_type.csv, predictions.csv (CADA variant) and the plots."""
    table = _per_class(test, decisions, max_fpr, len(types))
    with atomic_path(out_dir / "per_class.csv") as tmp:
        table.write_csv(tmp)
    log.info("per class:\n%s", table)
    by_type = per_type_detection(test, scores, decisions["cada"], types)
    with atomic_path(out_dir / "per_type.csv") as tmp:
        by_type.write_csv(tmp)
    d = decisions["cada"]
    names = ["normal", *types]
    predictions = pl.DataFrame({
        "path": test.paths,
        "object_class": test.classes,
        "true_type": [names[i] for i in test.labels],
        "raw_score": scores.score,
        "u": d.u,
        "gamma": d.gamma,
        "score": d.score,
        "pred_type": [names[i] for i in d.label],
        "type_prob": d.defect_prob,
    })
    with atomic_path(out_dir / "predictions.csv") as tmp:
        predictions.write_csv(tmp)

    plots = out_dir / "plots"
    if 0 < (test.labels > 0).sum() < len(test.labels):  # a ROC curve needs both kinds of image
        plot_roc({v: (decisions[v].score, test.labels > 0) for v in VARIANTS}, plots / "roc.png")
    confusion = confusion_matrix(test.labels, d.label, len(names))
    plot_confusion(confusion, names, plots / "confusion.png")
    with atomic_path(out_dir / "confusion.csv") as tmp:
        confusion_table(confusion, types).write_csv(tmp)
    plot_score_histograms(scores.score, d.score, test.classes, test.labels > 0, plots / "scores.png")
    plot_overlays(test.images if test.views is None else test.views, d.anomaly_map, test.masks, test.labels, d.label, d.score, names,
                  threshold, overlays, plots / "overlays.png")
