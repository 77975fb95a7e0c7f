"""The discriminator over many images: batched, preprocessed by the model's own ``preprocess``.

    s = score_images(model, images)      # Scores: raw image score, anomaly map, type probabilities, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from uniadc_core.model.discriminator import Discriminator


class Scores(NamedTuple):
    """Discriminator outputs for N images, as numpy, at the model's input size S."""

    score: np.ndarray  # (N,) raw image score
    anomaly_map: np.ndarray  # (N, S, S) float32
    type_probs: np.ndarray  # (N, K)
    pixel_types: np.ndarray  # (N, S, S) uint8 defect index 1..K
    embedding: np.ndarray  # (N, E)


@torch.no_grad()
def score_images(model: Discriminator, images: list[np.ndarray], batch_size: int = 32, progress: bool = False,
                 preprocessed: bool = False) -> Scores:
    """Score (H, W, 3) uint8 images of any size, preprocessed here as the model was trained (``preprocessed``: they
    already went through ``model.preprocess.image`` once; its intensity rule is not applied twice)."""
    pre, device = model.preprocess, model.mean.device
    parts: list = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="score", unit="batch", disable=not progress, leave=False):
        batch = pre.batch([im if preprocessed else pre.image(im) for im in images[i:i + batch_size]])
        p = model.predict(batch.to(device))
        parts.append(tuple(t.cpu() for t in (p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding)))
    if not parts:
        k, e, s = model.config.num_types, model.backbone.embed_channels, pre.size
        return Scores(np.zeros(0), np.zeros((0, s, s), np.float32), np.zeros((0, k)), np.zeros((0, s, s), np.uint8), np.zeros((0, e)))
    return Scores(*[torch.cat(cols).numpy() for cols in zip(*parts)])


def score_paths(model: Discriminator, paths: list[str | Path], batch_size: int = 32, progress: bool = False) -> Scores:
    return score_images(model, [model.preprocess.decode_image(p) for p in paths], batch_size, progress)
