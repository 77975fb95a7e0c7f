"""How an image becomes a model input: one square size, one resize policy, one intensity rule, one normalisation.

Every stage that turns a file into pixels goes through a ``Preprocess``: ingest-side synthesis at
``synthesize.image_size``, training, CADA fitting, evaluation, prediction and overlays at the
model's size. A trained model rebuilds its own from its saved config (``Discriminator.preprocess``),
so what it was trained on and what it is fed cannot drift apart.

    pre = Preprocess(size=256, policy="pad")
    x = pre.batch([pre.load_image(p) for p in paths])   # (B, 3, 256, 256) uint8

``intensity: per_image`` (``ingest.intensity``) maps each image, after resizing, to one mean and
spread (gray mean 128, standard deviation 48 over all its pixels and channels, clipped to 0..255):
for lines whose exposure or lighting drifts between images (MTD's tiles come in several exposures),
so brightness alone is not read as a defect. Synthetic samples pass through it again when read,
so a painted defect is normalised with its image as a real one is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from uniadc_core import decoding
from uniadc_core.decoding import DEFAULT, DecodeOptions
from uniadc_core.io import load_image, load_mask, resize

POLICIES = ("stretch", "pad")
INTENSITY = ("none", "per_image")
TARGET_MEAN, TARGET_STD = 128.0, 48.0  # per_image intensity: every image gets this mean and spread (8-bit levels)


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> the same image with mean TARGET_MEAN and standard deviation TARGET_STD (a flat image: all TARGET_MEAN)."""
    x = image.astype(np.float32)
    mean, std = float(x.mean()), float(x.std())
    scale = TARGET_STD / std if std >= 1e-3 else 0.0
    return np.clip(np.rint((x - mean) * scale + TARGET_MEAN), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Preprocess:
    size: int  # square side of the model input
    policy: str = "stretch"  # stretch: each side scaled on its own | pad: pad the short side first (aspect kept)
    mean: tuple[float, ...] | None = None  # per channel on 0..1 pixels; None: not known yet (training computes it)
    std: tuple[float, ...] | None = None
    decode: DecodeOptions = DEFAULT  # how a file becomes pixels: orientation, bit depth, pixel limit (ingest.bit_depth, max_pixels)
    intensity: str = "none"  # none | per_image: each image to one mean and spread (ingest.intensity)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            msg = f"unknown resize policy '{self.policy}'; valid: {', '.join(POLICIES)} (ingest.resize)"
            raise ValueError(msg)
        if self.intensity not in INTENSITY:
            msg = f"unknown intensity rule '{self.intensity}'; valid: {', '.join(INTENSITY)} (ingest.intensity)"
            raise ValueError(msg)

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8."""
        out = resize(image, self.size, policy=self.policy)
        return normalise_intensity(out) if self.intensity == "per_image" else out

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool or uint8 defect indices -> (size, size), nearest neighbour (pad: zeros)."""
        return resize(mask, self.size, nearest=True, policy=self.policy)

    def decode_image(self, path: str | Path) -> np.ndarray:
        """The file's pixels by this model's decoding rules, at their own size (``image`` makes them an input)."""
        return load_image(path, options=self.decode)

    def load_image(self, path: str | Path) -> np.ndarray:
        return self.image(self.decode_image(path))

    def load_mask(self, path: str | Path) -> np.ndarray:
        return self.mask(load_mask(path, self.decode))

    def load_labels(self, path: str | Path, index: int, rule: str | None = None) -> np.ndarray:
        """(size, size) uint8 defect index per pixel: ingest's label maps as they are (rule ``labels``, several
        types in one image), any other mask's defect pixels times ``index`` (the image's type). ``rule``: the
        manifest row's (``mask_rule``, how ingest read that mask), else this preprocessing's ``mask_values``."""
        options = self.decode if rule is None else replace(self.decode, mask_values=rule)
        if options.mask_values == "labels":
            return self.mask(decoding.load(path, "mask", options))
        return self.mask(load_mask(path, options)).astype(np.uint8) * np.uint8(index)

    @staticmethod
    def batch(images: list[np.ndarray]) -> torch.Tensor:
        """Preprocessed (S, S, 3) uint8 arrays -> (B, 3, S, S) uint8 tensor."""
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
