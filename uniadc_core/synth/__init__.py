"""Anomaly synthesis into Parquet shards. ``synthesize`` runs it all in one process;
the Prefect task layer maps ``write_shard`` over the pending shard ids instead."""

from __future__ import annotations

from pathlib import Path

from uniadc_core.config import SynthesizeConfig
from uniadc_core.datasets.manifest import read_manifest
from uniadc_core.io import read_json
from uniadc_core.masks import foreground_estimator
from uniadc_core.priors import Vocabulary, apply_priors_file
from uniadc_core.synth.shards import finalize, plan_samples, prepare, write_shard

BACKENDS = ("procedural", "diffusion")


def load_inputs(manifest_path: str | Path, vocab_path: str | Path, priors: str = ""):
    """The manifest and the vocabulary, with a priors file laid over the name-based priors when given."""
    vocab = Vocabulary.from_dict(read_json(vocab_path))
    return read_manifest(manifest_path), apply_priors_file(vocab, priors) if priors else vocab


def plan(manifest_path: str | Path, vocab_path: str | Path, out_dir: str | Path, cfg: SynthesizeConfig) -> list[int]:
    """Validate the backend and priors, write the plan; return the shard ids still to make."""
    if cfg.backend not in BACKENDS:
        msg = f"unknown synthesizer '{cfg.backend}'; valid: {', '.join(BACKENDS)}"
        raise ValueError(msg)
    foreground_estimator(cfg.foreground)  # an unknown estimator fails here, not per shard
    manifest, vocab = load_inputs(manifest_path, vocab_path, cfg.priors)
    return prepare(out_dir, plan_samples(manifest, vocab, cfg), cfg, vocab)


def synthesize(manifest_path: str | Path, vocab_path: str | Path, out_dir: str | Path, cfg: SynthesizeConfig) -> dict:
    """Plan, make every pending shard in turn, and finalize the index; returns the index."""
    for shard_id in plan(manifest_path, vocab_path, out_dir, cfg):
        write_shard(out_dir, shard_id, cfg.row_group_size, progress=True)
    return finalize(out_dir)
