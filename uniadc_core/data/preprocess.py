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

``policy: tile`` (``ingest.resize: tile``) keeps the native resolution: the model sees size x size
tiles of the image at its own pixel scale (an image smaller than a tile is padded by reflection),
laid out with a quarter overlap (``TILE_OVERLAP``). Training reads every tile of a real normal,
the tiles of an anomaly shot that hold defect pixels (a label map is padded as its image is, so a
mirrored defect stays a defect), and synthesis paints on one seeded tile; the intensity rule acts
once, on the whole native image, never on a tile by itself;
scoring runs every tile and merges the maps back (``merge_tiles``: the mean where tiles overlap),
then brings the merged map to the whole-image view ``image`` gives (aspect kept, as ``pad``), the
geometry of masks, metrics and overlays. Thin cracks keep their width in pixels instead of being
shrunk with the image.

    pre = Preprocess(size=256, policy="tile")
    native = pre.native(pre.decode_image(path))   # (H, W, 3) at its own size, intensity rule applied
    tiles, windows = pre.tiles(native)            # [(256, 256, 3)], [(y, x)] top-left corners
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uniadc_core import decoding
from uniadc_core.decoding import DEFAULT, DecodeOptions
from uniadc_core.io import check_square, load_image, load_mask, resize

if TYPE_CHECKING:
    import torch

