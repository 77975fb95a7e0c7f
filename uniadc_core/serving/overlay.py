"""The one anomaly-map overlay, for ``uniadc predict --overlays`` and the report's overlay grid.

The image is the model's preprocessed input (``Detector.preprocess``), so the map lies on it
exactly under either resize policy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def heat_overlay(image: np.ndarray, amap: np.ndarray, threshold: float) -> np.ndarray:
    """(S, S, 3) uint8: the aligned anomaly map as a red layer over the image, full at twice the threshold."""
    if image.shape[:2] != amap.shape:
        msg = f"overlay: image {image.shape[:2]} and anomaly map {amap.shape} differ; pass the preprocessed image"
        raise ValueError(msg)
    base = image.astype(np.float32)
    heat = np.clip(amap / (2 * max(threshold, 1e-6)), 0, 1)[..., None]
    red = np.zeros_like(base)
    red[..., 0] = 255
    return (base * (1 - 0.6 * heat) + red * 0.6 * heat).astype(np.uint8)


def labelled_overlay(image: np.ndarray, amap: np.ndarray, threshold: float, label: str) -> Image.Image:
    """``heat_overlay`` with a label bar on top."""
    out = Image.fromarray(heat_overlay(image, amap, threshold))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 0, out.width, 12], fill=(0, 0, 0))
    draw.text((2, 0), label, fill=(255, 255, 255))
    return out
