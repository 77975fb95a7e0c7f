"""The scheduled retraining deployment: `prefect deploy --all` from prefect.yaml against a temporary
Prefect server, one run started and executed by a process worker (`--run-once`) on a tiny repository:
dvc repro, promotion to @champion, no DVC remote so nothing pushed."""

import sys

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.flows.test_dvc_exp import _run, tiny_repo

pytestmark = pytest.mark.slow  # end to end: Prefect, DVC or MLflow in the loop


def test_deployment_is_created_with_its_schedule_and_runs_once(tmp_path):
    repo, env = tiny_repo(tmp_path, {"promote": {"min_image_auroc": 0.0, "min_type_accuracy": 0.0}})
    prefect = [sys.executable, "-m", "prefect"]
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        env = {**env, "PREFECT_API_URL": PREFECT_API_URL.value()}
        _run([*prefect, "work-pool", "create", "uniadc", "--type", "process"], repo, env)
        _run([*prefect, "--no-prompt", "deploy", "--all"], repo, env)
        shown = _run([*prefect, "deployment", "inspect", "retrain/nightly-retrain"], repo, env)
        assert "0 2 * * *" in shown and "flows/retrain.py:retrain_flow" in shown
        _run([*prefect, "deployment", "run", "retrain/nightly-retrain"], repo, env)
        _run([*prefect, "worker", "start", "--pool", "uniadc", "--run-once"], repo, env)
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        async def runs():
            async with get_client() as client:
                return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))

        import asyncio

        flow_runs = asyncio.run(runs())
    assert len(flow_runs) == 1 and flow_runs[0].state.is_completed(), flow_runs[0].state
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("uniadc-test", "champion")
    assert champion.tags["promotion.decision"] == "promoted"
    assert (repo / "data/reports/metrics.json").is_file()
    # ... and the line engineer's command scores new images with that champion (the default model)
    import os

    import polars as pl

    from flows.cli import main

    images = sorted((repo / "data/raw/demo").rglob("test/*/*.png"))[:3]
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(repo)
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        assert main(["predict", *map(str, images), "--out", str(tmp_path / "p.csv")]) == 0
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    rows = pl.read_csv(tmp_path / "p.csv")
    assert rows.height == 3 and rows["error"].is_null().all() and rows["defect_type"].is_not_null().all()
