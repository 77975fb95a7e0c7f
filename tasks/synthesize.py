from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.config import SynthesizeConfig
from uniadc_core.synth import BACKENDS, load_inputs
from uniadc_core.synth.shards import finalize, plan_samples, prepare, write_shard


@task(name="plan-shards")
def plan_shards(manifest_path: str, vocab_path: str, out_dir: str, cfg: SynthesizeConfig) -> list[int]:
    """Write the synthesis plan; return the ids of shards still to make (complete ones are kept)."""
    if cfg.backend not in BACKENDS:
        msg = f"unknown synthesizer '{cfg.backend}'; valid: {', '.join(BACKENDS)}"
        raise ValueError(msg)
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    return prepare(out_dir, plan_samples(manifest, vocab, cfg), cfg)


@task(name="write-shard", retries=2, retry_delay_seconds=[2, 5])
def make_shard(shard_id: int, vocab_path: str, out_dir: str, row_group_size: int) -> str:
    """Make one shard (atomic write, then indexed)."""
    from uniadc_core.io import read_json
    from uniadc_core.priors import Vocabulary

    path = write_shard(out_dir, shard_id, Vocabulary.from_dict(read_json(vocab_path)), row_group_size)
    get_run_logger().info("wrote %s", path)
    return str(path)


@task(name="finalize-index")
def finalize_index(out_dir: str) -> dict:
    """Check all shards are in and mark the index complete."""
    index = finalize(out_dir)
    get_run_logger().info("%s: %d shards, %d samples", out_dir, len(index["shards"]), index["rows"])
    return index
