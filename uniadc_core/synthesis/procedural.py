"""The ``procedural`` synthesizer: training-free anomalies on the CPU, no weights needed.

Zero-shot: a mask from the defect type's shape prior, an appearance change blended softly into a
normal image: a change of the image itself (darken, lighten, its own texture moved, blur, noise,
colour).
Few-shot: the real defect region of an anomaly shot, cut by its mask, geometrically and
photometrically augmented, and pasted with a soft edge onto the foreground of a normal image.

A gray normal image (three equal channels: a monochrome camera, as MTD, KolektorSDD and DeepPCB)
gets a gray defect: the change is averaged over the channels before blending, so no sample carries a
colour that no real defect of that line can have (a shortcut the discriminator would learn instead
of the defect).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from uniadc_core.config import SynthesizeConfig
from uniadc_core.data.vocabulary import DefectPrior, Vocabulary
from uniadc_core.synthesis.masks import estimate_foreground
from uniadc_core.synthesis.plan import SampleSpec, is_gray, load_foreground, load_sources, shard_row
from uniadc_core.synthesis.priors import sample_mask


class Synthetic(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    quality: float  # mean absolute change inside the mask, 0..1


def _soft(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.5, 1.2)) * 1.3, 0, 1)  # (H, W)


SOFT_MARGIN = 12  # px around a mask where its soft edge can reach: twice the Gaussian's reach (sigma <= 1.2, truncate 4)


def _window(mask: np.ndarray) -> tuple[slice, slice]:
    """The mask's bounding box grown by SOFT_MARGIN, clipped to the image: outside it nothing changes, and the
    soft edge computed inside it equals the one computed over the whole image."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(ys) == 0:
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    h, w = mask.shape
    return (slice(max(0, ys[0] - SOFT_MARGIN), min(h, ys[-1] + SOFT_MARGIN + 1)),
            slice(max(0, xs[0] - SOFT_MARGIN), min(w, xs[-1] + SOFT_MARGIN + 1)))


def _blend(normal: np.ndarray, changed: np.ndarray, mask: np.ndarray, alpha: np.ndarray, win: tuple[slice, slice]) -> Synthetic:
    """``normal`` with ``changed`` shown through ``alpha`` (both given over ``win`` only), and its quality;
    a gray ``normal`` gets the channel mean of ``changed`` (a gray defect)."""
    if is_gray(normal):
        changed = changed.mean(-1, keepdims=True)
    base = normal[win].astype(np.float32)
    region = np.round(np.clip(base * (1 - alpha) + changed * alpha, 0, 255)).astype(np.uint8)
    out8 = normal.copy()
    out8[win] = region
    return Synthetic(out8, mask, _quality(region, base, mask[win]))


def _quality(out8: np.ndarray, base: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change inside the mask, 0..1 (0 for an empty mask)."""
    diff = np.abs(out8.astype(np.float32) - base.astype(np.float32)).mean(-1)
    return float(diff[mask].mean() / 255.0) if mask.any() else 0.0


def _moved(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``src`` rolled, turned and contrast-shifted: a texture that does not line up with the image under it."""
    h, w = src.shape[:2]
    dy, dx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    src = np.roll(src, (int(dy), int(dx)), axis=(0, 1))
    src = np.rot90(src, int(rng.integers(1, 4))) if h == w else src[::-1]
    gain = rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.3, 1.8)])
    mean = src.mean(axis=(0, 1), keepdims=True)
    return np.clip((src - mean) * gain + mean * rng.uniform(0.7, 1.3), 0, 255)


