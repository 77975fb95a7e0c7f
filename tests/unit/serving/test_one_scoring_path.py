"""Evaluation, prediction and the HTTP service are one scoring path: the same scores, decisions, defect types and
regions for the same images and models folder, with every resize policy (tile: native-resolution tiles merged
back); overlays lie on the image the model saw; regions and masks come back at the image's own size."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import uvicorn
from PIL import Image

from tests.conftest import TINY_DEMO, TINY_SYNTH, TINY_TRAIN
from uniadc_core.cada.calibration import threshold_for_rate
from uniadc_core.cada.fit import fit
from uniadc_core.config import EvaluateConfig, FitCadaConfig, IngestConfig, MemoryConfig
from uniadc_core.data.demo import generate_demo
from uniadc_core.data.ingest import ingest
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.data.shards import read_samples
from uniadc_core.evaluation.evaluate import evaluate
from uniadc_core.export import export_model
from uniadc_core.io import load_image
from uniadc_core.model.discriminator import load_model
from uniadc_core.model.train import train
from uniadc_core.runtime import OnnxDetector
from uniadc_core.serving.api import create_app
from uniadc_core.serving.detector import Detector
from uniadc_core.serving.overlay import heat_overlay
from uniadc_core.serving.predict import predict_files
from uniadc_core.synthesis.synthesize import load_inputs, synthesize

pytestmark = pytest.mark.slow  # four tiny pipelines trained end to end

WIDE = 64  # columns added to every 128 x 128 demo image: 128 x 192, so the resize policy matters


def _widen(root) -> None:
    """Reflect-pad every image (zero-pad every mask) on the right: non-square images, masks still aligned."""
    for path in root.rglob("*.png"):
        arr = np.asarray(Image.open(path))
        is_mask = "ground_truth" in path.parts
        pads = [(0, 0), (0, WIDE)] + [(0, 0)] * (arr.ndim - 2)
        Image.fromarray(np.pad(arr, pads, mode="constant" if is_mask else "reflect")).save(path)


@pytest.fixture(scope="module", params=[("stretch", 0.0), ("pad", 0.0), ("pad", 0.5), ("tile", 0.5)],
                ids=["stretch", "pad", "pad-memory", "tile-memory"])
def models(request, tmp_path_factory):
    """(models folder, manifest, policy) of a tiny pipeline on non-square images; the last with a normal
    memory over the scratch encoder's features, fused half and half with the discriminator."""
    policy, memory = request.param
    base = tmp_path_factory.mktemp(f"scoring-{policy}")
    d = TINY_DEMO
    generate_demo(base / "raw", 0, d.classes, d.image_size, d.train_normals, d.test_normals, d.test_per_defect)
    _widen(base / "raw")
    result = ingest(IngestConfig(kind="mvtec", root=str(base / "raw"), resize=policy, anomaly_shots=1), base / "prepared")
    synthesize(result.manifest_path, result.vocabulary_path, base / "synthetic", TINY_SYNTH)
    manifest, vocab = load_inputs(result.manifest_path, result.vocabulary_path)
    cfg = replace(TINY_TRAIN, epochs=1, memory=MemoryConfig(weight=memory, size=500))
    train(manifest, vocab, base / "synthetic", cfg, base / "models/discriminator")
    fit(load_model(base / "models/discriminator"), manifest, read_samples(base / "synthetic"),
        FitCadaConfig(steps=30, synthetic_per_class=4, threshold="auto"), base / "models/cada")
    return base / "models", manifest, policy, memory


