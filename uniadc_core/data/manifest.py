"""The manifest: one row per real image, built by pure functions and written as Parquet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from uniadc_core.data.records import ImageRecord
from uniadc_core.data.validate import Checked, DatasetError, Problem, check_classes, check_records
from uniadc_core.data.vocabulary import Vocabulary, default_prior
from uniadc_core.decoding import DEFAULT, DecodeOptions

log = logging.getLogger(__name__)


class Role:
    """What each stage may do with an image (the manifest's ``role`` column)."""

    NORMAL_SHOT = "normal_shot"  # a normal image trained on
    NORMAL_HOLDOUT = "normal_holdout"  # a normal never trained on: checkpoint choice, CADA statistics, the threshold
    UNUSED_NORMAL = "unused_normal"  # a train normal beyond ingest.normal_shots
    ANOMALY_SHOT = "anomaly_shot"  # a real anomaly trained on (moved from test, or a training-side anomaly)
    UNUSED_ANOMALY = "unused_anomaly"  # an anomaly on the training side of the split not drawn as a shot: never used
    TEST = "test"  # evaluation only


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
    "defect_types": pl.Utf8,  # every defect type in the image, comma-separated (several where a layout has typed boxes)
    "boxes": pl.Utf8,  # JSON [[x1, y1, x2, y2, type], ...] for layouts with boxes (the mask is drawn from them), else null
    "mask_rule": pl.Utf8,  # how the mask's values are read (threshold | nonzero | auto | labels: ingest's label maps)
    "group": pl.Utf8,  # the physical item where a layout has several images of one (KolektorSDD), else null
}
ADDED = ("defect_types", "boxes", "mask_rule", "group")  # columns newer than the first manifests: read as null there


def records_to_frame(records: list[ImageRecord], allow_missing_masks: bool = False,
                     on_error: str = "fail", options: DecodeOptions = DEFAULT) -> tuple[pl.DataFrame, list[Problem]]:
    """Validate records and build the manifest (no roles yet), with the problems left out.

    ``on_error='fail'`` raises one error listing every problem; ``'skip'`` leaves those files out.
    A class with no usable normal image is an error either way.
    """
    good, problems = check_records(records, allow_missing_masks, options)
    if problems and on_error == "fail":
        raise DatasetError(problems)
    check_classes(good)
    return frame_from_checked(good), problems


def frame_from_checked(good: list[Checked]) -> pl.DataFrame:
    rows = [{
        "image_id": c.image_id,
        "path": c.record.path.as_posix(),
        "split": c.record.split,
        "object_class": c.record.object_class,
        "is_anomaly": c.record.defect_type is not None,
        "defect_type": c.record.defect_type,
        "mask_path": c.record.mask_path.as_posix() if c.record.mask_path is not None else None,
        "width": c.width,
        "height": c.height,
        "role": None,
        "defect_types": ",".join(sorted({b[4] for b in c.record.boxes} or {c.record.defect_type})) if c.record.defect_type else None,
        "boxes": json.dumps([list(b) for b in c.record.boxes]) if c.record.boxes else None,
        "mask_rule": None,  # set by ingest once it knows how the masks are stored
        "group": c.record.group,
    } for c in good]
    return pl.DataFrame(rows, schema=SCHEMA)


def item_names(frame: pl.DataFrame) -> list[str]:
    """The physical item each row shows: its ``group`` where the layout names one, else the image itself."""
    return [g if g is not None else i for g, i in zip(frame["group"].to_list(), frame["image_id"].to_list(), strict=True)]


def holdout_items(shots: np.ndarray, items: list[str], n_hold: int) -> np.ndarray:
    """The held-out rows among ``shots`` (in their drawn order), ``items`` naming the item of each
    (``item_names``: an image that names none is an item of its own): whole items, in the order their first image
    was drawn, until ``n_hold`` are held, keeping at least one item to train on."""
    members: dict[str, list[int]] = {}  # item -> its shots, items in the order their first shot was drawn
    for i, item in zip(shots, items, strict=True):
        members.setdefault(item, []).append(int(i))
    if len(members) < 2:  # one item: held out image by image, so something is still trained on
        return shots[:n_hold]
    held: list[int] = []
    for rows in list(members.values())[:-1]:
        if len(held) >= n_hold:
            break
        held += rows
    return np.asarray(held, dtype=shots.dtype)


