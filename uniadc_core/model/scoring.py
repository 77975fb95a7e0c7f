"""The discriminator over many images: batched, preprocessed by the model's own ``preprocess``.

    s = score_images(model, images)      # Scores: raw image score, anomaly map, type probabilities, ...

A model trained on native-resolution tiles (``resize: tile``) scores every tile of an image and merges
them back (``_score_tiled``): the map is the mean of the overlapping tiles' maps, in the whole-image
view; the image score is the highest tile score, the type distribution that tile's, the embedding
(CADA's input) the mean over the tiles.
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
    if pre.tiled:
        return _score_tiled(model, images, batch_size, progress, preprocessed)
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


def _predict_tiles(model: Discriminator, tiles: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Model outputs (score, map, type probs, pixel types, embedding) of (S, S, 3) tiles, as numpy columns."""
    pre, device = model.preprocess, model.mean.device
    parts = []
    for i in range(0, len(tiles), batch_size):
        p = model.predict(pre.batch(tiles[i:i + batch_size]).to(device))
        parts.append(tuple(t.cpu() for t in (p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding)))
    return [torch.cat(cols).numpy() for cols in zip(*parts)]


def _score_tiled(model: Discriminator, images: list[np.ndarray], batch_size: int, progress: bool, preprocessed: bool) -> Scores:
    """Score native-resolution images tile by tile (``preprocessed``: already ``model.preprocess.native``)."""
    pre = model.preprocess
    k, e, s = model.config.num_types, model.backbone.embed_channels, pre.size
    out: list[list] = [[], [], [], [], []]
    done = 0
    bar = tqdm(total=len(images), desc="score", unit="img", disable=not progress, leave=False)
    while done < len(images):  # whole images, about ``batch_size`` tiles at a time, so memory stays bounded
        chunk, tiles = [], []
        while done < len(images) and (not chunk or len(tiles) < batch_size):
            native = images[done] if preprocessed else pre.native(images[done])
            t, windows = pre.tiles(native)
            chunk.append((native.shape[:2], windows, len(tiles)))
            tiles += t
            done += 1
        score, amap, probs, types, emb = _predict_tiles(model, tiles, batch_size)
        for shape, windows, start in chunk:
            sel = slice(start, start + len(windows))
            best = start + int(score[sel].argmax())
            out[0].append(score[best])
            out[1].append(pre.merged_view(amap[sel], windows, shape))
            out[2].append(probs[best])
            out[3].append(pre.labels_view(types[sel], windows, shape, amap[sel]))
            out[4].append(emb[sel].mean(0))
        bar.update(len(chunk))
    bar.close()
    if not images:
        return Scores(np.zeros(0), np.zeros((0, s, s), np.float32), np.zeros((0, k)), np.zeros((0, s, s), np.uint8), np.zeros((0, e)))
    return Scores(np.array(out[0]), np.stack(out[1]), np.stack(out[2]), np.stack(out[3]), np.stack(out[4]))


def score_paths(model: Discriminator, paths: list[str | Path], batch_size: int = 32, progress: bool = False) -> Scores:
    return score_images(model, [model.preprocess.decode_image(p) for p in paths], batch_size, progress)
