"""Ingest: a dataset root -> manifest (Parquet) + vocabulary (JSON) + quarantine report (CSV).

Every image is validated first; with ``on_error: fail`` nothing is written when any is bad.

``kind: sources`` pools several datasets (``ingest.sources``: each a layout, a root and its own
options) into one manifest, each source one or more object classes. Every source's masks are read
under its own rule (``mask_values``: MTD binarises at 128, KolektorSDD's masks hold 0/1) and
written once as label maps (a defect index per pixel) under ``<out>/masks/``, as are the typed
boxes of a layout without masks (DeepPCB), so the stages after ingest read every mask by one rule
(``labels``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from uniadc_core.config import IngestConfig
from uniadc_core.data.demo import generate_demo
from uniadc_core.data.layouts import decode_options, list_records
from uniadc_core.data.manifest import apply_few_shot, build_vocabulary, frame_from_checked, records_to_frame
from uniadc_core.data.validate import Checked, DatasetError, Problem, check_classes, check_records
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.decoding import DecodeOptions
from uniadc_core.io import atomic_path, load_mask, save_png, write_json

log = logging.getLogger(__name__)


def source_configs(cfg: IngestConfig) -> list[IngestConfig]:
    """One ingest config per entry of ``ingest.sources`` (the shared keys from ``cfg``, the layout keys its own)."""
    if not cfg.sources:
        msg = ("ingest.kind is sources but ingest.sources is empty; list the datasets, e.g. "
               "sources: [{kind: mtd, root: ../shared/datasets/mtd}, {kind: kolektorsdd, root: ../shared/datasets/kolektorsdd}]")
        raise ValueError(msg)
    for i, s in enumerate(cfg.sources):
        if not s.root:
            msg = f"ingest.sources[{i}].root is empty; give the folder of this {s.kind} dataset"
            raise ValueError(msg)
    return [dataclasses.replace(cfg, kind=s.kind, root=s.root, mask_values=s.mask_values, mtd=s.mtd, kolektorsdd=s.kolektorsdd,
                                deeppcb=s.deeppcb, folder=s.folder, sources=[]) for s in cfg.sources]


def _pooled(cfg: IngestConfig) -> tuple[list[Checked], list[Problem], dict[str, DecodeOptions]]:
    """Every source's checked records (each under its own decoding rules), the problems, and each class's rules."""
    good, problems, owner, rules = [], [], {}, {}
    for i, (src, sub) in enumerate(zip(cfg.sources, source_configs(cfg), strict=True)):
        records, options = list_records(sub), decode_options(sub)
        classes = sorted({r.object_class for r in records})
        if src.object_class:
            if len(classes) > 1:
                msg = (f"ingest.sources[{i}] ({src.kind} at {src.root}) holds the classes {classes}; object_class names the "
                       f"class of a one-class source only: leave it '' to keep the layout's names")
                raise ValueError(msg)
            records, classes = [r._replace(object_class=src.object_class) for r in records], [src.object_class]
        for c in classes:
            if c in owner:
                msg = f"object class '{c}' comes from ingest.sources[{owner[c]}] and ingest.sources[{i}]; name them apart with object_class"
                raise ValueError(msg)
            owner[c], rules[c] = i, options
        checked, bad = check_records(records, cfg.allow_missing_masks, options)
        good += checked
        problems += bad
    first: dict[str, Checked] = {}
    unique = []
    for c in good:  # a file in two sources: each source checked its own duplicates only
        if c.image_id in first:
            problems.append(Problem(str(c.record.path), f"same content as {first[c.image_id].record.path} (another source); "
                                                        f"remove one of the duplicates"))
        else:
            first[c.image_id] = c
            unique.append(c)
    return unique, problems, rules


def _canonical_masks(frame: pl.DataFrame, rules: dict[str, DecodeOptions], vocab: Vocabulary, out_dir: Path) -> pl.DataFrame:
    """Each anomaly's label map (a defect index per pixel, 0 = normal) written as a PNG in ``out_dir/masks``:
    drawn from its boxes (the smaller box on top where two overlap), or its mask file read under its source's
    rule, times its type's index. The manifest then points there."""
    folder = out_dir / "masks"
    paths = []
    for row in frame.iter_rows(named=True):
        if not row["is_anomaly"] or (row["mask_path"] is None and row["boxes"] is None):
            paths.append(row["mask_path"])
            continue
        if row["boxes"] is not None:
            labels = np.zeros((row["height"], row["width"]), np.uint8)
            for x1, y1, x2, y2, t in sorted(json.loads(row["boxes"]), key=lambda b: -(b[2] - b[0] + 1) * (b[3] - b[1] + 1)):
                labels[y1:y2 + 1, x1:x2 + 1] = vocab.index(t)
        else:
            labels = load_mask(row["mask_path"], rules[row["object_class"]]).astype(np.uint8) * vocab.index(row["defect_type"])
        target = folder / f"{row['image_id']}.png"
        save_png(target, labels)
        paths.append(target.as_posix())
    return frame.with_columns(pl.Series("mask_path", paths, dtype=pl.Utf8))


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
    if cfg.kind == "sources":
        good, problems, rules = _pooled(cfg)
        if problems and cfg.on_error == "fail":
            raise DatasetError(problems)
        check_classes(good)
        frame = frame_from_checked(good)
    else:
        frame, problems = records_to_frame(list_records(cfg), cfg.allow_missing_masks, cfg.on_error, decode_options(cfg))
        rules = {c: decode_options(cfg) for c in frame["object_class"].unique().to_list()}
    frame = apply_few_shot(frame, cfg.normal_shots, cfg.anomaly_shots, cfg.seed, cfg.holdout_fraction, cfg.holdout_min)
    # pooled sources and typed boxes: every mask rewritten as a label map, read by one rule after ingest
    canonical = cfg.kind == "sources" or frame["boxes"].is_not_null().any()
    options = DecodeOptions(cfg.bit_depth, cfg.max_pixels, "labels") if canonical else decode_options(cfg)
    vocab = build_vocabulary(frame, cfg.resize, options.to_dict(), cfg.intensity)
    if canonical:
        frame = _canonical_masks(frame, rules, vocab, out_dir)  # once nothing can fail any more
    frame = frame.with_columns(pl.when(pl.col("mask_path").is_not_null()).then(pl.lit(options.mask_values)).otherwise(None).alias("mask_rule"))
    folder = out_dir / "masks"  # a DVC output: this run's label maps and their index (an earlier run's others go)
    paths = IngestResult(frame, out_dir / "manifest.parquet", out_dir / "vocabulary.json", out_dir / "quarantine.csv")
    with atomic_path(paths.quarantine_path) as tmp:
        rows = {"path": [p.path for p in problems], "reason": [p.reason for p in problems]}
        pl.DataFrame(rows, schema={"path": pl.Utf8, "reason": pl.Utf8}).write_csv(tmp)
    with atomic_path(paths.manifest_path) as tmp:
        frame.write_parquet(tmp)
    write_json(paths.vocabulary_path, vocab.to_dict())
    # only once the new manifest is written: a crash before leaves the old one with every mask it names
    keep = {Path(p).name for p in frame["mask_path"].drop_nulls() if Path(p).parent == folder}
    for stale in folder.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    write_json(folder / "index.json", {"label_maps": len(keep), "rule": "labels" if canonical else "none"})
    if raw_dir is not None:
        roots = [s.root for s in cfg.sources] if cfg.kind == "sources" else str(cfg.root)
        source = {"kind": cfg.kind, "root": roots, "images": frame.height, "quarantined": len(problems)}
        write_json(Path(raw_dir) / "source.json", source)
    if problems:
        log.warning("ingest: %d bad file(s) left out, listed in %s", len(problems), paths.quarantine_path)
    counts = frame.group_by("object_class", "role").len().sort("object_class", "role")
    log.info("ingest: %d images from %s (%s layout) -> %s, %s\n%s", frame.height, cfg.root, cfg.kind, paths.manifest_path,
             paths.vocabulary_path, counts)
    return paths
