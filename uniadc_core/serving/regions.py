"""Defect regions as data: each connected region of a decided label map, at the image's own size.

    regions, labels = native_regions(detector.preprocess, d.anomaly_map[i], d.pixel_labels[i], image.shape[:2], types,
                                     d.region_prob[i], abstain_below=0.5)
    [Region(defect_type='crack', box=(x0, y0, x1, y1), area=412, max_score=3.1, mean_score=1.7, ..., type_probability=0.83), ...]

The model decides on its square view of the image (``Preprocess``: stretched, or padded to a square for
``pad`` and for ``tile``'s whole-image view). ``Preprocess.view_index`` undoes that geometry: each pixel of the
original takes the view pixel it falls in (nearest neighbour, the view's padding cut off), with that
pixel's label and score, so a box is in the pixels of the file the user gave and every region's peak is
above the threshold. A region is a set of 8-connected defect pixels, found on the view (a few hundred
pixels a side, whatever the file's size); ``decision.decide`` gave all its pixels the type at its peak
(the type most of them carry, for a label map made otherwise) and its probability. numpy only: the exported
runtime uses the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decision import UNKNOWN, components


@dataclass(frozen=True)
class Region:
    defect_type: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image's pixels; x1, y1 exclusive
    area: int  # pixels of the original image
    max_score: float  # aligned score: above the threshold at the region's peak
    mean_score: float
    # shape, from the pixels' second moments: a thin crack is long, a blowhole round, a fray or break at the edge
    elongation: float = 1.0  # major / minor axis length (1 = round or square)
    orientation: float = 0.0  # the major axis's angle to the image's x axis, degrees in (-90, 90], y pointing down
    touches_border: bool = False  # the region reaches an edge of the image
    type_probability: float = 1.0  # of its type, read at its peak; below the line's abstain_below its type is "unknown"

    def as_row(self) -> dict:
        row = asdict(self)
        x0, y0, x1, y1 = row.pop("box")
        return {**row, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def _measure(comp: np.ndarray, count: int, labels: np.ndarray, amap: np.ndarray, defect_types: list[str],
             probs: np.ndarray | None = None, abstain_below: float = 0.0) -> list[Region]:
    """A Region per component of ``comp`` (1..count) with pixels, highest peak score first; ``probs``: (H, W) each
    pixel's region type probability in 1/255 steps (None: 1)."""
    ys, xs = np.nonzero(comp)
    if count == 0 or not len(ys):
        return []
    which = comp[ys, xs]
    order = np.argsort(which, kind="stable")
    ys, xs, which = ys[order], xs[order], which[order]
    scores, kinds = amap[ys, xs].astype(np.float64), labels[ys, xs].astype(np.int64)
    present, starts, area = np.unique(which, return_index=True, return_counts=True)
    k = len(defect_types) + 1
    votes = np.bincount(which * k + kinds, minlength=(count + 1) * k).reshape(count + 1, k)[present, 1:]
    boxes = zip(np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts), np.maximum.reduceat(xs, starts) + 1,
                np.maximum.reduceat(ys, starts) + 1)
    peaks, sums = np.maximum.reduceat(scores, starts), np.add.reduceat(scores, starts)
    chance = np.ones(len(starts)) if probs is None else np.add.reduceat(probs[ys, xs].astype(np.float64), starts) / area / 255
    shapes = _shapes(xs.astype(np.float64), ys.astype(np.float64), starts, area)
    h, w = comp.shape
    regions = []
    for v, box, a, p, s, (elongation, angle), c in zip(votes, boxes, area, peaks, sums, shapes, chance):
        box = tuple(int(c) for c in box)
        edge = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
        kind = defect_types[int(v.argmax())] if c >= abstain_below else UNKNOWN
        regions.append(Region(kind, box, int(a), float(p), float(s / a), elongation, angle, edge, round(float(c), 4)))
    return sorted(regions, key=lambda r: -r.max_score)


def _shapes(xs: np.ndarray, ys: np.ndarray, starts: np.ndarray, area: np.ndarray) -> list[tuple[float, float]]:
    """(elongation, orientation in degrees) of each run of pixels starting at ``starts``: the square root of the ratio
    of the covariance's eigenvalues, each plus 1/12 (a pixel's own variance: a one-pixel spot is round, a one-pixel
    line finite), and the major axis's angle."""
    def mean(v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, starts) / area

    mx, my = mean(xs), mean(ys)
    cxx, cyy, cxy = mean(xs * xs) - mx * mx, mean(ys * ys) - my * my, mean(xs * ys) - mx * my
    half, root = (cxx + cyy) / 2, np.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
    major, minor = half + root + 1 / 12, np.maximum(half - root, 0) + 1 / 12
    angle = np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))
    angle = np.where(angle <= -90, angle + 180, angle)
    return [(float(np.sqrt(a / b)), float(c)) for a, b, c in zip(major, minor, angle)]


def find_regions(labels: np.ndarray, amap: np.ndarray, defect_types: list[str]) -> list[Region]:
    """The connected regions of a (H, W) label map (0 normal, k the k-th defect type), highest score first."""
    return _measure(*components(labels > 0), labels, amap, defect_types)


def native_regions(pre: Preprocess, view_map: np.ndarray, view_labels: np.ndarray, shape: tuple[int, int],
                   defect_types: list[str], view_probs: np.ndarray | None = None, abstain_below: float = 0.0) -> tuple[list[Region], np.ndarray]:
    """The regions of the (S, S) aligned map and uint8 label map of the model's view (and ``view_probs``: each
    region's type probability, ``Decision.region_prob``), measured on an image of ``shape``, and that image's (H, W)
    uint8 label map (a region whose type is "unknown" keeps its most likely type's index there)."""
    rows, cols = pre.view_index(shape)
    comp, count = components(view_labels > 0)
    labels = view_labels[rows][:, cols].astype(np.uint8)
    probs = None if view_probs is None else view_probs[rows][:, cols]
    return _measure(comp[rows][:, cols], count, labels, view_map[rows][:, cols], defect_types, probs, abstain_below), labels


def label_png(labels: np.ndarray) -> Image.Image:
    """A (H, W) label map as an 8-bit PNG image: 0 normal, k the k-th defect type of the model's config."""
    return Image.fromarray(labels.astype(np.uint8), mode="L")
