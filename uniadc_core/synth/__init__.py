"""Anomaly synthesis into Parquet shards. ``synthesize`` runs it all in one process;
the Prefect task layer maps ``write_shard`` over the pending shard ids instead."""

from __future__ import annotations

from pathlib import Path

from uniadc_core.config import SynthesizeConfig
from uniadc_core.datasets.manifest import read_manifest
from uniadc_core.io import read_json
from uniadc_core.priors import Vocabulary
from uniadc_core.synth.shards import finalize, plan_samples, prepare, write_shard

BACKENDS = ("procedural",)


def load_inputs(manifest_path: str | Path, vocab_path: str | Path):
    return read_manifest(manifest_path), Vocabulary.from_dict(read_json(vocab_path))


def synthesize(manifest_path: str | Path, vocab_path: str | Path, out_dir: str | Path, cfg: SynthesizeConfig) -> dict:
    """Plan, make every pending shard in turn, and finalize the index; returns the index."""
    if cfg.backend not in BACKENDS:
        msg = f"unknown synthesizer '{cfg.backend}'; valid: {', '.join(BACKENDS)}"
        raise ValueError(msg)
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    pending = prepare(out_dir, plan_samples(manifest, vocab, cfg), cfg)
    for shard_id in pending:
        write_shard(out_dir, shard_id, vocab, cfg.row_group_size, progress=True)
    return finalize(out_dir)
