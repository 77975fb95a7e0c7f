"""The manifest: one row per real image, built by pure functions and written as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from uniadc_core.io import sha256_file
from uniadc_core.priors import Vocabulary, default_prior

ROLES = ("normal_shot", "normal_holdout", "unused_normal", "anomaly_shot", "test")

SCHEMA = {
    "image_id": pl.Utf8,
    "path": pl.Utf8,
    "split": pl.Utf8,
    "object_class": pl.Utf8,
    "is_anomaly": pl.Boolean,
    "defect_type": pl.Utf8,
    "mask_path": pl.Utf8,
    "width": pl.Int32,
    "height": pl.Int32,
    "role": pl.Utf8,
}


class ImageRecord(NamedTuple):
    path: Path
    split: str  # train | test
    object_class: str
    defect_type: str | None  # None for normal
    mask_path: Path | None


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        msg = f"{path}: cannot be decoded as an image ({exc}); replace or remove the file"
        raise ValueError(msg) from None


def records_to_frame(records: list[ImageRecord]) -> pl.DataFrame:
    """Hash and measure every image (and check its mask's size); no role yet."""
    rows = []
    seen: dict[str, Path] = {}
    for r in tqdm(records, desc="manifest", unit="img", leave=False):
        width, height = _size(r.path)
        if r.mask_path is not None:
            mw, mh = _size(r.mask_path)
            if (mw, mh) != (width, height):
                msg = f"{r.mask_path}: mask is {mw}x{mh} but its image {r.path} is {width}x{height}; masks must match their image"
                raise ValueError(msg)
        image_id = sha256_file(r.path)[:16]
        if image_id in seen:
            msg = f"{r.path}: same content as {seen[image_id]}; remove one of the duplicates"
            raise ValueError(msg)
        seen[image_id] = r.path
        rows.append({
            "image_id": image_id,
            "path": r.path.as_posix(),
            "split": r.split,
            "object_class": r.object_class,
            "is_anomaly": r.defect_type is not None,
            "defect_type": r.defect_type,
            "mask_path": r.mask_path.as_posix() if r.mask_path is not None else None,
            "width": width,
            "height": height,
            "role": None,
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def apply_few_shot(
    frame: pl.DataFrame, normal_shots: int | str, anomaly_shots: int, seed: int, holdout_fraction: float = 0.0
) -> pl.DataFrame:
    """Assign roles: k normal shots per class, k anomaly shots per (class, defect type) moved to train.

    Shots are drawn with ``seed``; anomaly shots leave the test set (split becomes train). A
    ``holdout_fraction`` of each class's normal shots (at least one when there are two or more)
    becomes ``normal_holdout``: never trained on, used for checkpoint choice and CADA statistics.
    """
    rng = np.random.default_rng(seed)
    frame = frame.sort("path")
    role = np.full(frame.height, "test", dtype=object)
    split = frame["split"].to_numpy().astype(object)
    for cls in sorted(frame["object_class"].unique().to_list()):
        idx = np.flatnonzero(((frame["object_class"] == cls) & (frame["split"] == "train") & ~frame["is_anomaly"]).to_numpy())
        role[idx] = "unused_normal"
        k = len(idx) if normal_shots == "all" else min(int(normal_shots), len(idx))
        shots = rng.permutation(idx)[:k]
        n_hold = 0 if (holdout_fraction == 0 or k < 2) else max(1, int(round(holdout_fraction * k)))
        role[shots[n_hold:]] = "normal_shot"
        role[shots[:n_hold]] = "normal_holdout"
        if anomaly_shots == 0:
            continue
        sub = frame.filter((pl.col("object_class") == cls) & pl.col("is_anomaly"))
        for defect in sorted(sub["defect_type"].unique().to_list()):
            idx = np.flatnonzero(((frame["object_class"] == cls) & (frame["defect_type"] == defect)).to_numpy())
            if len(idx) <= anomaly_shots:
                msg = (f"class '{cls}', defect '{defect}': {len(idx)} image(s) but ingest.anomaly_shots={anomaly_shots}; "
                       f"at least one must stay in the test set (lower anomaly_shots)")
                raise ValueError(msg)
            pick = rng.permutation(idx)[:anomaly_shots]
            role[pick] = "anomaly_shot"
            split[pick] = "train"
    return frame.with_columns(pl.Series("role", role, dtype=pl.Utf8), pl.Series("split", split, dtype=pl.Utf8))


def build_vocabulary(frame: pl.DataFrame) -> Vocabulary:
    """Every (class, defect type) seen in the manifest with its default prior."""
    classes: dict = {c: {} for c in sorted(frame["object_class"].unique().to_list())}
    pairs = frame.filter(pl.col("is_anomaly")).select("object_class", "defect_type").unique().sort("object_class", "defect_type")
    for cls, defect in pairs.iter_rows():
        classes[cls][defect] = default_prior(defect, cls)
    return Vocabulary(classes=classes)


def read_manifest(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: manifest not found; run the ingest stage first (`dvc repro ingest`)"
        raise FileNotFoundError(msg)
    frame = pl.read_parquet(path)
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        msg = f"{path}: manifest lacks columns {missing}; re-run the ingest stage"
        raise ValueError(msg)
    return frame
