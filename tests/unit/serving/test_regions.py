"""Defect regions at the image's own size, and the line's own threshold."""

from __future__ import annotations

import numpy as np
import pytest

from uniadc_core.cada.calibration import calibrate, threshold_for_rate
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.serving.regions import components, find_regions, native_regions

TYPES = ["crack", "hole", "stain"]


def test_regions_are_eight_connected_blobs_typed_by_their_majority():
    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 3:9] = 1  # 18 crack pixels ...
    labels[4, 8] = 2  # ... one of which the argmax called a hole: still one crack
    labels[10, 10] = labels[11, 11] = labels[12, 12] = 3  # a diagonal line: one region
    labels[15:17, 25:30] = 2
    amap = np.zeros((20, 30), np.float32)
    amap[labels > 0] = 2.0
    amap[3, 4] = 5.0
    regions = find_regions(labels, amap, TYPES)
    assert [r.defect_type for r in regions] == ["crack", "stain", "hole"]  # highest score first, then ties in scan order
    crack, stain, hole = regions
    assert crack.box == (3, 2, 9, 5) and crack.area == 18 and crack.max_score == 5.0
    assert crack.mean_score == pytest.approx((17 * 2.0 + 5.0) / 18)
    assert stain.box == (10, 10, 13, 13) and stain.area == 3
    assert hole.box == (25, 15, 30, 17) and hole.area == 10
    # a 2 x 5 block at the right edge: variances 2 (x) and 0.25 (y), each + 1/12: elongation sqrt(6.25)
    assert hole.as_row() == {"defect_type": "hole", "x0": 25, "y0": 15, "x1": 30, "y1": 17, "area": 10, "max_score": 2.0,
                             "mean_score": 2.0, "elongation": pytest.approx(2.5), "orientation": 0.0, "touches_border": True,
                                 "type_probability": 1.0}
    assert not crack.touches_border and stain.orientation == pytest.approx(45.0)  # the diagonal runs down-right
    assert find_regions(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.float32), TYPES) == []


@pytest.mark.parametrize("policy", ["stretch", "pad", "tile"])
def test_a_defect_comes_back_where_it_is_in_the_original_image(policy):
    """A label map taken to the model's view and back lands on the defect in the original's pixels, for every
    resize policy, on an image twice as wide as high."""
    pre = Preprocess(64, policy)
    h, w = 120, 240
    native = np.zeros((h, w), np.uint8)
    native[30:70, 150:210] = 2
    view = pre.mask(native)
    view_map = np.where(view > 0, 3.0, -1.0).astype(np.float32)
    (region,), labels = native_regions(pre, view_map, view, (h, w), TYPES)
    assert labels.shape == (h, w) and region.area == int((labels > 0).sum())
    assert region.defect_type == "hole"
    x0, y0, x1, y1 = region.box
    tolerance = max(h, w) / 64 + 1 if policy != "stretch" else w / 64 + 1  # one view pixel, in native pixels
    assert abs(x0 - 150) <= tolerance and abs(x1 - 210) <= tolerance
    assert abs(y0 - 30) <= tolerance and abs(y1 - 70) <= tolerance
    assert abs(region.area - 40 * 60) / (40 * 60) < 0.15
    assert region.max_score == pytest.approx(3.0)


def test_a_false_alarm_rate_becomes_the_conformal_threshold_of_the_saved_normals():
    rng = np.random.default_rng(0)
    scores = {"tile": sorted(rng.normal(0, 1, 300).tolist()), "board": sorted(rng.normal(0.5, 1, 199).tolist())}
    t = threshold_for_rate(scores, 0.02)
    tile, board = np.array(scores["tile"]), np.array(scores["board"])
    # rank ceil(301 * 0.98) = 295 of 300, ceil(200 * 0.98) = 196 of 199; per class: the higher of the two
    assert t == max(tile[294], board[195])
    assert t == calibrate(np.concatenate([tile, board]), ["tile"] * 300 + ["board"] * 199, 98.0)[0]
    assert threshold_for_rate(scores, 0.2) < t  # more false alarms allowed: a lower threshold
    assert (tile > t).mean() <= 0.02 and (board > t).mean() <= 0.02
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_rate(scores, 2.0)
    with pytest.raises(ValueError, match="re-run fit_cada"):
        threshold_for_rate({}, 0.01)


def test_components_match_a_flood_fill():
    rng = np.random.default_rng(1)
    mask = rng.random((60, 80)) < 0.35
    comp, count = components(mask)
    seen = np.zeros_like(mask)
    found = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        found += 1
        stack, members = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            members.append((cy, cx))
            for ny in range(max(cy - 1, 0), min(cy + 2, 60)):
                for nx in range(max(cx - 1, 0), min(cx + 2, 80)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        assert len({int(comp[p]) for p in members}) == 1 and comp[members[0]] > 0
        assert int((comp == comp[members[0]]).sum()) == len(members)
    assert count == found and comp[~mask].max() == 0


def test_region_shapes_tell_lines_from_spots():
    labels = np.zeros((60, 60), np.uint8)
    labels[10, 5:45] = 1  # a horizontal crack one pixel thin
    labels[20:50, 50] = 1  # a vertical one
    labels[30:36, 20:26] = 2  # a round-ish blob
    labels[55:60, 0:3] = 2  # a spot on the corner
    amap = np.where(labels > 0, 2.0, 0.0).astype(np.float32)
    amap[10, 6], amap[25, 50], amap[32, 22], amap[57, 1] = 9.0, 8.0, 7.0, 6.0
    horizontal, vertical, blob, corner = find_regions(labels, amap, TYPES)
    assert horizontal.elongation > 20 and horizontal.orientation == pytest.approx(0.0)
    assert vertical.elongation > 15 and abs(vertical.orientation) == pytest.approx(90.0)
    assert blob.elongation == pytest.approx(1.0) and not blob.touches_border
    assert corner.touches_border and not horizontal.touches_border
