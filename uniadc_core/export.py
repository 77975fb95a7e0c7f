"""``uniadc export``: a models folder as one ONNX graph plus a JSON file, for the slim runtime.

    folder = export_model(Detector.load("data/models"), "exported/")     # model.onnx + runtime.json, checked against torch

The graph holds everything between the model's square uint8 input and the raw outputs: normalisation,
the backbone, the normal memory's nearest-neighbour distance, the fusion of the score terms, the image
score, the type head, and CADA's regressor (the embedding -> u, gamma). It takes one image (1, 3, S, S)
at a time. What stays outside is plain numpy shared with the torch path: decoding and resizing
(``Preprocess``), the decision (``decision.decide``) and the regions (``serving.regions``).
``runtime.json`` holds the preprocessing, the defect types, the threshold and the held-out normal scores
(``--false-alarm-rate``), and the graph's sha256.

Before the folder is written, the exported graph is run by onnxruntime on test images beside the torch
model; the export fails if any output differs by more than ``TOLERANCE``. The folder is written under a
temporary name and renamed, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uniadc_core import __version__
from uniadc_core.io import atomic_dir, sha256_file, write_json
from uniadc_core.serving.detector import Detector

log = logging.getLogger(__name__)

FORMAT = 2  # 2: pixel_type_prob output
OUTPUTS = ("score", "anomaly_map", "type_probs", "pixel_types", "embedding", "u", "gamma", "pixel_type_prob")
TOLERANCE = 1e-4  # largest difference allowed between onnxruntime's and torch's outputs, |a - b| / (1 + |b|): absolute near 0,
# relative on large values (float32 rounding of a log-odds of 100 is about 1e-5)


class _Graph(nn.Module):
    """The detector's torch computation from the uint8 input to the raw outputs and CADA's (u, gamma)."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.model, self.regressor = detector.model.eval(), detector.cada.regressor.eval()  # registered: exported as weights
        self.cada = detector.cada

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.model.predict(images)
        u, gamma = self.cada.stats(p.embedding)
        return p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding, u, gamma, p.pixel_type_prob


def runtime_config(detector: Detector, source: str) -> dict:
    """What the runtime needs besides the graph, as JSON."""
    pre = detector.preprocess
    cada = detector.cada.config
    return {
        "format": FORMAT,
        "uniadc_version": __version__,
        "source": source,
        "preprocess": {"size": pre.size, "policy": pre.policy, "mean": list(pre.mean), "std": list(pre.std),
                       "decode": pre.decode.to_dict(), "intensity": pre.intensity},
        "defect_types": list(detector.defect_types),
        "threshold": detector.threshold,
        "calibration_scores": cada.calibration_scores,
        "calibration_scope": cada.calibration_scope,
        "outputs": list(OUTPUTS),
    }


def check_parity(graph: nn.Module, onnx_path: Path, inputs: np.ndarray) -> float:
    """The largest difference |a - b| / (1 + |b|) between onnxruntime's (a) and torch's (b) outputs over ``inputs``
    (N, 3, S, S) uint8, one at a time; a pixel type that differs counts as the share of pixels that do."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        got = session.run(list(OUTPUTS), {"images": x[None]})
        with torch.no_grad():
            want = [t.numpy() for t in graph(torch.from_numpy(x[None]))]
        for name, a, b in zip(OUTPUTS, got, want, strict=True):
            if name == "pixel_type_prob":  # 1/255 steps: one step of rounding is float32 noise
                worst = max(worst, float(np.abs(a.astype(np.int16) - b).max() > 1))
                continue
            if name == "pixel_types":
                if not np.array_equal(a, b):
                    worst = max(worst, float(np.mean(a != b)))  # a share of pixels: counts against the tolerance too
                continue
            worst = max(worst, float((np.abs(a.astype(np.float64) - b) / (1.0 + np.abs(b))).max()))
    return worst


def export_model(detector: Detector, out_dir: str | Path, source: str = "", check_images: list[np.ndarray] | None = None,
                 opset: int = 18) -> Path:
    """Export ``detector`` (loaded from ``source``, recorded) to ``out_dir`` (model.onnx + runtime.json); ``check_images``:
    (H, W, 3) uint8 images for the parity check (default: four seeded random images)."""
    models_dir = source or "the model"
    pre = detector.preprocess
    if pre.tiled:
        msg = (f"{models_dir}: a resize: tile model scores many tiles per image and merges them; export covers stretch and pad "
               "models for now (ingest.resize)")
        raise ValueError(msg)
    graph = _Graph(detector).eval()
    size = pre.size
    if check_images is None:
        rng = np.random.default_rng(0)
        check_images = [rng.integers(0, 256, (size, size + 32 * i, 3), dtype=np.uint8) for i in range(4)]
    inputs = np.stack([pre.image(im) for im in check_images]).transpose(0, 3, 1, 2).copy()
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "runtime.json").is_file())):
        msg = f"{out} exists and is not an earlier export (no runtime.json inside): nothing replaced; choose another --out"
        raise ValueError(msg)
    with atomic_dir(out) as work:  # the old export stays until the new one is complete and checked
        example = torch.from_numpy(inputs[:1])
        with torch.no_grad():
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"], output_names=list(OUTPUTS),
                                        opset_version=opset, verbose=False)
        program.save(str(work / "model.onnx"))
        worst = check_parity(graph, work / "model.onnx", inputs)
        if worst > TOLERANCE:
            msg = f"{models_dir}: the exported graph differs from the torch model by {worst:.3g} (> {TOLERANCE}); not exported"
            raise RuntimeError(msg)
        config = runtime_config(detector, source)
        config.update(model_sha256=sha256_file(work / "model.onnx"), parity_max_difference=worst)
        write_json(work / "runtime.json", config)
    log.info("exported %s -> %s (largest difference from torch %.2g)", models_dir, out, worst)
    return out
