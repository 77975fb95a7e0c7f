"""The whole pipeline as Prefect flows on a tiny demo, then the registered model loaded back from MLflow."""

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

pytestmark = pytest.mark.slow  # end to end: Prefect, DVC or MLflow in the loop

TINY_PARAMS = {
    "ingest": {"root": "data/raw/demo", "anomaly_shots": 1,
               "demo": {"classes": ["tile", "fabric"], "train_normals": 8, "test_normals": 3, "test_per_defect": 3}},
    "synthesize": {"samples_per_type": 4, "shard_size": 8, "image_size": 64},
    "train": {"image_size": 64, "width": 8, "embed_dim": 8, "epochs": 2, "batch_size": 8, "threads": 2, "min_epoch_samples": 0},
    "fit_cada": {"steps": 50, "synthetic_per_class": 4},
    "evaluate": {"overlays": 4, "mlflow": {"registered_model": "uniadc-test", "experiment": "tests"}},
    "promote": {"min_image_auroc": 0.0, "min_type_accuracy": 0.0},  # a 2-epoch model: the gates are tested elsewhere
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
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        metrics = pipeline_flow(str(work))  # the repository root is passed, the working directory is not changed
    finally:
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
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "type_accuracy", "miou", "false_positive_rate", "miss_rate",
                    "type_accuracy_given_anomaly", "type_accuracy_uniadc_protocol", "miou_uniadc_protocol"):
            assert 0.0 <= on_disk[f"{key}_{variant}"] <= 1.0
    assert on_disk["threshold"] == 1.0 and np.isfinite(on_disk["calibrated_threshold"])
    assert on_disk["test_images"] == 2 * 3 + 2 * 3 * 2
    for plot in ("roc.png", "confusion.png", "scores.png", "overlays.png"):
        assert (work / "data/reports/plots" / plot).stat().st_size > 1000
    confusion = pl.read_csv(work / "data/reports/confusion.csv")
    assert confusion["images"].sum() == on_disk["test_images"] and confusion.columns[1] == "decided normal (a miss)"
    per_class = pl.read_csv(work / "data/reports/per_class.csv")
    assert sorted(per_class["object_class"].to_list()) == ["fabric", "tile"]


def test_registered_challenger_scores_like_the_local_model(pipeline_run):
    from mlflow import MlflowClient

    from uniadc_core.io import load_image
    from uniadc_core.serving.detector import Detector
    from uniadc_core.tracking import load_pyfunc, predict_paths

    work, uri, _ = pipeline_run
    version = MlflowClient(uri).get_model_version_by_alias("uniadc-test", "challenger")
    assert version.tags["image_auroc_cada"]
    manifest = pl.read_parquet(work / "data/prepared/manifest.parquet")
    paths = [str(work / p) for p in manifest.filter(pl.col("role") == "test")["path"].to_list()[:6]]
    model = load_pyfunc("models:/uniadc-test@challenger", uri)
    remote = predict_paths(model, paths)
    local = Detector.load(work / "data/models").detect([load_image(p) for p in paths])
    np.testing.assert_allclose(remote["score"].to_numpy(), local.score, rtol=1e-5, atol=1e-6)
    assert remote["defect_type"].tolist() == local.defect_type
    assert remote["is_anomaly"].tolist() == local.is_anomaly.tolist()
    # image bytes in base64 (what `mlflow models serve` receives over HTTP), a bad row answered in its own row
    assert model.metadata.signature.inputs.input_names() == ["path", "image"]
    sent = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths[:2]] + ["not base64!", base64.b64encode(b"GIF89 junk").decode()]
    encoded = model.predict(pd.DataFrame({"image": sent}))
    np.testing.assert_allclose(encoded["score"][:2].to_numpy(float), local.score[:2], rtol=1e-5, atol=1e-6)
    assert encoded["error"][:2].tolist() == ["", ""] and all(isinstance(json.loads(r), list) for r in encoded["regions"])
    assert "row 2: 'image' is not base64" in encoded["error"][2] and "row 3 image: cannot be decoded" in encoded["error"][3]


def test_promote_flow_makes_the_first_passing_challenger_champion(pipeline_run):
    from mlflow import MlflowClient

    from flows.promote import promote_flow

    work, uri, metrics = pipeline_run
    first = promote_flow(str(work))
    again = promote_flow(str(work))
    with pytest.raises(ValueError, match="no earlier champion to roll back to"):
        promote_flow(str(work), rollback_champion=True)
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("uniadc-test", "champion")
    assert first["promoted"] and first["champion"] == str(champion.version) == first["challenger"]
    assert "no champion yet" in first["decision"]
    # scored again on the same evaluation data: the same figures as the pipeline's evaluation
    assert first["challenger_metrics"]["image_auroc_cada"] == pytest.approx(metrics["image_auroc_cada"], abs=1e-9)
    assert champion.tags["promotion.decision"] == "promoted"
    assert float(champion.tags["promotion.challenger.image_auroc_cada"]) == pytest.approx(metrics["image_auroc_cada"], abs=1e-4)
    assert again == {"challenger": first["challenger"], "champion": first["challenger"], "promoted": False, "decision": "already champion"}


