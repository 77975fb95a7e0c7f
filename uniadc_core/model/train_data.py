"""The real side of the training data, in memory, and the synthetic shards listed for streaming.

    data = load_train_data(manifest, vocab, "data/synthetic", size=256)   # TrainData: normals, shots, val, ...

Normals, anomaly shots and held-out normals are read once through the dataset's ``Preprocess`` (under
``resize: tile``: every native-resolution tile of a normal, the defect tiles of a shot); the synthetic
samples stay in their Parquet shards (``model.loader`` streams them), only their validation tenth is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from uniadc_core.data.manifest import Role
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.data.shards import RowGroup, read_row_group, row_groups, shards_fingerprint
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.model.loader import Batch

log = logging.getLogger(__name__)

TILE_MARK = "#"  # a tile's id: its image's id, this mark, then the tile's corner "y,x"


@dataclass
class TrainData:
    normals: Batch  # real normal shots, in memory
    shots: Batch  # real anomaly shots, in memory
    val: Batch  # held-out normals + the validation tenth of the synthetic samples
    pre: Preprocess  # how every real and synthetic image was made a training input
    holdout: Batch  # the held-out normals alone (fusion statistics)
    units: list[RowGroup] = field(default_factory=list)  # synthetic training samples, streamed from the shards
    synthetic_fingerprint: str = ""


def real_batch(frame: pl.DataFrame, vocab: Vocabulary, pre: Preprocess) -> Batch:
    if pre.tiled:
        return _real_tiles(frame, vocab, pre)
    images, masks = [], []
    for row in frame.iter_rows(named=True):
        images.append(pre.load_image(row["path"]))
        if row["is_anomaly"]:
            masks.append(pre.load_labels(row["mask_path"], vocab.index(row["defect_type"]), row.get("mask_rule")))
        else:
            masks.append(np.zeros((pre.size, pre.size), np.uint8))
    return _batch(images, masks, frame["object_class"].to_list(), tuple(frame["image_id"].to_list()))


def _real_tiles(frame: pl.DataFrame, vocab: Vocabulary, pre: Preprocess) -> Batch:
    """``resize: tile``: every native-resolution tile of a normal; of an anomaly, the tiles holding defect pixels.
    A tile's id is its image's with ``TILE_MARK`` and its corner ``y,x`` appended."""
    images, masks, classes, ids = [], [], [], []
    for row in frame.iter_rows(named=True):
        native = pre.native(pre.decode_image(row["path"]))
        if row["is_anomaly"]:
            labels = pre.native_labels(row["mask_path"], vocab.index(row["defect_type"]), row.get("mask_rule"))
            if labels.shape != native.shape[:2]:
                msg = (f"{row['mask_path']}: mask is {labels.shape[1]}x{labels.shape[0]} px but its image {row['path']} is "
                       f"{native.shape[1]}x{native.shape[0]}; ingest.resize: tile cuts both at native size (fix the mask)")
                raise ValueError(msg)
        else:
            labels = np.zeros(native.shape[:2], np.uint8)
        tiles, windows = pre.tiles(native)
        label_tiles, _ = pre.tiles(labels)  # padded by reflection as the image is: a mirrored defect is labelled
        for tile, lab, (y, x) in zip(tiles, label_tiles, windows, strict=True):
            if row["is_anomaly"] and not lab.any():
                continue
            images.append(tile)
            masks.append(lab)
            classes.append(row["object_class"])
            ids.append(f"{row['image_id']}{TILE_MARK}{y},{x}")
    log.info("resize tile: %d tiles of %d px from %d images (%.0f MiB in memory)", len(images), pre.size, frame.height,
             len(images) * pre.size * pre.size * 4 / 2**20)
    return _batch(images, masks, classes, tuple(ids))


def _batch(images: list[np.ndarray], masks: list[np.ndarray], classes: list[str], ids: tuple[str, ...] = ()) -> Batch:
    if not images:
        return Batch(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1, 1, dtype=torch.uint8), [])
    return Batch(Preprocess.batch(images), torch.from_numpy(np.stack(masks)), classes, ids)


def _cat(a: Batch, b: Batch) -> Batch:
    if len(a.classes) == 0:
        return b
    if len(b.classes) == 0:
        return a
    known = len(a.ids) == len(a.classes) and len(b.ids) == len(b.classes)
    return Batch(torch.cat([a.images, b.images]), torch.cat([a.masks, b.masks]), a.classes + b.classes, a.ids + b.ids if known else ())


def load_train_data(manifest: pl.DataFrame, vocab: Vocabulary, synthetic_dir: str | Path | None, size: int) -> TrainData:
    """Real images into memory; the synthetic shards' row groups listed for streaming (their validation tenth read now)."""
    pre = vocab.preprocess(size)
    normals = real_batch(manifest.filter(pl.col("role") == Role.NORMAL_SHOT), vocab, pre)
    if len(normals.classes) == 0:
        msg = "the manifest has no normal_shot images; training needs normal images (check ingest.normal_shots)"
        raise ValueError(msg)
    shots = real_batch(manifest.filter(pl.col("role") == Role.ANOMALY_SHOT), vocab, pre)
    holdout = real_batch(manifest.filter(pl.col("role") == Role.NORMAL_HOLDOUT), vocab, pre)
    units = row_groups(synthetic_dir) if synthetic_dir is not None else []
    val_rows = [r for unit in units for r in read_row_group(unit, pre, validation=True)]
    syn_val = _batch([r[2] for r in val_rows], [r[3] for r in val_rows], [r[1] for r in val_rows])
    fingerprint = shards_fingerprint(synthetic_dir) if synthetic_dir is not None else ""
    return TrainData(normals, shots, _cat(holdout, syn_val), pre, holdout, units, fingerprint)
