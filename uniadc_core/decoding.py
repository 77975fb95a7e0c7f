"""One image decoder for every stage: ingest's checks, synthesis, training, evaluation and predict.

    image = load_image("line3/0001.png")                        # (H, W, 3) uint8, as a viewer shows it
    image = load_image(path, options=DecodeOptions(bit_depth="per_image", max_pixels=50_000_000))

The rules, the same wherever a file becomes pixels:

- **Orientation**: an EXIF orientation tag is applied, so the pixels are the image as a viewer shows
  it (which is what a mask is drawn on).
- **Bit depth**: 8-bit images are kept as they are. 16-bit and 32-bit integer images (PNG, TIFF)
  and float images are mapped to 8 bits, never clipped: ``full_scale`` (the default) divides by the
  largest value of the type (65535 for 16-bit, and for 32-bit integer images whose values fit in 16
  bits, the usual 16-bit data in a 32-bit container; else 2^32 - 1; floats are taken as 0..1, and a
  float image with values outside 0..1 uses its own range), so every image of a camera maps the same way;
  ``per_image`` stretches each image's own min..max to 0..255 (for cameras that use a few bits of
  16, at the price of a per-image gain). Pillow reads 16-bit RGB files as 8-bit RGB (the high byte),
  which is the full-scale mapping.
- **Modes**: palette, 1-bit, grayscale, CMYK and YCbCr become RGB; an alpha channel (LA, RGBA, PA) is
  dropped, keeping the colour under it.
- **Size**: an image of more than ``max_pixels`` pixels is rejected from its header, before it is
  decoded, naming the file (ingest lists it in the quarantine report under ``on_error: skip``).
  Pillow's own guard (about 179 million pixels) still applies above that, with the same error.
- A broken EXIF block leaves the image as stored, with a warning naming the file.

Masks go through the same reader (orientation, pixel limit) and keep their values: a palette mask
its palette indices, an RGB mask the brightest channel of each pixel (a coloured mask on black), a
16-bit mask its values when they fit in 8 bits (labels), else its full-scale 8-bit image in which no
nonzero value becomes 0 (label 1 beside label 300 stays a defect; 0/65535 becomes 0/255); a transparent
pixel of a mask with alpha is background; a palette of grays gives its gray levels. Which
values mark a defect is ``mask_values``:

- ``threshold``: values >= 128 (0/255 masks, and soft 8-bit edges whose values below 128 are noise);
- ``nonzero``: any value > 0 (0/1 masks, label-indexed masks whose values are defect indices,
  palette index masks);
- ``auto`` (the default): ``nonzero`` for a mask whose largest value is below 128 (0/1 and label
  masks), else ``threshold``.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

BIT_DEPTHS = ("full_scale", "per_image")
MASK_VALUES = ("auto", "threshold", "nonzero", "labels")  # labels: ingest's own label maps (values = defect indices; > 0 = defect)
MAX_PIXELS = 100_000_000  # 100 megapixels: far above any inspection camera's frame, far below what exhausts RAM


@dataclass(frozen=True)
class DecodeOptions:
    bit_depth: str = "full_scale"  # how images of more than 8 bits become 8-bit: full_scale | per_image
    max_pixels: int = MAX_PIXELS  # larger images are rejected before decoding
    mask_values: str = "auto"  # which mask values mark a defect: auto | threshold (>= 128) | nonzero (> 0)

    def __post_init__(self) -> None:
        if self.bit_depth not in BIT_DEPTHS:
            msg = f"unknown bit_depth '{self.bit_depth}'; valid: {', '.join(BIT_DEPTHS)} (ingest.bit_depth)"
            raise ValueError(msg)
        if self.mask_values not in MASK_VALUES:
            msg = f"unknown mask_values '{self.mask_values}'; valid: {', '.join(MASK_VALUES)} (ingest.mask_values)"
            raise ValueError(msg)
        if not isinstance(self.max_pixels, int) or self.max_pixels <= 0:
            msg = f"max_pixels must be a positive integer, got {self.max_pixels!r} (ingest.max_pixels)"
            raise ValueError(msg)

    def to_dict(self) -> dict:
        return {"bit_depth": self.bit_depth, "max_pixels": self.max_pixels, "mask_values": self.mask_values}

    @classmethod
    def from_dict(cls, d: dict | None) -> DecodeOptions:
        d = d or {}
        return cls(d.get("bit_depth", "full_scale"), int(d.get("max_pixels", MAX_PIXELS)), d.get("mask_values", "auto"))


DEFAULT = DecodeOptions()


class ImageTooLarge(ValueError):
    """An image over the pixel limit: rejected before it is decoded."""


def _to_8bit(arr: np.ndarray, bit_depth: str) -> np.ndarray:
    """A single-channel array of more than 8 bits -> uint8 by ``bit_depth`` (never clipped)."""
    x = arr.astype(np.float64)
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if bit_depth == "full_scale":
        if np.issubdtype(arr.dtype, np.floating):
            if lo >= 0.0 and hi <= 1.0:  # else outside 0..1: its own range
                lo, hi = 0.0, 1.0
        elif lo >= 0.0:  # else negative values (32-bit signed): its own range
            lo, hi = 0.0, 65535.0 if hi <= 65535 else float(np.iinfo(np.uint32).max)
    x = np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)


def _pixels(im: Image.Image, mode: str, bit_depth: str) -> np.ndarray:
    """The decoded image as uint8 (H, W, 3) for ``RGB`` or (H, W) for ``L``."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        gray = _to_8bit(np.asarray(im), bit_depth)
        return np.repeat(gray[..., None], 3, axis=2) if mode == "RGB" else gray
    if im.mode in ("LA", "RGBA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB") if mode == "RGB" else im.convert("LA").convert("L")  # alpha dropped
    return np.asarray(im.convert(mode))


