"""The whole pipeline as Prefect flows on a tiny demo, then the registered model loaded back from MLflow."""

import json

import numpy as np
import polars as pl
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

TINY_PARAMS = {
    "ingest": {"root": "data/raw/demo", "anomaly_shots": 1,
               "demo": {"classes": ["tile", "fabric"], "train_normals": 8, "test_normals": 3, "test_per_defect": 3}},
    "synthesize": {"samples_per_type": 4, "shard_size": 8, "image_size": 64},
    "train": {"image_size": 64, "width": 8, "embed_dim": 8, "epochs": 2, "batch_size": 8, "threads": 2, "min_epoch_samples": 0},
    "fit_cada": {"steps": 50, "synthetic_per_class": 4},
    "evaluate": {"overlays": 4, "mlflow": {"registered_model": "uniadc-test", "experiment": "tests"}},
}


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def pipeline_run(harness, tmp_path_factory):
    import os

    from flows.pipeline import pipeline_flow

    work = tmp_path_factory.mktemp("pipeline")
    (work / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        metrics = pipeline_flow("params.yaml")
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return work, uri, metrics


def test_pipeline_writes_every_stage_output(pipeline_run):
    work, _, metrics = pipeline_run
    assert (work / "data/prepared/manifest.parquet").is_file()
    assert json.loads((work / "data/raw/source.json").read_text())["kind"] == "demo"
    index = json.loads((work / "data/synthetic/index.json").read_text())
    assert index["complete"] and index["rows"] == 2 * 3 * 4
    for d in ("data/models/discriminator", "data/models/cada"):
        assert (work / d / "model.safetensors").is_file() and (work / d / "config.json").is_file()
    on_disk = json.loads((work / "data/reports/metrics.json").read_text())
    assert on_disk == metrics
    for variant in ("none", "cada", "oracle"):
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "type_accuracy", "miou", "false_positive_rate", "miss_rate"):
            assert 0.0 <= on_disk[f"{key}_{variant}"] <= 1.0
    assert on_disk["threshold"] == 1.0 and np.isfinite(on_disk["calibrated_threshold"])
    assert on_disk["test_images"] == 2 * 3 + 2 * 3 * 2
    for plot in ("roc.png", "confusion.png", "scores.png", "overlays.png"):
        assert (work / "data/reports/plots" / plot).stat().st_size > 1000
    per_class = pl.read_csv(work / "data/reports/per_class.csv")
    assert sorted(per_class["object_class"].to_list()) == ["fabric", "tile"]


def test_registered_challenger_scores_like_the_local_model(pipeline_run):
    from mlflow import MlflowClient

    from uniadc_core.inference import Detector
    from uniadc_core.io import load_image
    from uniadc_core.tracking import load_pyfunc, predict_paths

    work, uri, _ = pipeline_run
    version = MlflowClient(uri).get_model_version_by_alias("uniadc-test", "challenger")
    assert version.tags["image_auroc_cada"]
    manifest = pl.read_parquet(work / "data/prepared/manifest.parquet")
    paths = [str(work / p) for p in manifest.filter(pl.col("role") == "test")["path"].to_list()[:6]]
    remote = predict_paths(load_pyfunc("models:/uniadc-test@challenger", uri), paths)
    local = Detector.load(work / "data/models/discriminator", work / "data/models/cada").detect([load_image(p) for p in paths])
    np.testing.assert_allclose(remote["score"].to_numpy(), local.score, rtol=1e-5, atol=1e-6)
    assert remote["defect_type"].tolist() == local.defect_type
    assert remote["is_anomaly"].tolist() == local.is_anomaly.tolist()