def apply_few_shot(
    frame: pl.DataFrame, normal_shots: int | str, anomaly_shots: int, seed: int, holdout_fraction: float = 0.0,
    holdout_min: int = 0,
) -> pl.DataFrame:
    """Assign roles: k normal shots per class, k anomaly shots per (class, defect type) moved to train.

    Shots are drawn with ``seed``; anomaly shots leave the test set (split becomes train). Where a
    layout puts anomalies on the training side of its split (KolektorSDD's training items), the shots
    of that type are drawn from those, the test set stays as it is, and the rest are ``unused_anomaly``. A
    ``holdout_fraction`` of each class's normal shots (at least one when there are two or more)
    becomes ``normal_holdout``: never trained on, used for checkpoint choice and CADA statistics. ``holdout_min``
    raises that count to at least this many for a small class, never past half its normal shots: the threshold
    of a class with n held-out normals can promise no false-positive rate below 1 / (n + 1).

    Normals on a ``validation`` split (a layout's own held-out normals, e.g. MVTec 3D-AD's ``validation/good``)
    are all ``normal_holdout`` as well, beside the share drawn from the training normals.

    Each class draws from its own generator seeded with ``seed``, so adding a class to a line (or pooling
    another dataset) leaves the other classes' shots, holdout and test images as they were. Where the manifest
    names items (``group``), the holdout is whole items, taken in the order of the shuffled shots until it
    reaches its count: a held-out normal never shares an item with a training shot, so its scores are those of
    a new item, as the test images' are, and the threshold calibrated on them keeps its promise.
    """
    frame = frame.sort("path")
    items = item_names(frame)
    role = np.full(frame.height, Role.TEST, dtype=object)
    split = frame["split"].to_numpy().astype(object)
    for cls in sorted(frame["object_class"].unique().to_list()):
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(((frame["object_class"] == cls) & (frame["split"] == "train") & ~frame["is_anomaly"]).to_numpy())
        role[idx] = Role.UNUSED_NORMAL
        k = len(idx) if normal_shots == "all" else min(int(normal_shots), len(idx))
        shots = rng.permutation(idx)[:k]
        n_hold = 0 if (holdout_fraction == 0 or k < 2) else max(1, int(round(holdout_fraction * k)), min(holdout_min, k // 2))
        held = holdout_items(shots, [items[i] for i in shots], n_hold)
        role[shots] = Role.NORMAL_SHOT
        role[held] = Role.NORMAL_HOLDOUT
        role[np.flatnonzero(((frame["object_class"] == cls) & (frame["split"] == "validation") & ~frame["is_anomaly"]).to_numpy())] = \
            Role.NORMAL_HOLDOUT
        if len(held) and k - len(held) <= 1:
            log.warning("class '%s': %d normal shot(s), %d held out: training sees %d normal image(s); with this few, "
                        "ingest.holdout_fraction: 0 trains on all of them (then the threshold is calibrated on training "
                        "normals, biased low; README: 'With 2 normal shots')", cls, k, len(held), k - len(held))
        train_side = (frame["object_class"] == cls) & (frame["split"] == "train") & frame["is_anomaly"]
        role[np.flatnonzero(train_side.to_numpy())] = Role.UNUSED_ANOMALY
        if anomaly_shots == 0:
            continue
        sub = frame.filter((pl.col("object_class") == cls) & pl.col("is_anomaly"))
        for defect in sorted(sub["defect_type"].unique().to_list()):
            of_type = (frame["object_class"] == cls) & (frame["defect_type"] == defect)
            from_train = bool((of_type & train_side).any())  # a split with anomalies on its training side: shots from there
            pool = of_type & train_side if from_train else of_type
            idx = np.flatnonzero(pool.to_numpy())
            stays = int((of_type & (frame["split"] == "test")).sum()) - (0 if from_train else anomaly_shots)
            has_mask = frame["mask_path"].is_not_null() | (frame["boxes"].is_not_null() if "boxes" in frame.columns else False)
            masked = np.flatnonzero((pool & has_mask).to_numpy())  # shots need masks (or boxes, drawn into one at ingest)
            if len(masked) < anomaly_shots or stays < 1:
                where = "on the training side of the split" if from_train else "in all"
                msg = (f"class '{cls}', defect '{defect}': {len(idx)} image(s) {where}, {len(masked)} with a mask, but "
                       f"ingest.anomaly_shots={anomaly_shots}; shots need masks and at least one image must stay "
                       f"in the test set (lower anomaly_shots)")
                raise ValueError(msg)
            pick = rng.permutation(masked)[:anomaly_shots]
            role[pick] = Role.ANOMALY_SHOT
            split[pick] = "train"
    return frame.with_columns(pl.Series("role", role, dtype=pl.Utf8), pl.Series("split", split, dtype=pl.Utf8))


def build_vocabulary(frame: pl.DataFrame, resize: str = "stretch", decode: dict | None = None, intensity: str = "none") -> Vocabulary:
    """Every (class, defect type) seen in the manifest with its default prior."""
    classes: dict = {c: {} for c in sorted(frame["object_class"].unique().to_list())}
    anomalies = frame.filter(pl.col("is_anomaly"))
    listed = anomalies["defect_types"] if "defect_types" in anomalies.columns else anomalies["defect_type"]
    pairs = sorted({(cls, t) for cls, types in zip(anomalies["object_class"], listed.fill_null(""), strict=True)
                    for t in types.split(",") if t} | set(anomalies.select("object_class", "defect_type").iter_rows()))
    for cls, defect in pairs:
        classes[cls][defect] = default_prior(defect, cls)
    return Vocabulary(classes=classes, resize=resize, decode=dict(decode or {}), intensity=intensity)


def read_manifest(path: str | Path, base: str | Path | None = None) -> pl.DataFrame:
    """The manifest; with ``base``, relative image and mask paths are taken from there (the
    repository root a pipeline ran in) rather than from the working directory."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: manifest not found; run the ingest stage first (`dvc repro ingest`)"
        raise FileNotFoundError(msg)
    frame = pl.read_parquet(path)
    frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias(c) for c in ADDED if c not in frame.columns)
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        msg = f"{path}: manifest lacks columns {missing}; re-run the ingest stage"
        raise ValueError(msg)
    if base is not None and Path(base) != Path("."):
        frame = frame.with_columns(pl.col(c).map_elements(lambda p: str(Path(base) / p), return_dtype=pl.Utf8) for c in ("path", "mask_path"))
    return frame
