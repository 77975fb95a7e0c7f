"""Ingest: a dataset root -> manifest (Parquet) + vocabulary (JSON) + quarantine report (CSV).

Every image is validated first; with ``on_error: fail`` nothing is written when any is bad.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import polars as pl

from uniadc_core.config import IngestConfig
from uniadc_core.data.demo import generate_demo
from uniadc_core.data.layouts import decode_options, list_records
from uniadc_core.data.manifest import apply_few_shot, build_vocabulary, records_to_frame
from uniadc_core.io import atomic_path, write_json

log = logging.getLogger(__name__)


class IngestResult(NamedTuple):
    manifest: pl.DataFrame
    manifest_path: Path
    vocabulary_path: Path
    quarantine_path: Path


def ingest(cfg: IngestConfig, out_dir: str | Path = "data/prepared", raw_dir: str | Path | None = None) -> IngestResult:
    """Build (and for ``kind: demo`` first generate) the dataset, apply the few-shot protocol, write the files.

    With ``raw_dir``, a ``source.json`` there records what was read (the pipeline's raw-data output:
    the demo tree lives beside it, an external dataset is only referenced).
    """
    out_dir = Path(out_dir)
    if cfg.kind == "demo":
        d = cfg.demo
        generate_demo(cfg.root, cfg.seed, d.classes, d.image_size, d.train_normals, d.test_normals, d.test_per_defect)
    options = decode_options(cfg)
    frame, problems = records_to_frame(list_records(cfg), cfg.allow_missing_masks, cfg.on_error, options)
    frame = apply_few_shot(frame, cfg.normal_shots, cfg.anomaly_shots, cfg.seed, cfg.holdout_fraction)
    vocab = build_vocabulary(frame, cfg.resize, options.to_dict(), cfg.intensity)
    paths = IngestResult(frame, out_dir / "manifest.parquet", out_dir / "vocabulary.json", out_dir / "quarantine.csv")
    with atomic_path(paths.quarantine_path) as tmp:
        pl.DataFrame({"path": [p.path for p in problems], "reason": [p.reason for p in problems]}, schema={"path": pl.Utf8, "reason": pl.Utf8}).write_csv(tmp)
    with atomic_path(paths.manifest_path) as tmp:
        frame.write_parquet(tmp)
    write_json(paths.vocabulary_path, vocab.to_dict())
    if raw_dir is not None:
        source = {"kind": cfg.kind, "root": str(cfg.root), "images": frame.height, "quarantined": len(problems)}
        write_json(Path(raw_dir) / "source.json", source)
    if problems:
        log.warning("ingest: %d bad file(s) left out, listed in %s", len(problems), paths.quarantine_path)
    counts = frame.group_by("object_class", "role").len().sort("object_class", "role")
    log.info("ingest: %d images from %s (%s layout) -> %s, %s\n%s", frame.height, cfg.root, cfg.kind, paths.manifest_path, paths.vocabulary_path, counts)
    return paths
