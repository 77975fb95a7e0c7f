"""Batched inference: the discriminator alone, and the detector (discriminator + CADA)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from uniadc_core.cada import Cada, align, load_cada
from uniadc_core.io import load_image, resize
from uniadc_core.model import Discriminator, images_to_tensor, load_model


class Scores(NamedTuple):
    """Discriminator outputs for N images, as numpy."""

    score: np.ndarray  # (N,) raw image score
    anomaly_map: np.ndarray  # (N, H, W) float32
    type_probs: np.ndarray  # (N, K)
    pixel_types: np.ndarray  # (N, H, W) uint8 defect index 1..K
    embedding: np.ndarray  # (N, E)


class Detection(NamedTuple):
    """What the detector says about N images, with no class label given."""

    score: np.ndarray  # (N,) CADA-aligned image score; > threshold means anomalous
    raw_score: np.ndarray  # (N,)
    u: np.ndarray  # (N,) predicted normal-score mean
    gamma: np.ndarray  # (N,) predicted normal-score max
    anomaly_map: np.ndarray  # (N, H, W) aligned like the score
    defect_type: list[str]  # (N,) most likely defect type
    defect_prob: np.ndarray  # (N,) its probability
    is_anomaly: np.ndarray  # (N,) bool


@torch.no_grad()
def score_arrays(model: Discriminator, images: list[np.ndarray], batch_size: int = 32, progress: bool = False) -> Scores:
    """Score (H, W, 3) uint8 images (resized to the model's size)."""
    size, device = model.config.image_size, model.mean.device
    parts: list = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="score", unit="batch", disable=not progress, leave=False):
        batch = images_to_tensor([resize(im, size, policy=model.config.resize) for im in images[i:i + batch_size]])
        p = model.predict(batch.to(device))
        parts.append(tuple(t.cpu() for t in (p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding)))
    if not parts:
        k, e = model.config.num_types, model.backbone.embed_channels
        return Scores(np.zeros(0), np.zeros((0, size, size), np.float32), np.zeros((0, k)), np.zeros((0, size, size), np.uint8), np.zeros((0, e)))
    return Scores(*[torch.cat(cols).numpy() for cols in zip(*parts)])


def score_paths(model: Discriminator, paths: list[str | Path], batch_size: int = 32, progress: bool = False) -> Scores:
    return score_arrays(model, [load_image(p) for p in paths], batch_size, progress)


class Detector:
    """The discriminator and CADA together: scores any image with no class label."""

    def __init__(self, model: Discriminator, cada: Cada, threshold: float = 1.0):
        self.model, self.cada, self.threshold = model, cada, threshold

    @classmethod
    def load(cls, model_dir: str | Path, cada_dir: str | Path, threshold: float = 1.0) -> "Detector":
        return cls(load_model(model_dir), load_cada(cada_dir), threshold)

    def detect(self, images: list[np.ndarray], batch_size: int = 32, progress: bool = False) -> Detection:
        s = score_arrays(self.model, images, batch_size, progress)
        return self.from_scores(s)

    def from_scores(self, s: Scores) -> Detection:
        u, gamma = self.cada.predict_stats(s.embedding)
        aligned = align(s.score, u, gamma)
        types = self.model.config.defect_types
        best = s.type_probs.argmax(1) if len(s.score) else np.zeros(0, int)
        return Detection(
            score=aligned,
            raw_score=s.score,
            u=u,
            gamma=gamma,
            anomaly_map=align(s.anomaly_map, u[:, None, None], gamma[:, None, None]).astype(np.float32),
            defect_type=[types[i] for i in best],
            defect_prob=s.type_probs[np.arange(len(best)), best] if len(best) else np.zeros(0),
            is_anomaly=aligned > self.threshold,
        )
