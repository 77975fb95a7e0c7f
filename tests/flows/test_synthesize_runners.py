"""The synthesize flow with both task runners: threads, and a Dask LocalCluster of 2 workers, make the same shards."""

import json
from pathlib import Path

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import TINY_DEMO, tiny_ingest_config

pytestmark = pytest.mark.slow  # end to end: Prefect, DVC or MLflow in the loop


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny ingested demo in a fresh working directory laid out as the flows expect."""
    from uniadc_core.data.ingest import ingest

    work = tmp_path_factory.mktemp("runners")
    ingest(tiny_ingest_config(work / "data/raw/demo"), work / "data/prepared", work / "data/raw")
    return work


def _run(work: Path, runner: str, out: str) -> dict:
    from flows.synthesize import run

    params = {"ingest": {"demo": {"classes": TINY_DEMO.classes}},
              "synthesize": {"samples_per_type": 6, "shard_size": 5, "row_group_size": 5, "image_size": 64,
                             "workers": 2, "runner": runner}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return run(str(work), "", str(work / out))


def test_dask_local_cluster_makes_the_same_shards_as_threads(workspace):
    with prefect_test_harness(server_startup_timeout=120):
        local = _run(workspace, "local", "data/syn-local")
        dask = _run(workspace, "dask", "data/syn-dask")
    assert local["complete"] and dask["complete"] and local["rows"] == 2 * 3 * 6
    assert len(local["shards"]) > 2  # several shards, so both workers had work
    assert dask["fingerprint"] == local["fingerprint"]
    assert {k: v["sha256"] for k, v in dask["shards"].items()} == {k: v["sha256"] for k, v in local["shards"].items()}
    plan = json.loads((workspace / "data/syn-dask/plan.json").read_text())
    assert "runner" not in plan["config"] and "workers" not in plan["config"]  # scheduling is not content


def test_task_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.synthesize import task_runner
    from uniadc_core.config import SynthesizeConfig

    assert isinstance(task_runner(SynthesizeConfig(workers=3)), ThreadPoolTaskRunner)
    dask = task_runner(SynthesizeConfig(runner="dask", workers=2))
    assert isinstance(dask, DaskTaskRunner) and dask.cluster_kwargs["n_workers"] == 2
    assert dask.cluster_kwargs["host"] == "127.0.0.1"
    remote = task_runner(SynthesizeConfig(runner="dask", dask_address="tcp://127.0.0.1:8786"))
    assert remote.address == "tcp://127.0.0.1:8786"
