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

from uniadc_core.data.preprocess import merge_tiles
from uniadc_core.decision import Scores
from uniadc_core.model.discriminator import Discriminator


@torch.no_grad()
def score_images(model: Discriminator, images: list[np.ndarray], batch_size: int = 32, progress: bool = False,
                 preprocessed: bool = False) -> Scores:
    """Score (H, W, 3) uint8 images of any size, preprocessed here as the model was trained (``preprocessed``: they
    already went through ``model.preprocess.image`` once, or ``native`` for a tile model; its intensity rule is not
    applied twice)."""
    pre = model.preprocess
    if pre.tiled:
        return _score_tiled(model, images, batch_size, progress, preprocessed)
    if not images:
        return _empty(model)
    starts = range(0, len(images), batch_size)
    parts = [_predict(model, [im if preprocessed else pre.image(im) for im in images[i:i + batch_size]])
             for i in tqdm(starts, desc="score", unit="batch", disable=not progress, leave=False)]
    return Scores(*[torch.cat(cols).numpy() for cols in zip(*parts)])


def _predict(model: Discriminator, inputs: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Model outputs (score, map, type probs, pixel types, embedding, pixel type probability) of one batch of (S, S, 3)
    inputs, on the CPU."""
    p = model.predict(model.preprocess.batch(inputs).to(model.mean.device))
    return tuple(t.cpu() for t in (p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding, p.pixel_type_prob))


def _empty(model: Discriminator) -> Scores:
    k, e, s = model.config.num_types, model.backbone.embed_channels, model.preprocess.size
    return Scores(np.zeros(0), np.zeros((0, s, s), np.float32), np.zeros((0, k)), np.zeros((0, s, s), np.uint8), np.zeros((0, e)),
                  np.zeros((0, s, s), np.uint8))


class _TileOutputs(NamedTuple):
    """One native image's per-tile model outputs (T tiles)."""

    shape: tuple[int, int]  # (H, W) native
    windows: list[tuple[int, int]]
    score: np.ndarray  # (T,)
    maps: np.ndarray  # (T, S, S)
    probs: np.ndarray  # (T, K)
    types: np.ndarray  # (T, S, S) uint8
    embedding: np.ndarray  # (T, E)
    type_prob: np.ndarray  # (T, S, S) uint8


def _tile_outputs(model: Discriminator, images: list[np.ndarray], batch_size: int, preprocessed: bool, bar: tqdm | None = None):
    """``_TileOutputs`` image after image: whole images, about ``batch_size`` tiles at a time, so memory stays bounded."""
    pre, done = model.preprocess, 0
    while done < len(images):
        chunk, tiles = [], []
        while done < len(images) and (not chunk or len(tiles) < batch_size):
            native = images[done] if preprocessed else pre.native(images[done])
            t, windows = pre.tiles(native)
            chunk.append((native.shape[:2], windows, len(tiles)))
            tiles += t
            done += 1
        parts = [_predict(model, tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]
        score, amap, probs, types, emb, type_prob = [torch.cat(cols).numpy() for cols in zip(*parts)]
        for shape, windows, start in chunk:
            sel = slice(start, start + len(windows))
            yield _TileOutputs(shape, windows, score[sel], amap[sel], probs[sel], types[sel], emb[sel], type_prob[sel])
        if bar is not None:
            bar.update(len(chunk))


def _score_tiled(model: Discriminator, images: list[np.ndarray], batch_size: int, progress: bool, preprocessed: bool) -> Scores:
    """Score native-resolution images tile by tile (``preprocessed``: already ``model.preprocess.native``)."""
    if not images:
        return _empty(model)
    pre = model.preprocess
    out: list[list] = [[], [], [], [], [], []]
    with tqdm(total=len(images), desc="score", unit="img", disable=not progress, leave=False) as bar:
        for o in _tile_outputs(model, images, batch_size, preprocessed, bar):
            best = int(o.score.argmax())
            out[0].append(o.score[best])
            out[1].append(pre.to_view(merge_tiles(o.maps, o.windows, o.shape)))
            out[2].append(o.probs[best])
            out[3].append(pre.labels_view(o.types, o.windows, o.shape, o.maps))
            out[4].append(o.embedding.mean(0))
            out[5].append(pre.labels_view(o.type_prob, o.windows, o.shape, o.maps))
    return Scores(np.array(out[0]), np.stack(out[1]), np.stack(out[2]), np.stack(out[3]), np.stack(out[4]), np.stack(out[5]))


def concat_scores(parts: list[Scores]) -> Scores:
    """One ``Scores`` of several, image after image (at least one part)."""
    return Scores(*[np.concatenate(cols) for cols in zip(*parts)])


def score_paths(model: Discriminator, paths: list[str | Path], batch_size: int = 32, progress: bool = False) -> Scores:
    return score_images(model, [model.preprocess.decode_image(p) for p in paths], batch_size, progress)