def test_predict_command_scores_a_folder_with_a_corrupt_file(pipeline_run, tmp_path, monkeypatch):
    import shutil

    from flows.cli import main
    from uniadc_core.io import load_image
    from uniadc_core.serving.detector import Detector

    work, uri, _ = pipeline_run
    manifest = pl.read_parquet(work / "data/prepared/manifest.parquet")
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    picks = [work / p for p in manifest.filter(pl.col("role") == "test")["path"].to_list()[:4]]
    for i, p in enumerate(picks):
        shutil.copy(p, folder / ("sub" if i % 2 else "") / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(work)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(folder), "--model", "models:/uniadc-test@challenger", "--out", str(out),
                 "--overlays", str(tmp_path / "overlays"), "--batch-size", "2"]) == 0
    rows = pl.read_csv(out)
    assert rows.height == 5
    broken = rows.filter(pl.col("path").str.ends_with("broken.png"))
    assert broken.height == 1 and "broken.png" in broken["error"][0] and broken["score"][0] is None
    good = rows.filter(pl.col("error").is_null())
    local = Detector.load(work / "data/models")
    expected = local.detect([load_image(p) for p in good["path"].to_list()])
    # batches of 2 here and of all 4 there: float32 convolutions differ by ~1e-6 with the batch, and the aligned score
    # divides the raw one by (gamma - u), so a few 1e-6 apart is the same score
    np.testing.assert_allclose(good["score"].to_numpy(), expected.score, rtol=1e-5, atol=2e-5)
    assert good["defect_type"].to_list() == expected.defect_type
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 4
    # a local models directory works too, and JSON output
    assert main(["predict", str(folder / "img0.png"), "--model", "data/models", "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())[0]["defect_type"] == expected.defect_type[0]
    assert main(["predict", str(tmp_path / "missing")]) == 2
    assert main(["predict", str(folder), "--model", "data/models", "--threshold", "nan"]) == 2  # every part would pass unseen
    # the line's own operating point, label masks at each image's size, one CSV row per region
    assert main(["predict", str(folder), "--model", "data/models", "--out", str(tmp_path / "at.csv"), "--masks", str(tmp_path / "masks"),
                 "--threshold", "-100"]) == 0
    at = pl.read_csv(tmp_path / "at.csv").filter(pl.col("error").is_null())
    assert at["threshold"].unique().to_list() == [-100.0] and at["is_anomaly"].all() and (at["regions"] >= 1).all()
    regions = pl.read_csv(tmp_path / "at.regions.csv")
    assert regions.columns[:3] == ["path", "region", "defect_type"] and regions.height == at["regions"].sum()
    assert sorted(p.name.split("_", 1)[1] for p in (tmp_path / "masks").glob("*.png")) == [f"img{i}.png" for i in range(4)]
    # exported, then scored by the runtime through the same command: the same rows
    assert main(["export", "--model", "data/models", "--out", str(tmp_path / "exported")]) == 0
    assert main(["predict", str(folder), "--model", str(tmp_path / "exported"), "--out", str(tmp_path / "onnx.csv"), "--threshold", "-100"]) == 0
    onnx = pl.read_csv(tmp_path / "onnx.csv").filter(pl.col("error").is_null())
    np.testing.assert_allclose(onnx["score"].to_numpy(), at["score"].to_numpy(), rtol=0, atol=1e-4)
    assert onnx["defect_type"].to_list() == at["defect_type"].to_list() and onnx["regions"].to_list() == at["regions"].to_list()
    # an unsure type is reported as unknown, in the rows and the regions alike
    level = float(np.median(onnx["defect_prob"].to_numpy()))
    assert main(["predict", str(folder), "--model", str(tmp_path / "exported"), "--out", str(tmp_path / "unsure.csv"), "--threshold", "-100",
                 "--abstain-below", str(level)]) == 0
    unsure = pl.read_csv(tmp_path / "unsure.csv").filter(pl.col("error").is_null())
    assert unsure["defect_type"].to_list() == [t if round(q * 255) / 255 >= level else "unknown"  # judged in 1/255 steps, as regions are
                                                  for t, q in zip(onnx["defect_type"], onnx["defect_prob"], strict=True)]
    typed = pl.read_csv(tmp_path / "unsure.regions.csv")
    assert ((typed["defect_type"] == "unknown") == (typed["type_probability"] < level)).all()
    assert main(["export", "--model", str(tmp_path / "exported"), "--out", str(tmp_path / "again")]) == 2  # already exported
    with pytest.raises(SystemExit) as refused:  # one or the other
        main(["predict", str(folder), "--model", "data/models", "--threshold", "1", "--false-alarm-rate", "0.1"])
    assert refused.value.code == 2
