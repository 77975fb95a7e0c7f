"""How an image becomes a model input: one square size, one resize policy, one normalisation.

Every stage that turns a file into pixels goes through a ``Preprocess``: ingest-side synthesis at
``synthesize.image_size``, training, CADA fitting, evaluation, prediction and overlays at the
model's size. A trained model rebuilds its own from its saved config (``Discriminator.preprocess``),
so what it was trained on and what it is fed cannot drift apart.

    pre = Preprocess(size=256, policy="pad")
    x = pre.batch([pre.load_image(p) for p in paths])   # (B, 3, 256, 256) uint8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniadc_core.decoding import DEFAULT, DecodeOptions
from uniadc_core.io import load_image, load_mask, resize

POLICIES = ("stretch", "pad")


@dataclass(frozen=True)
class Preprocess:
    size: int  # square side of the model input
    policy: str = "stretch"  # stretch: each side scaled on its own | pad: pad the short side first (aspect kept)
    mean: tuple[float, ...] | None = None  # per channel on 0..1 pixels; None: not known yet (training computes it)
    std: tuple[float, ...] | None = None
    decode: DecodeOptions = DEFAULT  # how a file becomes pixels: orientation, bit depth, pixel limit (ingest.bit_depth, max_pixels)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            msg = f"unknown resize policy '{self.policy}'; valid: {', '.join(POLICIES)} (ingest.resize)"
            raise ValueError(msg)

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8."""
        return resize(image, self.size, policy=self.policy)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool or uint8 defect indices -> (size, size), nearest neighbour (pad: zeros)."""
        return resize(mask, self.size, nearest=True, policy=self.policy)

    def load_image(self, path: str | Path) -> np.ndarray:
        return self.image(load_image(path, options=self.decode))

    def load_mask(self, path: str | Path) -> np.ndarray:
        return self.mask(load_mask(path, self.decode))

    @staticmethod
    def batch(images: list[np.ndarray]) -> torch.Tensor:
        """Preprocessed (S, S, 3) uint8 arrays -> (B, 3, S, S) uint8 tensor."""
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
