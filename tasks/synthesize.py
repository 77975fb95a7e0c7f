from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.config import SynthesizeConfig
from uniadc_core.synthesis.store import finalize, write_shard
from uniadc_core.synthesis.synthesize import plan


@task(name="plan-shards")
def plan_shards(manifest_path: str, vocab_path: str, out_dir: str, cfg: SynthesizeConfig, root: str = ".") -> list[int]:
    """Write the synthesis plan (priors file applied); return the ids of shards still to make (complete ones are kept)."""
    return plan(manifest_path, vocab_path, out_dir, cfg, root)


def _pin_gpu() -> None:
    """In a Dask worker on a machine with GPUs: one GPU per worker, by worker name."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not in a Dask worker
    import torch

    if torch.cuda.is_available():
        name = str(worker.name)
        index = int(name) if name.isdigit() else sum(name.encode())
        torch.cuda.set_device(index % torch.cuda.device_count())


@task(name="write-shard", retries=2, retry_delay_seconds=[2, 5])
def make_shard(shard_id: int, out_dir: str, row_group_size: int) -> str:
    """Make one shard from the plan (atomic write, then indexed)."""
    _pin_gpu()
    path = write_shard(out_dir, shard_id, row_group_size)
    get_run_logger().info("wrote %s", path)
    return str(path)


@task(name="finalize-index")
def finalize_index(out_dir: str) -> dict:
    """Check all shards are in and mark the index complete."""
    index = finalize(out_dir)
    get_run_logger().info("%s: %d shards, %d samples (%d generated, kept ratio %.3f)", out_dir, len(index["shards"]),
                          index["rows"], index["generated"], index["kept_ratio"])
    return index