POLICIES = ("stretch", "pad", "tile")
TILE_OVERLAP = 0.25  # policy tile: neighbouring tiles share a quarter of their side
INTENSITY = ("none", "per_image")
TARGET_MEAN, TARGET_STD = 128.0, 48.0  # per_image intensity: every image gets this mean and spread (8-bit levels)


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> the same image with mean TARGET_MEAN and standard deviation TARGET_STD (a flat image: all TARGET_MEAN)."""
    x = image.astype(np.float32)
    mean, std = float(x.mean()), float(x.std())
    scale = TARGET_STD / std if std >= 1e-3 else 0.0
    return np.clip(np.rint((x - mean) * scale + TARGET_MEAN), 0, 255).astype(np.uint8)


def tile_windows(height: int, width: int, size: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of size x size tiles covering a height x width image: along each side, the fewest
    evenly spaced tiles that overlap by at least ``overlap`` of their side, the first at 0 and the last ending at
    the edge (one tile along a side no longer than ``size``)."""
    stride = max(1, round(size * (1.0 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        count = -(-(n - size) // stride) + 1
        return [round(i * (n - size) / (count - 1)) for i in range(count)]

    return [(y, x) for y in starts(height) for x in starts(width)]


def pad_to_tile(arr: np.ndarray, size: int, reflect: bool = True) -> np.ndarray:
    """An (H, W[, C]) array padded at the bottom and right to at least size x size (images by reflection, masks with 0)."""
    h, w = arr.shape[:2]
    if h >= size and w >= size:
        return arr
    pads = [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pads, mode="reflect" if reflect and min(h, w) > 1 else "constant")


def merge_tiles(maps: np.ndarray, windows: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """(T, S, S) per-tile maps at the given top-left corners -> the (H, W) map of the image they were cut from:
    the mean of the tiles covering each pixel (padding beyond the image dropped)."""
    h, w = shape
    size = maps.shape[-1]
    ph, pw = max(h, size), max(w, size)
    total, count = np.zeros((ph, pw), np.float64), np.zeros((ph, pw), np.float64)
    for m, (y, x) in zip(maps, windows, strict=True):
        total[y:y + size, x:x + size] += m
        count[y:y + size, x:x + size] += 1
    return (total / np.maximum(count, 1))[:h, :w].astype(np.float32)


def _square_box(h: int, w: int) -> tuple[int, int, int]:
    """(side, top, left): the square an (h, w) image is padded to and where it sits in it, as ``resize(policy="pad")``
    puts it (the whole-image view of ``pad`` and ``tile``)."""
    side = check_square(h, w)
    return side, (side - h) // 2, (side - w) // 2


@dataclass(frozen=True)
class Preprocess:
    size: int  # square side of the model input
    policy: str = "stretch"  # stretch: each side scaled on its own | pad: pad the short side first (aspect kept) | tile: native tiles
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

    @property
    def tiled(self) -> bool:
        return self.policy == "tile"

    @property
    def _view_policy(self) -> str:
        return "pad" if self.tiled else self.policy

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8: the model input (tile: the whole-image view, as ``pad``)."""
        if self.tiled:
            return self.view(self.native(image))  # the intensity rule at native size, as the tiles get it
        out = resize(image, self.size, policy=self._view_policy)
        return normalise_intensity(out) if self.intensity == "per_image" else out

    def shown(self, shape: tuple[int, int]) -> np.ndarray:
        """(size, size) bool: the pixels of the view that show an image of this (H, W) shape; the padding of ``pad``
        (and of ``tile``'s whole-image view) shows nothing, so pixel metrics leave it out (stretch: every pixel)."""
        if self._view_policy == "stretch":
            return np.ones((self.size, self.size), bool)
        return self.mask(np.ones(shape, bool))

    def view_index(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """For an image of ``shape`` (H, W): the view row each of its rows falls in and the view column of each column
        (nearest neighbour; ``pad`` and ``tile``'s view: the image centred in its square, as ``image`` puts it)."""
        h, w = shape
        if self._view_policy == "stretch":
            spans = ((h, 0, h), (w, 0, w))  # (pixels, offset in the square, square side) per axis
        else:
            side, top, left = _square_box(h, w)
            spans = ((h, top, side), (w, left, side))
        return tuple(np.minimum(((np.arange(n) + off + 0.5) * self.size / side).astype(np.int64), self.size - 1)
                     for n, off, side in spans)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool or uint8 defect indices -> (size, size), nearest neighbour (pad, tile: zeros)."""
        return resize(mask, self.size, nearest=True, policy=self._view_policy)

    # ------------------------------------------------------------------ tile: native resolution

    def native(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 at its own size with the intensity rule applied: what ``tiles`` cuts."""
        return normalise_intensity(image) if self.intensity == "per_image" else image

    def view(self, native: np.ndarray) -> np.ndarray:
        """A ``native`` image as the (size, size, 3) whole-image view (no second intensity pass)."""
        return resize(native, self.size, policy=self._view_policy)

    def tiles(self, native: np.ndarray, reflect: bool = True) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Every size x size tile of a native image (or label map: ``reflect=False`` pads with 0) and its corner."""
        padded = pad_to_tile(native, self.size, reflect)
        windows = tile_windows(*native.shape[:2], self.size)
        return [padded[y:y + self.size, x:x + self.size] for y, x in windows], windows

    def crop(self, native: np.ndarray, y: int, x: int, reflect: bool = True) -> np.ndarray:
        """The size x size tile of a native image (or label map) at corner (y, x), clipped to the image."""
        padded = pad_to_tile(native, self.size, reflect)
        y = min(max(0, y), padded.shape[0] - self.size)
        x = min(max(0, x), padded.shape[1] - self.size)
        return padded[y:y + self.size, x:x + self.size]

    def random_corner(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        """A uniformly drawn tile corner inside an image of this (H, W[, C]) shape."""
        h, w = shape[:2]
        return int(rng.integers(0, max(0, h - self.size) + 1)), int(rng.integers(0, max(0, w - self.size) + 1))

    def corner_around(self, region: np.ndarray) -> tuple[int, int]:
        """The corner of the tile centred on the centre of a (H, W) bool region's bounding box (all False: 0, 0)."""
        ys, xs = np.nonzero(region)
        if not len(ys):
            return 0, 0
        return (int(ys.min() + ys.max()) // 2 - self.size // 2, int(xs.min() + xs.max()) // 2 - self.size // 2)

    def to_view(self, native_map: np.ndarray) -> np.ndarray:
        """An (H, W) map at native resolution -> the (size, size) float32 whole-image view; the view's padding (outside
        the image) gets the map's lowest value, the least anomalous."""
        h, w = native_map.shape
        side, top, left = _square_box(h, w)
        square = np.full((side, side), native_map.min(), np.float32)
        square[top:top + h, left:left + w] = native_map
        import torch  # here, not at the top: the exported runtime preprocesses without torch

        t = torch.from_numpy(square)[None, None]  # antialiased: a thin line of a large image is averaged in, not skipped
        return torch.nn.functional.interpolate(t, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                               antialias=side > self.size)[0, 0].numpy()

    def labels_view(self, labels: np.ndarray, windows: list[tuple[int, int]], shape: tuple[int, int], peak: np.ndarray) -> np.ndarray:
        """Per-tile (T, S, S) uint8 labels -> the (size, size) view, each pixel labelled by the tile whose ``peak``
        (T, S, S) map is highest there."""
        h, w = shape
        size = self.size
        ph, pw = max(h, size), max(w, size)
        best, out = np.full((ph, pw), -np.inf, np.float32), np.zeros((ph, pw), np.uint8)
        for lab, m, (y, x) in zip(labels, peak, windows, strict=True):
            window = best[y:y + size, x:x + size]
            take = m > window
            window[take] = m[take]
            out[y:y + size, x:x + size][take] = lab[take]
        return self.mask(out[:h, :w])

    def decode_image(self, path: str | Path) -> np.ndarray:
        """The file's pixels by this model's decoding rules, at their own size (``image`` makes them an input)."""
        return self._fits(load_image(path, options=self.decode), str(path))

    def decode_bytes(self, data: bytes, source: str = "<bytes>") -> np.ndarray:
        """``decode_image`` of bytes received from elsewhere (an HTTP body); errors name ``source``."""
        return self._fits(decoding.decode(data, source, "RGB", self.decode), source)

    def _fits(self, image: np.ndarray, source: str) -> np.ndarray:
        """``image``, if its whole-image view can be made (pad and tile pad it to a square first); else a ValueError
        naming ``source``, raised where a decoding error would be (an error row, an HTTP 422)."""
        if self._view_policy != "stretch":
            try:
                check_square(*image.shape[:2])
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        return image

    def load_image(self, path: str | Path) -> np.ndarray:
        return self.image(self.decode_image(path))

    def load_mask(self, path: str | Path) -> np.ndarray:
        return self.mask(load_mask(path, self.decode))

    def load_labels(self, path: str | Path, index: int, rule: str | None = None) -> np.ndarray:
        """(size, size) uint8 defect index per pixel: ingest's label maps as they are (rule ``labels``, several
        types in one image), any other mask's defect pixels times ``index`` (the image's type). ``rule``: the
        manifest row's (``mask_rule``, how ingest read that mask), else this preprocessing's ``mask_values``."""
        return self.mask(self.native_labels(path, index, rule))

    def native_labels(self, path: str | Path, index: int, rule: str | None = None) -> np.ndarray:
        """``load_labels`` at the mask file's own size (``tiles(..., reflect=False)`` cuts it as its image)."""
        options = self.decode if rule is None else replace(self.decode, mask_values=rule)
        if options.mask_values == "labels":
            return decoding.load(path, "mask", options)
        return load_mask(path, options).astype(np.uint8) * np.uint8(index)

    @staticmethod
    def batch(images: list[np.ndarray]) -> torch.Tensor:
        """Preprocessed (S, S, 3) uint8 arrays -> (B, 3, S, S) uint8 tensor."""
        import torch

        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
