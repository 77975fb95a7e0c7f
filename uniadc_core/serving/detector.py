"""The detector: discriminator + CADA + the decision, loaded from one models folder.

    detector = Detector.load("data/models")         # discriminator/ and cada/ inside
    d = detector.detect(images)                      # Decision: aligned score, is_anomaly, defect type, ...

``decide`` is the one decision function: evaluation calls it for each normalisation variant and
prediction (``uniadc predict``, the MLflow pyfunc) calls it through ``Detector.detect``, so what
is evaluated is what is served. The threshold is read from the models folder (``cada/config.json``,
written by fit_cada), never from the params of the process that loads it; a line sets its own with
``detector.with_threshold(t)`` or ``with_threshold(false_alarm_rate=0.01)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from uniadc_core.cada.calibration import threshold_for_rate
from uniadc_core.cada.regressor import Cada, align, load_cada
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.model.discriminator import Discriminator, load_model
from uniadc_core.model.scoring import Scores, score_images


class Decision(NamedTuple):
    """What the detector says about N images, with no class label given."""

    score: np.ndarray  # (N,) aligned image score; > threshold means anomalous
    raw_score: np.ndarray  # (N,)
    u: np.ndarray  # (N,) normal-score mean used for the alignment
    gamma: np.ndarray  # (N,) normal-score max used for the alignment
    anomaly_map: np.ndarray  # (N, S, S) aligned like the score
    is_anomaly: np.ndarray  # (N,) bool
    label: np.ndarray  # (N,) int: 0 normal, else the defect index (1..K) of the most likely type
    defect_type: list[str]  # (N,) most likely defect type (whether or not the image is anomalous)
    defect_prob: np.ndarray  # (N,) its probability
    pixel_labels: np.ndarray  # (N, S, S) defect index where the aligned map exceeds the threshold, else 0


def decide(scores: Scores, u: np.ndarray, gamma: np.ndarray, threshold: float, defect_types: list[str]) -> Decision:
    """Align raw scores and maps with (u, gamma) per image, then threshold them and name the defect type."""
    aligned = align(scores.score, u, gamma)
    amap = align(scores.anomaly_map, u[:, None, None], gamma[:, None, None])
    n = len(scores.score)
    best = scores.type_probs.argmax(1) if n else np.zeros(0, int)
    is_anomaly = aligned > threshold
    return Decision(
        score=aligned,
        raw_score=scores.score,
        u=u,
        gamma=gamma,
        anomaly_map=amap,
        is_anomaly=is_anomaly,
        label=np.where(is_anomaly, best + 1, 0),
        defect_type=[defect_types[i] for i in best],
        defect_prob=scores.type_probs[np.arange(n), best] if n else np.zeros(0),
        pixel_labels=np.where(amap > threshold, scores.pixel_types, 0).astype(np.uint8),
    )


MODEL_PARTS = ("discriminator", "cada")


def find_models_dir(path: str | Path) -> Path:
    """The folder holding ``discriminator/`` and ``cada/``: ``path`` itself or its ``artifacts/`` (an MLflow model)."""
    root = Path(path)
    for candidate in (root, root / "artifacts"):
        if all((candidate / part).is_dir() for part in MODEL_PARTS):
            return candidate
    msg = f"{root}: not a models folder (expected discriminator/ and cada/ inside, e.g. data/models), nor models:/NAME@ALIAS"
    raise FileNotFoundError(msg)


class Detector:
    """The discriminator and CADA together: scores any image with no class label."""

    def __init__(self, model: Discriminator, cada: Cada, threshold: float | None = None):
        """``threshold``: the line's own decision threshold (aligned-score units); None: the one saved with the model."""
        self.model, self.cada, self.override = model, cada, threshold

    @classmethod
    def load(cls, models_dir: str | Path) -> Detector:
        root = find_models_dir(models_dir)
        return cls(load_model(root / "discriminator"), load_cada(root / "cada"))

    def with_threshold(self, threshold: float | None = None, false_alarm_rate: float | None = None) -> Detector:
        """This detector deciding at ``threshold``, or at the threshold whose expected false-alarm rate on new normals
        is ``false_alarm_rate`` (from the held-out normal scores saved with the model); neither: the saved one."""
        if threshold is not None and false_alarm_rate is not None:
            raise ValueError("give a threshold or a false-alarm rate, not both")
        if false_alarm_rate is not None:
            threshold = threshold_for_rate(self.cada.config.calibration_scores, false_alarm_rate, self.cada.config.calibration_scope)
        return Detector(self.model, self.cada, threshold)

    @property
    def threshold(self) -> float:
        return self.cada.config.threshold if self.override is None else float(self.override)

    @property
    def preprocess(self) -> Preprocess:
        return self.model.preprocess

    @property
    def defect_types(self) -> list[str]:
        return self.model.config.defect_types

    def decide(self, scores: Scores) -> Decision:
        return decide(scores, *self.cada.predict_stats(scores.embedding), self.threshold, self.defect_types)

    def detect(self, images: list[np.ndarray], batch_size: int = 32, progress: bool = False) -> Decision:
        return self.decide(score_images(self.model, images, batch_size, progress))