def test_evaluate_and_predict_give_the_same_scores_decisions_and_types(models, tmp_path):
    models_dir, manifest, policy, memory = models
    detector = Detector.load(models_dir)
    assert detector.model.config.resize == policy and detector.threshold == detector.cada.config.calibrated_threshold
    weights = {t.name: t.weight for t in detector.model.config.terms}
    assert (detector.model.memory is not None) == (memory > 0) and weights.get("memory", 0.0) == memory
    metrics = evaluate(detector, manifest, EvaluateConfig(overlays=0), tmp_path / "reports")
    report = pl.read_csv(tmp_path / "reports/predictions.csv")
    assert load_image(report["path"][0]).shape[:2] == (128, 128 + WIDE)

    rows = predict_files(Detector.load(models_dir), [report["path"].to_list()[i] for i in range(report.height)], batch_size=5,
                         progress=False)
    served = pl.DataFrame(rows)
    np.testing.assert_allclose(served["score"].to_numpy(), report["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["raw_score"].to_numpy(), report["raw_score"].to_numpy(), rtol=1e-5, atol=1e-6)
    decided = [t if a else "normal" for a, t in zip(served["is_anomaly"], served["defect_type"])]
    assert decided == report["pred_type"].to_list()
    assert served["threshold"].unique().to_list() == [metrics["threshold"]]
    normals = report["true_type"] == "normal"
    assert metrics["false_positive_rate_cada"] == pytest.approx(served.filter(normals)["is_anomaly"].mean(), abs=1e-6)
    assert metrics["miss_rate_cada"] == pytest.approx(1 - served.filter(~normals)["is_anomaly"].mean(), abs=1e-6)


def test_overlays_lie_on_the_image_the_model_saw(models, tmp_path):
    models_dir, manifest, policy, *_ = models
    detector = Detector.load(models_dir)
    # an anomaly whose map is at or below the threshold on more than 30 % of its pixels (a tiny model may run hot
    # over a whole image), so the overlay shows both; the first anomaly when none is
    candidates = manifest.filter(pl.col("is_anomaly"))["path"].to_list()
    cool_share = (detector.detect([load_image(p) for p in candidates]).anomaly_map[:, 13:] <= 0).mean((1, 2))
    path = candidates[int(np.argmax(cool_share > 0.3))]
    predict_files(detector, [path], overlay_dir=tmp_path, progress=False)
    (written,) = tmp_path.glob("*.png")
    overlay = np.asarray(Image.open(written).convert("RGB")).astype(int)[13:]  # below the label bar
    size = detector.preprocess.size
    assert overlay.shape[1] == size
    raw = load_image(path)
    seen = detector.preprocess.image(raw).astype(int)[13:]
    other = Preprocess(size, "pad" if policy == "stretch" else "stretch").image(raw).astype(int)[13:]
    # where the map is below the threshold the overlay is the input pixel for pixel; the other policy's image is not it
    amap = detector.detect([raw]).anomaly_map[0][13:]
    cool = amap <= 0
    assert cool.mean() > 0.3
    assert np.array_equal(overlay[cool], seen[cool])
    assert np.abs(overlay[cool] - other[cool]).mean() > 5
    with pytest.raises(ValueError, match="pass the preprocessed image"):
        heat_overlay(raw, amap, 1.0)


def test_predict_gives_unreadable_truncated_and_oversized_files_their_own_error_rows(models, tmp_path):
    models_dir, manifest, *_ = models
    detector = Detector.load(models_dir)
    good = manifest.filter(pl.col("role") == "test")["path"].to_list()[:2]
    truncated = tmp_path / "truncated.png"
    data = Path(good[0]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(big)
    gray = load_image(good[1])[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray8.png")
    deep = tmp_path / "deep.png"  # the same pixels in 16 bits: read through the same decoder, not clipped to white
    Image.fromarray(gray.astype(np.uint16) * 257).save(deep)
    detector.model.config.decode = {**detector.model.config.decode, "max_pixels": 100_000}  # as ingest.max_pixels would record it
    paths = [good[0], truncated, big, tmp_path / "gray8.png", deep]
    rows = {Path(r["path"]).name: r for r in predict_files(detector, paths, batch_size=2, progress=False)}
    assert "truncated.png" in rows["truncated.png"]["error"] and "cannot be decoded" in rows["truncated.png"]["error"]
    assert "big.png: 400x300 = 120,000 pixels, over the limit of 100,000" in rows["big.png"]["error"]
    scored = [rows[Path(good[0]).name], rows["gray8.png"], rows["deep.png"]]
    assert all(r["error"] == "" and np.isfinite(r["score"]) for r in scored)
    assert rows["deep.png"]["raw_score"] == pytest.approx(rows["gray8.png"]["raw_score"], rel=1e-5, abs=1e-6)


def test_predict_writes_regions_and_label_masks_at_the_images_own_size(models, tmp_path):
    models_dir, manifest, *_ = models
    saved = Detector.load(models_dir)
    detector = saved.with_threshold(false_alarm_rate=0.25)  # the line's own operating point
    assert detector.threshold == threshold_for_rate(saved.cada.config.calibration_scores, 0.25)
    assert saved.with_threshold(0.5).threshold == 0.5 and saved.with_threshold().threshold == saved.threshold
    paths = manifest.filter(pl.col("role") == "test")["path"].to_list()
    rows = predict_files(detector, paths, mask_dir=tmp_path / "masks", progress=False)
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == len(paths) and any(r["regions"] for r in rows)
    for row, mask_path in zip(rows, masks, strict=True):
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (128, 128 + WIDE) and row["threshold"] == detector.threshold
        assert row["is_anomaly"] == (row["score"] > detector.threshold)
        if not row["is_anomaly"]:
            assert not mask.any() and row["regions"] == []
            continue
        assert sum(r["area"] for r in row["regions"]) == int((mask > 0).sum())
        for r in row["regions"]:
            assert 0 <= r["x0"] < r["x1"] <= 128 + WIDE and 0 <= r["y0"] < r["y1"] <= 128
            assert r["defect_type"] in detector.defect_types and r["max_score"] > detector.threshold
            box = mask[r["y0"]:r["y1"], r["x0"]:r["x1"]]
            assert (box == detector.defect_types.index(r["defect_type"]) + 1).any()


@contextmanager
def _serving(app):
    """The app served by uvicorn on 127.0.0.1 and a free port, in a thread, for the block."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_http_service_answers_as_predict_does_and_refuses_bad_requests(models, tmp_path):
    models_dir, manifest, *_ = models
    detector = Detector.load(models_dir)
    paths = manifest.filter((pl.col("role") == "test") & pl.col("is_anomaly"))["path"].to_list()
    rows = predict_files(detector, paths, mask_dir=tmp_path, progress=False)
    pick = next((i for i, r in enumerate(rows) if r["regions"]), 0)  # an image with regions, where there is one
    expected, mask_file, png = rows[pick], sorted(tmp_path.glob("*.png"))[pick], Path(paths[pick]).read_bytes()
    buf = io.BytesIO()
    Image.open(paths[pick]).convert("RGB").save(buf, format="JPEG", quality=95)
    with _serving(create_app(detector, str(models_dir), max_bytes=100_000)) as url, httpx.Client(base_url=url, timeout=60) as http:
        info = http.get("/health").json()
        assert info["threshold"] == detector.threshold and info["defect_types"] == detector.defect_types
        assert info["model"] == str(models_dir) and info["max_bytes"] == 100_000

        got = http.post("/predict?mask=true", content=png, headers={"content-type": "image/png"})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)
        verdict = ("is_anomaly", "defect_type", "threshold")
        assert {k: body[k] for k in verdict} == {k: expected[k] for k in verdict}
        assert [r["defect_type"] for r in body["regions"]] == [r["defect_type"] for r in expected["regions"]]
        assert [r["area"] for r in body["regions"]] == [r["area"] for r in expected["regions"]]
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
        assert (body["height"], body["width"]) == mask.shape == (128, 128 + WIDE)
        assert np.array_equal(mask, np.asarray(Image.open(mask_file)))

        jpeg = http.post("/predict", content=buf.getvalue(), headers={"content-type": "image/jpeg"}).json()
        assert (jpeg["height"], jpeg["width"]) == (128, 128 + WIDE) and "mask_png" not in jpeg
        form = http.post("/predict", files={"file": ("part.png", png, "image/png")}).json()
        assert form["score"] == pytest.approx(body["score"], rel=1e-6) and form["regions"] == body["regions"]
        strict = http.post("/predict?threshold=1e9", content=png, headers={"content-type": "image/png"}).json()
        assert strict["threshold"] == 1e9 and not strict["is_anomaly"] and strict["regions"] == []

        bad = {
            "not an image": (http.post("/predict", content=b"\x89PNG\r\n\x1a\n not really", headers={"content-type": "image/png"}),
                             422, "cannot be decoded"),
            "too large": (http.post("/predict", content=b"\0" * 100_001, headers={"content-type": "image/png"}), 413, "over the limit"),
            "wrong type": (http.post("/predict", content=png, headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
            "empty": (http.post("/predict", content=b"", headers={"content-type": "image/png"}), 400, "empty body"),
            "form without a file": (http.post("/predict", content=b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--b--\r\n',
                                              headers={"content-type": "multipart/form-data; boundary=b"}), 400, "no file part"),
            "form, url-encoded": (http.post("/predict", data={"note": "x"}), 415, "content type"),
            "threshold nan": (http.post("/predict?threshold=nan", content=png, headers={"content-type": "image/png"}), 422, "finite"),
            "threshold inf": (http.post("/predict?threshold=-inf", content=png, headers={"content-type": "image/png"}), 422, "finite"),
        }
        for what, (answer, status, message) in bad.items():
            assert answer.status_code == status and message in answer.json()["detail"], (what, answer.status_code, answer.text)
        again = http.post("/predict", content=png, headers={"content-type": "Image/PNG"})  # media types ignore case
        assert again.status_code == 200 and again.json()["score"] == pytest.approx(body["score"], rel=1e-6)


def test_a_reload_swaps_the_model_without_failing_requests_in_flight(models):
    """Requests keep coming while /reload loads a new detector (here: the same one deciding at another threshold,
    as a promotion would bring): every request is answered 200, by the old detector or the new; a failed load keeps
    the serving one; a service with nothing to reload says so."""
    models_dir, manifest, *_ = models
    detector = Detector.load(models_dir)
    png = Path(manifest.filter(pl.col("role") == "test")["path"][0]).read_bytes()
    attempts = []

    def load_again():
        attempts.append(time.perf_counter())
        time.sleep(0.3)  # a load takes a while: requests run meanwhile
        if len(attempts) == 2:
            raise OSError("registry unreachable")
        return Detector.load(models_dir).with_threshold(1e9)

    statuses, thresholds = [], []

    def client(url):
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(12):
                answer = http.post("/predict", content=png, headers={"content-type": "image/png"})
                statuses.append(answer.status_code)
                thresholds.append(answer.json().get("threshold"))

    with _serving(create_app(detector, str(models_dir), reload=load_again)) as url, httpx.Client(base_url=url, timeout=60) as http:
        workers = [threading.Thread(target=client, args=(url,)) for _ in range(3)]
        for w in workers:
            w.start()
        swapped = http.post("/reload")
        for w in workers:
            w.join()
        assert swapped.status_code == 200 and swapped.json()["reloads"] == 1 and swapped.json()["threshold"] == 1e9
        assert statuses == [200] * 36 and set(thresholds) <= {detector.threshold, 1e9}
        assert http.post("/predict", content=png, headers={"content-type": "image/png"}).json()["threshold"] == 1e9
        failed = http.post("/reload")
        assert failed.status_code == 503 and "registry unreachable" in failed.json()["detail"]
        assert http.get("/health").json()["reloads"] == 1  # still the detector of the first reload
    with _serving(create_app(detector, str(models_dir))) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/reload").status_code == 409


def test_the_exported_runtime_gives_the_same_rows(models, tmp_path):
    """The demo's scratch discriminator (with and without a memory) exported to ONNX: the same scores, decisions,
    types and regions as torch; a tile model is refused with the reason."""
    models_dir, manifest, policy, _ = models
    detector = Detector.load(models_dir)
    if policy == "tile":
        with pytest.raises(ValueError, match="resize: tile model"):
            export_model(detector, tmp_path / "exported", source=str(models_dir))
        assert not (tmp_path / "exported").exists()
        return
    runtime = OnnxDetector.load(export_model(detector, tmp_path / "exported", source=str(models_dir)))
    paths = manifest.filter(pl.col("role") == "test")["path"].to_list()
    want, got = predict_files(detector, paths, progress=False), predict_files(runtime, paths, progress=False)
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=0, atol=1e-4)
    assert [(r["is_anomaly"], r["defect_type"], [(g["defect_type"], g["area"]) for g in r["regions"]]) for r in got] == \
        [(r["is_anomaly"], r["defect_type"], [(g["defect_type"], g["area"]) for g in r["regions"]]) for r in want]
