"""The scheduled retraining deployment: `prefect deploy --all` from prefect.yaml against a temporary
Prefect server, one run started and executed by a process worker (`--run-once`) on a tiny repository:
dvc repro, promotion to @champion, no DVC remote so nothing pushed."""

import json
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


def test_retraining_reads_images_added_to_a_folder_outside_the_repository(tmp_path, monkeypatch):
    import numpy as np
    import polars as pl
    from PIL import Image

    from flows.retrain import reread_images
    from uniadc_core.data.demo import generate_demo

    line = generate_demo(tmp_path / "line3", classes=["tile"], image_size=64, train_normals=8, test_normals=3, test_per_defect=3)
    repo, env = tiny_repo(tmp_path, {"ingest": {"kind": "mvtec", "root": str(line)}})
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro", "ingest"], repo, env)
    manifest = repo / "data/prepared/manifest.parquet"
    before = pl.read_parquet(manifest).height
    good = line / "tile/train/good"
    arrived = np.asarray(Image.open(good / "000.png"))[::-1].copy()  # a new normal part: not a copy of an old file
    Image.fromarray(arrived).save(good / "new.png")
    status = _run([*dvc, "status", "--json", "ingest"], repo, env).strip().splitlines()[-1]
    assert json.loads(status) == {}  # what DVC alone sees: nothing changed
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reread_images(str(repo))
    frame = pl.read_parquet(manifest)
    assert frame.height == before + 1 and frame["path"].str.ends_with("new.png").any()
    locked = (repo / "dvc.lock").read_text()
    reread_images(str(repo))  # nothing new: the same manifest, nothing for later stages to do
    assert (repo / "dvc.lock").read_text() == locked
