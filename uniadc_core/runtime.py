"""The slim runtime: an exported model folder scored with onnxruntime, numpy and Pillow (no torch).

    detector = OnnxDetector.load("exported/")          # model.onnx + runtime.json from `uniadc export`
    d = detector.detect(images)                        # the same Decision as the torch Detector's

It has the torch ``Detector``'s interface (``preprocess``, ``threshold``, ``defect_types``,
``with_threshold``, ``detect``), so ``uniadc predict`` and ``uniadc serve-api`` take either. Decoding,
resizing, the decision and the regions are the same numpy code as the torch path; only the graph
between the square uint8 input and the raw outputs runs in onnxruntime. Install it alone with
``pip install uniadc`` (the pipeline is ``uniadc[pipeline]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from uniadc_core.cada.calibration import line_threshold
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decision import Decision, Scores, check_probability, decide
from uniadc_core.decoding import DecodeOptions
from uniadc_core.io import sha256_file

FORMAT = 2  # 2: pixel_type_prob output
FILES = ("model.onnx", "runtime.json")


def is_exported(path: str | Path) -> bool:
    return all((Path(path) / name).is_file() for name in FILES)


class OnnxDetector:
    """An exported detector: onnxruntime for the graph, numpy for the rest."""

    def __init__(self, session, config: dict, threshold: float | None = None, abstain_below: float = 0.0):
        self.session, self.config, self.override, self.abstain_below = session, config, threshold, abstain_below
        p = config["preprocess"]
        self._preprocess = Preprocess(int(p["size"]), p["policy"], tuple(p["mean"]), tuple(p["std"]), DecodeOptions.from_dict(p["decode"]),
                                      p["intensity"])
        self._outputs = list(config["outputs"])

    @classmethod
    def load(cls, folder: str | Path, threads: int = 0) -> OnnxDetector:
        """``threads``: onnxruntime's intra-op threads (0: its default, every core)."""
        import onnxruntime as ort

        root = Path(folder)
        missing = [name for name in FILES if not (root / name).is_file()]
        if missing:
            msg = f"{root}: not an exported model ({', '.join(missing)} missing); make one with `uniadc export --model MODEL --out {root}`"
            raise FileNotFoundError(msg)
        config = json.loads((root / "runtime.json").read_text())
        if config.get("format") != FORMAT:
            msg = f"{root / 'runtime.json'}: format {config.get('format')}, this uniadc reads {FORMAT}; export the model again"
            raise ValueError(msg)
        digest = sha256_file(root / "model.onnx")
        if digest != config.get("model_sha256"):
            msg = (f"{root / 'model.onnx'}: sha256 {digest[:12]}... is not the {str(config.get('model_sha256'))[:12]}... recorded at "
                   "export (altered or truncated); export the model again")
            raise ValueError(msg)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return cls(ort.InferenceSession(str(root / "model.onnx"), options, providers=["CPUExecutionProvider"]), config)

    def with_threshold(self, threshold: float | None = None, false_alarm_rate: float | None = None) -> OnnxDetector:
        return OnnxDetector(self.session, self.config, line_threshold(threshold, false_alarm_rate, self.config["calibration_scores"],
                                                                     self.config["calibration_scope"]), self.abstain_below)

    def with_abstain(self, abstain_below: float) -> OnnxDetector:
        return OnnxDetector(self.session, self.config, self.override, check_probability(abstain_below))

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"]) if self.override is None else float(self.override)

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    @property
    def defect_types(self) -> list[str]:
        return list(self.config["defect_types"])

    def detect(self, images: list[np.ndarray], batch_size: int = 32, progress: bool = False) -> Decision:
        """Decide on (H, W, 3) uint8 images of any size (the graph takes one at a time; ``batch_size`` is unused)."""
        outs = []
        for image in images:
            x = np.ascontiguousarray(self._preprocess.image(image).transpose(2, 0, 1)[None])
            outs.append(dict(zip(self._outputs, self.session.run(self._outputs, {"images": x}))))
        if not outs:
            size, k = self._preprocess.size, len(self.defect_types)
            empty = Scores(np.zeros(0), np.zeros((0, size, size), np.float32), np.zeros((0, k)), np.zeros((0, size, size), np.uint8),
                           np.zeros((0, 0)), np.zeros((0, size, size), np.uint8))
            return decide(empty, np.zeros(0), np.zeros(0), self.threshold, self.defect_types, self.abstain_below)
        cat = {name: np.concatenate([o[name] for o in outs]) for name in self._outputs}
        scores = Scores(cat["score"], cat["anomaly_map"], cat["type_probs"], cat["pixel_types"], cat["embedding"], cat["pixel_type_prob"])
        return decide(scores, cat["u"], cat["gamma"], self.threshold, self.defect_types, self.abstain_below)
