"""Anomaly synthesis into Parquet shards: `python -m flows.synthesize` (DVC stage `synthesize`).

The flow maps `make_shard` over the pending shard ids; `synthesize.runner` picks the task runner:
`local` (threads) or `dask` (prefect-dask: an existing cluster at `dask_address`, or a LocalCluster
of `workers` processes on 127.0.0.1). Both make the same shards for the same seed. `run` is the
entry point that honours the runner (the DVC stage and the whole-pipeline flow use it).
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows.layout import Layout
from tasks.synthesize import finalize_index, make_shard, plan_shards
from uniadc_core.config import SynthesizeConfig, load_params


@flow(name="synthesize")
def synthesize_flow(root: str = ".", params_path: str = "", out_dir: str = "") -> dict:
    layout = Layout.at(root)
    cfg = load_params(params_path or layout.params).synthesize
    out_dir = out_dir or str(layout.synthetic)
    pending = plan_shards(str(layout.manifest), str(layout.vocabulary), out_dir, cfg, root)
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


def run(root: str = ".", params_path: str = "", out_dir: str = "") -> dict:
    """The synthesize flow with the task runner the params ask for."""
    cfg = load_params(params_path or Layout.at(root).params).synthesize
    return synthesize_flow.with_options(task_runner=task_runner(cfg))(root, params_path, out_dir)


if __name__ == "__main__":
    run()
