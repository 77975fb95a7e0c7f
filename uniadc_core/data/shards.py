"""Synthetic shards, the contract between synthesis and training: the schema and the reader.

A shard folder holds ``plan.json``, ``shard-NNNNN.parquet`` files (zstd, a few row groups each)
and ``index.json``, which lists the complete shards with row counts and sha256 and is marked
``complete`` once all are in. Only indexed shards of a complete index are read, so a half-written
shard never is. The writer is ``uniadc_core.synthesis.store``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.io import decode_image, read_json, sha256_file

SHARD_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("source_image_id", pa.string()),
    ("object_class", pa.string()),
    ("defect_type", pa.string()),
    ("image_png", pa.binary()),
    ("mask_png", pa.binary()),  # pixel value = defect index (vocabulary order, 1-based), 0 = normal
    ("generator", pa.string()),  # procedural | cutpaste | diffusion | repaint
    ("seed", pa.int64()),
    ("quality", pa.float32()),
    ("settings", pa.string()),  # JSON: how the sample was made (prior; diffusion: model, strength, steps, guidance, seed, selection)
])


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


RESTORE = "restore it with `dvc checkout {dir}` (the version DVC cached) or make it again with `dvc repro synthesize`"


def complete_shards(out_dir: str | Path, verify: bool = True) -> list[Path]:
    """Paths of the indexed shards; refuses an incomplete index and, with ``verify``, a shard that is missing or whose
    sha256 is not the one the index recorded when it was written (damaged on disk, truncated, replaced). Hashing
    costs about 25 ms per 20 MB of shards here (MTD's 600 samples at 256 px), once per stage."""
    out_dir = Path(out_dir)
    index = read_json(out_dir / "index.json")
    if not index.get("complete"):
        msg = f"{out_dir}/index.json is not complete; re-run the synthesize stage (`dvc repro synthesize`)"
        raise ValueError(msg)
    paths = [out_dir / name for name in index["shards"]]
    if verify:
        for path, entry in zip(paths, index["shards"].values(), strict=True):
            if not path.is_file():
                msg = f"{path}: listed in {out_dir / 'index.json'} but missing; " + RESTORE.format(dir=out_dir)
                raise FileNotFoundError(msg)
            if sha256_file(path) != entry["sha256"]:
                msg = (f"{path}: its sha256 is not the one {out_dir / 'index.json'} recorded (damaged, truncated or replaced "
                       "since synthesis); " + RESTORE.format(dir=out_dir))
                raise ValueError(msg)
    return paths


def read_samples(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of the complete shards as one table."""
    paths = complete_shards(out_dir)
    if not paths:
        return SHARD_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])


def decode_row(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, mask (H, W) uint8 of defect indices) of a shard row."""
    image = decode_image(row["image_png"], f"sample {row['sample_id']}")
    mask = decode_image(row["mask_png"], f"mask of sample {row['sample_id']}", mode="L")
    return image, mask


@dataclass(frozen=True)
class RowGroup:
    """One unit of streaming work: a row group of a complete shard."""

    path: str
    index: int
    rows: int


def is_validation_sample(sample_id: str) -> bool:
    """A fixed tenth of the synthetic samples, chosen by a hash of the id, is kept for checkpoint choice."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:4], 16) % 10 == 0


def row_groups(synthetic_dir: str | Path) -> list[RowGroup]:
    """Every row group of the complete shards, in shard order."""
    units = []
    for path in complete_shards(synthetic_dir):
        meta = pq.ParquetFile(path).metadata
        units += [RowGroup(str(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return units


def shards_fingerprint(synthetic_dir: str | Path) -> str:
    """The index's plan fingerprint and shard checksums: what a training checkpoint was made from."""
    index = read_json(Path(synthetic_dir) / "index.json")
    h = hashlib.sha256(str(index.get("fingerprint")).encode())
    for name, entry in sorted(index.get("shards", {}).items()):
        h.update(f"{name}:{entry['sha256']}".encode())
    return h.hexdigest()[:16]


def read_row_group(unit: RowGroup, pre: Preprocess, validation: bool = False) -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """(sample id, object class, image (S, S, 3), mask (S, S), source image id) of one row group's training rows,
    or of its validation rows."""
    columns = ["sample_id", "object_class", "image_png", "mask_png", "source_image_id"]
    table = pq.ParquetFile(unit.path).read_row_group(unit.index, columns=columns)
    out = []
    for row in table.to_pylist():
        if is_validation_sample(row["sample_id"]) != validation:
            continue
        image, mask = decode_row(row)
        if pre.tiled:  # a native tile, its intensity already its whole image's (normalising it again would mark it)
            if image.shape[:2] != (pre.size, pre.size):
                msg = (f"{unit.path}: synthetic sample {row['sample_id']} is {image.shape[1]}x{image.shape[0]} px, but the "
                       f"model's native-resolution tiles are {pre.size} px (ingest.resize: tile); set synthesize.image_size "
                       f"equal to train.image_size and re-run synthesize")
                raise ValueError(msg)
            out.append((row["sample_id"], row["object_class"], image, mask, row["source_image_id"]))
            continue
        out.append((row["sample_id"], row["object_class"], pre.image(image), pre.mask(mask), row["source_image_id"]))
    return out
