"""The discriminator over many images: batched, preprocessed by the model's own ``preprocess``.

    s = score_images(model, images)      # Scores: raw image score, anomaly map, type probabilities, ...

A model trained on native-resolution tiles (``resize: tile``) scores every tile of an image and merges
them back (``_score_tiled``): the map is the mean of the overlapping tiles' maps, in the whole-image
view; the image score is the highest tile score, the type distribution that tile's, the embedding
(CADA's input) the mean over the tiles. With whole-image context (``ModelConfig.context``, from
``train.tile_context``) each image is also scored whole, squeezed into one input as ``pad`` does, and
that map is mixed into the merged one at native resolution (``context_map``, both standardised on
held-out normal pixels): tiles see fine detail, the whole view sees defects larger than a tile. The
image score is then the mixed map's maximum after ``SCORE_POOL`` averaging.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from uniadc_core.data.preprocess import merge_tiles
from uniadc_core.model.discriminator import SCORE_POOL, Discriminator


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
    """Model outputs (score, map, type probs, pixel types, embedding) of one batch of (S, S, 3) inputs, on the CPU."""
    p = model.predict(model.preprocess.batch(inputs).to(model.mean.device))
    return tuple(t.cpu() for t in (p.score, p.anomaly_map, p.type_probs, p.pixel_types.to(torch.uint8), p.embedding))


def _empty(model: Discriminator) -> Scores:
    k, e, s = model.config.num_types, model.backbone.embed_channels, model.preprocess.size
    return Scores(np.zeros(0), np.zeros((0, s, s), np.float32), np.zeros((0, k)), np.zeros((0, s, s), np.uint8), np.zeros((0, e)))


class _TileOutputs(NamedTuple):
    """One native image's per-tile model outputs (T tiles) and, when asked, its whole-image view's map."""

    shape: tuple[int, int]  # (H, W) native
    windows: list[tuple[int, int]]
    score: np.ndarray  # (T,)
    maps: np.ndarray  # (T, S, S)
    probs: np.ndarray  # (T, K)
    types: np.ndarray  # (T, S, S) uint8
    embedding: np.ndarray  # (T, E)
    view_map: np.ndarray | None  # (S, S): the whole image squeezed into one input (``Preprocess.view``)


def _tile_outputs(model: Discriminator, images: list[np.ndarray], batch_size: int, preprocessed: bool, with_view: bool,
                  bar: tqdm | None = None):
    """``_TileOutputs`` image after image: whole images, about ``batch_size`` tiles at a time, so memory stays bounded."""
    pre, done = model.preprocess, 0
    while done < len(images):
        chunk, tiles, views = [], [], []
        while done < len(images) and (not chunk or len(tiles) < batch_size):
            native = images[done] if preprocessed else pre.native(images[done])
            t, windows = pre.tiles(native)
            chunk.append((native.shape[:2], windows, len(tiles)))
            tiles += t
            if with_view:
                views.append(pre.view(native))
            done += 1
        parts = [_predict(model, tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]
        score, amap, probs, types, emb = [torch.cat(cols).numpy() for cols in zip(*parts)]
        view_maps = (np.concatenate([_predict(model, views[i:i + batch_size])[1].numpy() for i in range(0, len(views), batch_size)])
                     if with_view else [None] * len(chunk))
        for (shape, windows, start), view_map in zip(chunk, view_maps, strict=True):
            sel = slice(start, start + len(windows))
            yield _TileOutputs(shape, windows, score[sel], amap[sel], probs[sel], types[sel], emb[sel], view_map)
        if bar is not None:
            bar.update(len(chunk))


def _score_tiled(model: Discriminator, images: list[np.ndarray], batch_size: int, progress: bool, preprocessed: bool) -> Scores:
    """Score native-resolution images tile by tile (``preprocessed``: already ``model.preprocess.native``)."""
    if not images:
        return _empty(model)
    pre, context = model.preprocess, model.config.context
    out: list[list] = [[], [], [], [], []]
    with tqdm(total=len(images), desc="score", unit="img", disable=not progress, leave=False) as bar:
        for o in _tile_outputs(model, images, batch_size, preprocessed, bool(context), bar):
            best = int(o.score.argmax())
            merged = merge_tiles(o.maps, o.windows, o.shape)
            if context:
                merged = context_map(merged, pre.from_view(o.view_map, o.shape), context)
                out[0].append(pooled_max(merged))
            else:
                out[0].append(o.score[best])
            out[1].append(pre.to_view(merged))
            out[2].append(o.probs[best])
            out[3].append(pre.labels_view(o.types, o.windows, o.shape, o.maps))
            out[4].append(o.embedding.mean(0))
    return Scores(np.array(out[0]), np.stack(out[1]), np.stack(out[2]), np.stack(out[3]), np.stack(out[4]))


# ---------------------------------------------------------------------------- the whole-image context of tile models


def context_map(merged: np.ndarray, view: np.ndarray, context: dict) -> np.ndarray:
    """The (H, W) anomaly map of a tile model with whole-image context: the merged tile map and the whole-image view's
    map (brought to native resolution), each standardised on held-out normal pixels, mixed by ``context['weight']``
    (the view's share)."""
    c = context["weight"]
    mu_t, sd_t, mu_v, sd_v = context["stats"]
    return ((1 - c) * (merged - mu_t) / sd_t + c * (view - mu_v) / sd_v).astype(np.float32)


def pooled_max(native_map: np.ndarray) -> float:
    """The image score of a native map: its maximum after averaging over ``SCORE_POOL`` windows (a lone pixel is noise)."""
    t = torch.from_numpy(native_map)[None, None]
    return float(F.avg_pool2d(t, SCORE_POOL, stride=1, padding=SCORE_POOL // 2, count_include_pad=False).max())


def attach_context(model: Discriminator, images: list[np.ndarray], weight: float, batch_size: int = 32) -> None:
    """Give a tile model whole-image context (``train.tile_context``): each image is also scored whole, squeezed
    into one input, and that map is mixed into the merged tile map (``context_map``). The two maps' means and
    spreads are measured here over the pixels of ``images`` (held-out normals, native (H, W, 3) uint8, before
    ``preprocess.native``) and recorded in the model config with the weight; weight 0 removes the context."""
    model.config.context = {}
    if weight <= 0 or not images:
        return
    sums = np.zeros((2, 3))  # per map: count, sum, sum of squares (float64: a few million pixels)
    for o in _tile_outputs(model, images, batch_size, False, True):
        for row, m in enumerate((merge_tiles(o.maps, o.windows, o.shape), model.preprocess.from_view(o.view_map, o.shape))):
            m = m.astype(np.float64)
            sums[row] += (m.size, m.sum(), (m * m).sum())
    mean = sums[:, 1] / sums[:, 0]
    std = np.sqrt(np.maximum(sums[:, 2] / sums[:, 0] - mean**2, 0.0)).clip(min=1e-6)
    model.config.context = {"weight": float(weight), "stats": [float(mean[0]), float(std[0]), float(mean[1]), float(std[1])]}


def concat_scores(parts: list[Scores]) -> Scores:
    """One ``Scores`` of several, image after image (at least one part)."""
    return Scores(*[np.concatenate(cols) for cols in zip(*parts)])


def score_paths(model: Discriminator, paths: list[str | Path], batch_size: int = 32, progress: bool = False) -> Scores:
    return score_images(model, [model.preprocess.decode_image(p) for p in paths], batch_size, progress)