def _mask_levels(im: Image.Image, bit_depth: str) -> np.ndarray:
    """A mask's values as uint8 (H, W): palette indices, the brightest colour channel, or gray levels."""
    if im.mode == "P":
        indices = np.asarray(im).astype(np.uint8)
        palette = np.asarray(im.getpalette() or [], np.int32).reshape(-1, 3)
        present = np.unique(indices)
        used = palette[present[present < len(palette)]]
        if len(used) and (used == used[:, :1]).all():  # a gray palette: its gray levels (index 0 may be white)
            return np.asarray(im.convert("L"))
        return indices  # coloured labels: the indices, not the colours they stand for
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # transparent pixels are background, whatever colour lies under them
        rgba = np.asarray(im.convert("RGBA"))
        return np.where(rgba[..., 3] > 0, rgba[..., :3].max(axis=2), 0).astype(np.uint8)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im)
        if not np.issubdtype(arr.dtype, np.floating) and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 255:
            return arr.astype(np.uint8)  # labels stored in 16 bits
        levels = _to_8bit(arr, bit_depth)
        if not np.issubdtype(arr.dtype, np.floating):  # a nonzero 16-bit value stays nonzero (a small label beside a large one)
            levels[(arr > 0) & (levels == 0)] = 1
        return levels
    if im.mode in ("RGB", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB")).max(axis=2)
    return np.asarray(im.convert("L"))


def defect_pixels(levels: np.ndarray, rule: str = "auto") -> np.ndarray:
    """(H, W) bool: which mask values mark a defect under ``rule`` (``auto`` resolved per mask; see above)."""
    if rule == "auto":
        rule = "nonzero" if levels.max(initial=0) < 128 else "threshold"
    return levels > 0 if rule in ("nonzero", "labels") else levels >= 128


def _oriented(im: Image.Image, source: str) -> Image.Image:
    """``im`` turned as its EXIF orientation says; a broken EXIF block (Pillow raises many kinds of error on
    one) leaves the pixels as stored, with a warning naming the file: the pixels themselves are fine."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: unreadable EXIF orientation (%s: %s); the image is used as stored", source, type(exc).__name__, exc)
        return im


def decode(data: bytes, source: str = "<bytes>", mode: str = "RGB", options: DecodeOptions = DEFAULT) -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3) for ``mode`` RGB, (H, W) for L, or a mask's values (H, W) for ``mask``,
    by the rules above.

    Every failure is a ``ValueError`` naming ``source`` and the fix (``ImageTooLarge`` for the pixel limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below is ours
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > options.max_pixels:
                    msg = (f"{source}: {w}x{h} = {w * h:,} pixels, over the limit of {options.max_pixels:,} "
                           f"(ingest.max_pixels); downscale the file or raise the limit")
                    raise ImageTooLarge(msg)
                im.load()  # a full decode: a truncated file fails here
                oriented = _oriented(im, source)
                if mode == "mask":
                    return _mask_levels(oriented, options.bit_depth)
                return _pixels(oriented, mode, options.bit_depth)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:
        msg = f"{source}: too many pixels for the decoder ({exc}); downscale the file"
        raise ImageTooLarge(msg) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, struct.error) as exc:  # bad data or bad EXIF
        msg = f"{source}: cannot be decoded as an image ({type(exc).__name__}: {exc}); replace or remove the file"
        raise ValueError(msg) from None


def load(path: str | Path, mode: str = "RGB", options: DecodeOptions = DEFAULT) -> np.ndarray:
    """``decode`` of a file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: image not found; check the manifest or re-run ingest"
        raise FileNotFoundError(msg)
    return decode(path.read_bytes(), str(path), mode, options)


def load_mask(path: str | Path, options: DecodeOptions = DEFAULT) -> np.ndarray:
    """(H, W) bool defect pixels of a mask file under ``options.mask_values``."""
    return defect_pixels(load(path, "mask", options), options.mask_values)
