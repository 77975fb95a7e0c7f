"""Exported = evaluated = served: the ONNX runtime decides as the torch detector does, without torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from PIL import Image

from tests.conftest import TINY_TRAIN, train_with_memory
from uniadc_core.cada.fit import fit
from uniadc_core.config import FitCadaConfig, MemoryConfig
from uniadc_core.data.shards import read_samples
from uniadc_core.export import export_model
from uniadc_core.model.discriminator import load_model, save_model
from uniadc_core.runtime import OnnxDetector
from uniadc_core.serving.detector import Detector
from uniadc_core.serving.predict import predict_files

pytestmark = pytest.mark.slow  # two tiny pretrained-backbone models trained and exported


@pytest.fixture(scope="module", params=["timm", "torchvision"])
def exported(request, tiny_dataset, tiny_shards, tmp_path_factory):
    """(torch detector, exported runtime, test image paths) of a tiny memory model on each CNN family: the default
    Lite2 with its built-in weights, and a MobileNetV2 with random weights."""
    manifest, *_ = tiny_dataset
    base = tmp_path_factory.mktemp(f"export-{request.param}")
    cfg = replace(TINY_TRAIN, backbone=request.param, epochs=1, memory=MemoryConfig(weight=0.5, size=300))
    model, _ = train_with_memory(tiny_dataset, tiny_shards, cfg)
    save_model(model, base / "models/discriminator")
    fit(load_model(base / "models/discriminator"), manifest, read_samples(tiny_shards),
        FitCadaConfig(steps=30, synthetic_per_class=4, threshold="auto"), base / "models/cada")
    detector = Detector.load(base / "models")
    export_model(detector, base / "exported", source=str(base / "models"))
    return detector, OnnxDetector.load(base / "exported", threads=2), manifest.filter(pl.col("role") == "test")["path"].to_list(), base


def test_the_exported_runtime_decides_as_torch_does(exported, tmp_path):
    detector, runtime, paths, _ = exported
    assert runtime.threshold == detector.threshold and runtime.defect_types == detector.defect_types
    torch_rows = predict_files(detector, paths, mask_dir=tmp_path / "torch", progress=False)
    onnx_rows = predict_files(runtime, paths, mask_dir=tmp_path / "onnx", progress=False)
    # raw scores within 1e-4; the aligned score divides them by gamma - u, so its tolerance is 1e-4 in raw units (the
    # random-weight MobileNetV2 has a small spread: there torch at batch 1 and at batch 32 differ by 4e-4 aligned)
    np.testing.assert_allclose([r["raw_score"] for r in onnx_rows], [r["raw_score"] for r in torch_rows], rtol=0, atol=1e-4)
    d = detector.detect([detector.preprocess.decode_image(p) for p in paths])
    np.testing.assert_allclose([r["score"] for r in onnx_rows], [r["score"] for r in torch_rows], rtol=0,
                               atol=1e-4 / min(1.0, float((d.gamma - d.u).min())))
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        assert (a["is_anomaly"], a["defect_type"], a["threshold"]) == (b["is_anomaly"], b["defect_type"], b["threshold"])
        assert [(r["defect_type"], r["x0"], r["y0"], r["x1"], r["y1"], r["area"]) for r in a["regions"]] == \
            [(r["defect_type"], r["x0"], r["y0"], r["x1"], r["y1"], r["area"]) for r in b["regions"]]
    for a, b in zip(sorted((tmp_path / "onnx").glob("*.png")), sorted((tmp_path / "torch").glob("*.png")), strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert sum(r["is_anomaly"] for r in torch_rows) > 0  # the comparison covered decided defects and their regions
    strict = runtime.with_threshold(false_alarm_rate=0.3)
    assert strict.threshold == detector.with_threshold(false_alarm_rate=0.3).threshold


def test_an_altered_export_is_refused_by_name(exported, tmp_path):
    *_, base = exported
    copy = tmp_path / "exported"
    copy.mkdir()
    for name in ("runtime.json", "model.onnx"):
        (copy / name).write_bytes((base / "exported" / name).read_bytes())
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\0" * 16)
    with pytest.raises(ValueError, match=r"model.onnx: sha256 .* export the model again"):
        OnnxDetector.load(copy)
    (copy / "runtime.json").unlink()
    with pytest.raises(FileNotFoundError, match="runtime.json missing.*uniadc export"):
        OnnxDetector.load(copy)


def test_export_replaces_only_an_earlier_export_and_leaves_a_readable_folder(exported, tmp_path):
    import os
    import stat

    detector, *_, base = exported
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an earlier export"):
        export_model(detector, mine, source=str(base / "models"))
    assert (mine / "precious.txt").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    mask = os.umask(0o022)
    try:
        export_model(detector, tmp_path / "exported", source=str(base / "models"))
        first = (tmp_path / "exported" / "runtime.json").read_text()
        export_model(detector, tmp_path / "exported", source=str(base / "models"))  # an earlier export is replaced
    finally:
        os.umask(mask)
    assert (tmp_path / "exported" / "runtime.json").read_text() == first
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == 0o755  # a service running as another user reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "mine"]


def test_the_runtime_path_imports_no_torch():
    code = ("import sys; import uniadc_core.runtime, uniadc_core.serving.predict, uniadc_core.serving.api, flows.cli; "
            "bad = sorted(m for m in ('torch', 'mlflow', 'prefect', 'scipy') if m in sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
