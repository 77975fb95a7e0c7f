"""Defect regions as data: each connected region of a decided label map, at the image's own size.

    amap, labels = to_native(detector.preprocess, d.anomaly_map[i], d.pixel_labels[i], image.shape[:2])
    regions = find_regions(labels, amap, detector.model.config.defect_types)
    [Region(defect_type='crack', box=(x0, y0, x1, y1), area=412, max_score=3.1, mean_score=1.7), ...]

The model decides on its square view of the image (``Preprocess``: stretched, or padded to a square for
``pad`` and for ``tile``'s whole-image view). ``to_native`` undoes that geometry: the view's padding is
cut off and the rest scaled to (H, W) by nearest neighbour, so a box is in the pixels of the file the user
gave and each pixel keeps the label and score it was decided with (every region's peak is above the
threshold). A region is a set of 8-connected defect pixels; its type
is the type most of its pixels carry (the per-pixel argmax can split one defect between two types; the
defect is still one region). Only numpy, Pillow and scipy: the same code serves every runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from uniadc_core.data.preprocess import Preprocess

EIGHT = np.ones((3, 3), bool)  # diagonal neighbours join a region: a thin diagonal crack stays one defect


@dataclass(frozen=True)
class Region:
    defect_type: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image's pixels; x1, y1 exclusive
    area: int  # pixels of the original image
    max_score: float  # aligned score: above the threshold everywhere in the region
    mean_score: float

    def as_row(self) -> dict:
        row = asdict(self)
        x0, y0, x1, y1 = row.pop("box")
        return {**row, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour, for uint8 labels and float32 scores alike."""
    h, w = shape
    if arr.shape == (h, w):
        return arr
    image = Image.fromarray(arr.astype(np.uint8)) if arr.dtype == np.uint8 else Image.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.NEAREST))


def to_native(pre: Preprocess, view_map: np.ndarray, view_labels: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (S, S) aligned map and uint8 label map of the model's view -> (H, W) maps of an image of ``shape``."""
    h, w = shape
    if pre.policy != "stretch":  # pad, and tile's whole-image view: the image sits centred in a square of side max(h, w)
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square_map, square_labels = _resize(view_map, (side, side)), _resize(view_labels.astype(np.uint8), (side, side))
        return square_map[top:top + h, left:left + w], square_labels[top:top + h, left:left + w]
    return _resize(view_map, (h, w)), _resize(view_labels.astype(np.uint8), (h, w))


def find_regions(labels: np.ndarray, amap: np.ndarray, defect_types: list[str]) -> list[Region]:
    """The connected regions of a (H, W) label map (0 normal, k the k-th defect type), highest score first."""
    components, count = ndimage.label(labels > 0, structure=EIGHT)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    boxes = ndimage.find_objects(components)
    areas = ndimage.sum_labels(np.ones_like(components), components, index)
    peaks = ndimage.maximum(amap, components, index)
    means = ndimage.mean(amap, components, index)
    regions = []
    for n, box in enumerate(boxes):
        inside = components[box] == n + 1
        votes = np.bincount(labels[box][inside], minlength=len(defect_types) + 1)[1:]
        ys, xs = box
        regions.append(Region(defect_types[int(votes.argmax())], (xs.start, ys.start, xs.stop, ys.stop), int(areas[n]),
                              float(peaks[n]), float(means[n])))
    return sorted(regions, key=lambda r: -r.max_score)


def label_png(labels: np.ndarray) -> Image.Image:
    """A (H, W) label map as an 8-bit PNG image: 0 normal, k the k-th defect type of the model's config."""
    return Image.fromarray(labels.astype(np.uint8), mode="L")
