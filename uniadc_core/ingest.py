"""Ingest: a dataset root -> manifest (Parquet) + vocabulary (JSON)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import polars as pl

from uniadc_core.config import IngestConfig
from uniadc_core.datasets import get_layout
from uniadc_core.datasets.demo import generate_demo
from uniadc_core.datasets.manifest import apply_few_shot, build_vocabulary, records_to_frame
from uniadc_core.io import atomic_path, write_json

log = logging.getLogger(__name__)


class IngestResult(NamedTuple):
    manifest: pl.DataFrame
    manifest_path: Path
    vocabulary_path: Path


def ingest(cfg: IngestConfig, out_dir: str | Path = "data/prepared") -> IngestResult:
    """Build (and for ``kind: demo`` first generate) the dataset, apply the few-shot protocol, write both files."""
    out_dir = Path(out_dir)
    if cfg.kind == "demo":
        d = cfg.demo
        generate_demo(cfg.root, cfg.seed, d.classes, d.image_size, d.train_normals, d.test_normals, d.test_per_defect)
    records = get_layout(cfg.kind)(cfg.root)
    frame = apply_few_shot(records_to_frame(records), cfg.normal_shots, cfg.anomaly_shots, cfg.seed, cfg.holdout_fraction)
    vocab = build_vocabulary(frame)
    manifest_path, vocab_path = out_dir / "manifest.parquet", out_dir / "vocabulary.json"
    with atomic_path(manifest_path) as tmp:
        frame.write_parquet(tmp)
    write_json(vocab_path, vocab.to_dict())
    counts = frame.group_by("object_class", "role").len().sort("object_class", "role")
    log.info("ingest: %d images from %s -> %s, %s\n%s", frame.height, cfg.root, manifest_path, vocab_path, counts)
    return IngestResult(frame, manifest_path, vocab_path)
