"""Anomaly synthesis into Parquet shards: `python -m flows.synthesize` (DVC stage `synthesize`).

The flow maps `make_shard` over the pending shard ids; `synthesize.runner` picks the task runner:
`local` (threads) or `dask` (prefect-dask: an existing cluster at `dask_address`, or a LocalCluster
of `workers` processes on 127.0.0.1). Both make the same shards for the same seed.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import paths
from tasks.synthesize import finalize_index, make_shard, plan_shards
from uniadc_core.config import SynthesizeConfig, load_params


@flow(name="synthesize")
def synthesize_flow(params_path: str = paths.PARAMS, out_dir: str = paths.SYNTHETIC) -> dict:
    cfg = load_params(params_path).synthesize
    pending = plan_shards(paths.MANIFEST, paths.VOCABULARY, out_dir, cfg)
    shards = make_shard.map(pending, unmapped(out_dir), unmapped(cfg.row_group_size))
    shards.wait()
    return finalize_index(out_dir, wait_for=[shards])


def task_runner(cfg: SynthesizeConfig):
    """The Prefect task runner the params ask for."""
    if cfg.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",  # nothing listens beyond this machine
        })
    return ThreadPoolTaskRunner(max_workers=cfg.workers)


def run(params_path: str = paths.PARAMS, out_dir: str = paths.SYNTHETIC) -> dict:
    """Run with the task runner the params ask for."""
    cfg = load_params(params_path).synthesize
    return synthesize_flow.with_options(task_runner=task_runner(cfg))(params_path, out_dir)


if __name__ == "__main__":
    run()
