"""The synthesize stage: plan the samples, make the shards, finalize the index.

``synthesize`` runs it all in one process; the Prefect task layer maps ``write_shard`` over the
pending shard ids instead.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from uniadc_core.config import SynthesizeConfig
from uniadc_core.data.manifest import read_manifest
from uniadc_core.data.vocabulary import Vocabulary, read_vocabulary
from uniadc_core.synthesis.masks import foreground_estimator
from uniadc_core.synthesis.plan import plan_samples
from uniadc_core.synthesis.priors import apply_priors_file
from uniadc_core.synthesis.store import finalize, prepare, write_shard
from uniadc_core.synthesis.synthesizers import get_synthesizer


def load_inputs(manifest_path: str | Path, vocab_path: str | Path, priors: str | Path = "",
                root: str | Path = ".") -> tuple[pl.DataFrame, Vocabulary]:
    """The manifest (image paths taken from ``root``) and the vocabulary, with a priors file (relative to
    ``root``) laid over the name-based priors when given."""
    vocab = read_vocabulary(vocab_path)
    if priors:
        vocab = apply_priors_file(vocab, priors if Path(priors).is_absolute() else Path(root) / priors)
    return read_manifest(manifest_path, root), vocab


def plan(manifest_path: str | Path, vocab_path: str | Path, out_dir: str | Path, cfg: SynthesizeConfig, root: str | Path = ".") -> list[int]:
    """Validate the backend and priors, write the plan; return the shard ids still to make."""
    get_synthesizer(cfg.backend)  # an unknown backend fails here, not per shard
    foreground_estimator(cfg.foreground)  # an unknown estimator fails here, not per shard
    manifest, vocab = load_inputs(manifest_path, vocab_path, cfg.priors, root)
    return prepare(out_dir, plan_samples(manifest, vocab, cfg), cfg, vocab)


def synthesize(manifest_path: str | Path, vocab_path: str | Path, out_dir: str | Path, cfg: SynthesizeConfig) -> dict:
    """Plan, make every pending shard in turn, and finalize the index; returns the index."""
    for shard_id in plan(manifest_path, vocab_path, out_dir, cfg):
        write_shard(out_dir, shard_id, cfg.row_group_size, progress=True)
    return finalize(out_dir)