def _appearance(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The changed image (float32, H x W x 3) the mask will reveal."""
    if kind == "darken":
        return img * rng.uniform(0.2, 0.6)
    if kind == "lighten":
        f = rng.uniform(0.4, 0.8)
        return img + (255.0 - img) * f
    if kind == "colour":
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        return img * 0.3 + colour[None, None] * 0.7
    if kind == "texture":  # texture from elsewhere in the same image, flipped/rotated, contrast-shifted
        return _moved(img, rng)
    if kind == "blur":
        blurred = ndimage.gaussian_filter(img, (rng.uniform(2, 4), rng.uniform(2, 4), 0))
        return blurred * rng.uniform(0.75, 1.25)
    if kind == "noise":
        return img + rng.normal(0, rng.uniform(25, 50), img.shape).astype(np.float32)
    msg = f"unknown appearance '{kind}'"
    raise ValueError(msg)


def _foreground(normal: np.ndarray, foreground: str | np.ndarray) -> np.ndarray:
    """A foreground estimator's name, or its estimate for ``normal`` already made (bool H x W), as the estimate."""
    return estimate_foreground(normal, foreground) if isinstance(foreground, str) else foreground


def synthesize_zero_shot(normal: np.ndarray, prior: DefectPrior, rng: np.random.Generator,
                         foreground: str | np.ndarray = "border") -> Synthetic:
    """Paint a defect drawn from ``prior`` into a normal image (H, W, 3) uint8 (``foreground``: see ``_foreground``)."""
    img = normal.astype(np.float32)
    mask = sample_mask(prior, rng, img.shape[:2], _foreground(normal, foreground))
    changed = _appearance(str(rng.choice(prior.appearances)), img, rng)
    win = _window(mask)  # blended only around the mask: the same pixels as over the whole image
    alpha = (_soft(mask[win], rng) * rng.uniform(0.75, 1.0))[..., None]
    return _blend(normal, changed[win], mask, alpha, win)


def _augment_patch(patch: np.ndarray, pmask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(0, 4))
    patch, pmask = np.rot90(patch, k), np.rot90(pmask, k)
    if rng.random() < 0.5:
        patch, pmask = patch[:, ::-1], pmask[:, ::-1]
    scale = rng.uniform(0.75, 1.3)
    patch = ndimage.zoom(patch, (scale, scale, 1), order=1)
    pmask = ndimage.zoom(pmask.astype(np.float32), (scale, scale), order=1) >= 0.5
    gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)  # colour jitter per channel
    return np.clip(patch * gain[None, None] + rng.uniform(-12, 12), 0, 255), pmask


def synthesize_cut_paste(
    normal: np.ndarray, shot: np.ndarray, shot_mask: np.ndarray, rng: np.random.Generator, foreground: str | np.ndarray = "border"
) -> Synthetic:
    """Paste the augmented defect region of a real anomaly ``shot`` onto ``normal`` (same size)."""
    h, w = normal.shape[:2]
    ys, xs = np.nonzero(shot_mask)
    if len(ys) == 0:
        msg = "anomaly shot has an empty mask; its ground-truth mask must mark the defect"
        raise ValueError(msg)
    pad = 3
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    patch, pmask = _augment_patch(shot[y0:y1, x0:x1].astype(np.float32), shot_mask[y0:y1, x0:x1], rng)
    ph, pw = min(pmask.shape[0], h), min(pmask.shape[1], w)
    patch, pmask = patch[:ph, :pw], pmask[:ph, :pw]
    fg = _foreground(normal, foreground)
    for _ in range(20):  # place it where most of it lands on the foreground
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if fg[ty:ty + ph, tx:tx + pw][pmask].mean() > 0.9:
            break
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = pmask
    mask &= fg
    layer = normal.astype(np.float32)
    layer[ty:ty + ph, tx:tx + pw] = patch
    win = _window(mask)
    alpha = _soft(mask[win], rng)[..., None]
    return _blend(normal, layer[win], mask, alpha, win)


def finish(normal: np.ndarray, out: np.ndarray, mask: np.ndarray) -> Synthetic:
    """A generated image (float, H x W x 3) as a sample of ``normal``: gray where ``normal`` is."""
    if is_gray(normal):
        out = np.repeat(out.mean(-1, keepdims=True), 3, axis=-1)
    out8 = np.round(np.clip(out, 0, 255)).astype(np.uint8)
    return Synthetic(out8, mask, _quality(out8, normal, mask))


def make_sample(spec: SampleSpec, vocab: Vocabulary, image_size: int, foreground: str = "border") -> dict:
    """One shard row: zero-shot from the type's prior, or cut-paste of the spec's real anomaly shot."""
    rng = np.random.default_rng(spec.seed)
    normal, shot, shot_mask = load_sources(spec, vocab, image_size)
    prior = vocab.prior(spec.object_class, spec.defect_type)
    fg = load_foreground(spec, vocab, image_size, normal, foreground)
    if shot is not None:
        out = synthesize_cut_paste(normal, shot, shot_mask, rng, fg)
        settings = {"shot": Path(spec.shot_path).name, "foreground": foreground}
    else:
        out = synthesize_zero_shot(normal, prior, rng, fg)
        settings = {"shape": prior.shape, "size": prior.size, "foreground": foreground}
    return shard_row(spec, out.image, out.mask, out.quality, settings)


def make_rows(specs: list[SampleSpec], vocab: Vocabulary, cfg: SynthesizeConfig, progress: bool = False, label: str = "") -> list[dict]:
    """The shard rows of ``specs``, one at a time (each is a few milliseconds)."""
    specs = tqdm(specs, desc=label or "procedural", unit="sample", leave=False, disable=not progress)
    return [make_sample(s, vocab, cfg.image_size, cfg.foreground) for s in specs]
