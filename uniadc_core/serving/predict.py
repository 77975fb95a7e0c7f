"""Score new image files with a detector: one row per file, a corrupt file gets a row with its error.

    rows = predict_files(detector, list_images(["line3/", "odd.png"]), overlay_dir="overlays/", mask_dir="masks/")
    write_rows(rows, "predictions.csv")      # also predictions.regions.csv: one row per defect region

Each row carries the threshold it was decided at and its defect regions (``regions.native_regions``, at the
image's own size); ``mask_dir`` gets one label PNG per image (0 normal, k the k-th defect type).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from uniadc_core.decision import Decision
from uniadc_core.io import atomic_path
from uniadc_core.serving.overlay import labelled_overlay
from uniadc_core.serving.regions import label_png, native_regions

if TYPE_CHECKING:  # or an exported model's runtime.OnnxDetector: the same interface, no torch
    from uniadc_core.serving.detector import Detector

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
COLUMNS = ["path", "score", "raw_score", "is_anomaly", "defect_type", "defect_prob", "threshold", "regions", "error"]
REGION_COLUMNS = ["path", "region", "defect_type", "x0", "y0", "x1", "y1", "area", "max_score", "mean_score", "elongation", "orientation",
                  "touches_border", "type_probability", "threshold"]


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted); a missing input is an error."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            out.append(item)
        else:
            msg = f"{item}: no such file or folder"
            raise FileNotFoundError(msg)
    return out


def result(detector: Detector, d: Decision, i: int, shape: tuple[int, int]) -> tuple[dict, np.ndarray]:
    """Image ``i`` of a decision as a row (scores, verdict, type, the threshold in force, its regions) and its (H, W)
    uint8 label map at the image's own ``shape`` (all 0 for an image decided normal): what ``uniadc predict`` writes
    and the HTTP service returns."""
    view_labels = d.pixel_labels[i] if d.is_anomaly[i] else np.zeros_like(d.pixel_labels[i])
    regions, labels = native_regions(detector.preprocess, d.anomaly_map[i], view_labels, shape, detector.defect_types, d.region_prob[i],
                                     detector.abstain_below)
    return {"score": float(d.score[i]), "raw_score": float(d.raw_score[i]), "is_anomaly": bool(d.is_anomaly[i]),
            "defect_type": d.defect_type[i], "defect_prob": float(d.defect_prob[i]), "threshold": detector.threshold,
            "regions": [r.as_row() for r in regions]}, labels


def predict_files(detector: Detector, paths: list[str | Path], batch_size: int = 32, overlay_dir: str | Path | None = None,
                  progress: bool = True, mask_dir: str | Path | None = None) -> list[dict]:
    """One row per path, in the order given; overlays and masks are named by that order and the file's stem."""
    paths = [Path(p) for p in paths]
    rows: list[dict] = []
    for folder in (overlay_dir, mask_dir):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, ok = [], []
        for n, path in enumerate(chunk, start):
            try:
                images.append(detector.preprocess.decode_image(path))  # the model's decoder: orientation, bit depth, pixel limit
                ok.append((n, path))
            except (ValueError, OSError) as exc:  # unreadable or corrupt: a row with the error, the rest go on
                rows.append({"path": str(path), "error": str(exc)})
        if images:
            d = detector.detect(images, batch_size=batch_size)
            for i, (n, path) in enumerate(ok):
                row, labels = result(detector, d, i, images[i].shape[:2])
                rows.append({"path": str(path), **row, "error": ""})
                if mask_dir is not None:
                    with atomic_path(Path(mask_dir) / f"{n:05d}_{path.stem}.png") as tmp:
                        label_png(labels).save(tmp, format="PNG")
                if overlay_dir is not None:
                    verdict = f"{d.defect_type[i]} {d.defect_prob[i]:.2f}" if d.is_anomaly[i] else "normal"
                    label = f"{verdict}  score {d.score[i]:.2f}"
                    overlay = labelled_overlay(detector.preprocess.image(images[i]), d.anomaly_map[i], detector.threshold, label)
                    with atomic_path(Path(overlay_dir) / f"{n:05d}_{path.stem}.png") as tmp:
                        overlay.save(tmp, format="PNG")
        bar.update(len(chunk))
    bar.close()
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(rows, key=lambda r: order[r["path"]])


def write_rows(rows: list[dict], out: str | Path) -> Path:
    """CSV (by default) or JSON (``.json``, each row with its list of regions), written atomically; a CSV row gives its
    region count, and ``<out stem>.regions.csv`` beside it one row per region."""
    out = Path(out)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".json":
            tmp.write_text(json.dumps([{k: r.get(k, [] if k == "regions" else "") for k in COLUMNS} for r in rows], indent=2))
        else:
            _write_csv(tmp, COLUMNS, [{**r, "regions": len(r.get("regions", []))} for r in rows])
    region_rows = [{"path": r["path"], "region": n, "threshold": r["threshold"], **reg}
                   for r in rows for n, reg in enumerate(r.get("regions", []))]
    with atomic_path(out.with_suffix(".regions.csv")) as tmp:
        _write_csv(tmp, REGION_COLUMNS, region_rows)
    return out


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in columns})
