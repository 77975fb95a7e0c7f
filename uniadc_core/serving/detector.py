"""The detector: discriminator + CADA + the decision, loaded from one models folder.

    detector = Detector.load("data/models")         # discriminator/ and cada/ inside
    d = detector.detect(images)                      # Decision: aligned score, is_anomaly, defect type, ...

``decide`` (``uniadc_core.decision``) is the one decision function: evaluation calls it for each
normalisation variant and prediction (``uniadc predict``, the service, the MLflow pyfunc) calls it
through ``Detector.detect``, so what is evaluated is what is served. The threshold is read from the models folder (``cada/config.json``,
written by fit_cada), never from the params of the process that loads it; a line sets its own with
``detector.with_threshold(t)`` or ``with_threshold(false_alarm_rate=0.01)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniadc_core.cada.calibration import line_threshold
from uniadc_core.cada.regressor import Cada, load_cada
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decision import Decision, Scores, check_probability, decide
from uniadc_core.model.discriminator import Discriminator, load_model
from uniadc_core.model.scoring import score_images

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

    def __init__(self, model: Discriminator, cada: Cada, threshold: float | None = None, abstain_below: float = 0.0):
        """``threshold``: the line's own decision threshold (aligned-score units); None: the one saved with the model.
        ``abstain_below``: a type whose probability is lower is reported as "unknown"."""
        self.model, self.cada, self.override, self.abstain_below = model, cada, threshold, abstain_below

    @classmethod
    def load(cls, models_dir: str | Path) -> Detector:
        root = find_models_dir(models_dir)
        return cls(load_model(root / "discriminator"), load_cada(root / "cada"))

    def with_threshold(self, threshold: float | None = None, false_alarm_rate: float | None = None) -> Detector:
        """This detector deciding at ``threshold``, or at the threshold whose expected false-alarm rate on new normals
        is ``false_alarm_rate`` (from the held-out normal scores saved with the model); neither: the saved one."""
        config = self.cada.config
        return Detector(self.model, self.cada, line_threshold(threshold, false_alarm_rate, config.calibration_scores, config.calibration_scope),
                        self.abstain_below)

    def with_abstain(self, abstain_below: float) -> Detector:
        """This detector reporting a type whose probability is below ``abstain_below`` as "unknown"."""
        return Detector(self.model, self.cada, self.override, check_probability(abstain_below))

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
        return decide(scores, *self.cada.predict_stats(scores.embedding), self.threshold, self.defect_types, self.abstain_below)

    def detect(self, images: list[np.ndarray], batch_size: int = 32, progress: bool = False) -> Decision:
        return self.decide(score_images(self.model, images, batch_size, progress))
