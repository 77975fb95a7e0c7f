"""Anomaly synthesis into Parquet shards: `python -m flows.synthesize` (DVC stage `synthesize`)."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import paths
from tasks.synthesize import finalize_index, make_shard, plan_shards
from uniadc_core.config import load_params


@flow(name="synthesize")
def synthesize_flow(params_path: str = paths.PARAMS, out_dir: str = paths.SYNTHETIC) -> dict:
    cfg = load_params(params_path).synthesize
    pending = plan_shards(paths.MANIFEST, paths.VOCABULARY, out_dir, cfg)
    shards = make_shard.map(pending, unmapped(out_dir), unmapped(cfg.row_group_size))
    shards.wait()
    return finalize_index(out_dir, wait_for=[shards])


def run(params_path: str = paths.PARAMS, out_dir: str = paths.SYNTHETIC) -> dict:
    """Run with the task runner the params ask for (threads mapping over shard ids)."""
    workers = load_params(params_path).synthesize.workers
    return synthesize_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))(params_path, out_dir)


if __name__ == "__main__":
    run()
