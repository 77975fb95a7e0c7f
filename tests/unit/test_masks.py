"""The mask-shape prior library: every family, size bins held on 1,000 seeded draws, foreground clipping."""

import numpy as np
import pytest

from uniadc_core.data.vocabulary import COMPACT_FAMILIES, SHAPE_FAMILIES, SIZE_BINS, THIN_FAMILIES, canonical_family
from uniadc_core.synthesis.masks import elongation, estimate_foreground, perlin, register_foreground_estimator, sample_shape


def test_size_bins_hold_on_1000_seeded_draws():
    rng = np.random.default_rng(0)
    families = [*COMPACT_FAMILIES, *THIN_FAMILIES]
    sizes = list(SIZE_BINS)
    misses = []
    for i in range(1000):
        family, size = families[i % len(families)], sizes[(i // len(families)) % len(sizes)]
        mask = sample_shape(family, size, rng, (96, 128))
        lo, hi = SIZE_BINS[size].area
        pixel = 1 / mask.size  # the area is a whole number of pixels
        if not lo - pixel <= mask.mean() <= hi + pixel:
            misses.append((family, size, "area", mask.mean()))
        if family in COMPACT_FAMILIES:
            a_lo, a_hi = SIZE_BINS[size].aspect
            if not a_lo - 1e-6 <= elongation(mask) <= a_hi + 1e-6:
                misses.append((family, size, "elongation", elongation(mask)))
    assert not misses, misses[:10]


def test_families_look_like_themselves():
    rng = np.random.default_rng(3)
    thin = np.median([elongation(sample_shape("line", "small", rng, (128, 128))) for _ in range(20)])
    assert thin > 5  # lines are long and thin whatever the bin's compact aspect
    ring = sample_shape("hollow_ellipse", "large", rng, (128, 128))
    from scipy import ndimage

    assert ndimage.binary_fill_holes(ring).sum() > 1.3 * ring.sum()  # a hole in the middle
    def box_fill(mask):  # area over the box spanned along the principal axes: 1 for a rectangle, pi/4 for an ellipse
        pts = np.argwhere(mask).astype(float)
        _, vecs = np.linalg.eigh(np.cov(pts.T))
        proj = (pts - pts.mean(0)) @ vecs
        return mask.sum() / np.prod(proj.max(0) - proj.min(0) + 1)

    assert box_fill(sample_shape("rectangle", "large", np.random.default_rng(5), (128, 128))) > 0.9
    assert box_fill(sample_shape("ellipse", "large", np.random.default_rng(5), (128, 128))) < 0.85
    field = perlin((64, 64), 4, np.random.default_rng(0))
    assert field.shape == (64, 64) and -1.5 < field.min() < 0 < field.max() < 1.5 and field.std() > 0.1


def test_masks_stay_on_the_foreground_and_whole_foreground():
    img = np.full((128, 128, 3), 20, np.uint8)
    img[32:96, 32:96] = 200  # an object on a dark background
    fg = estimate_foreground(img)
    assert fg[64, 64] and not fg[5, 5]
    rng = np.random.default_rng(1)
    for family in SHAPE_FAMILIES:
        mask = sample_shape(family, "small", rng, (128, 128), fg)
        assert mask.any() and not (mask & ~fg).any(), family
    assert np.array_equal(sample_shape("foreground", "tiny", rng, (128, 128), fg), fg)


def test_pluggable_foreground_and_clear_errors():
    register_foreground_estimator("left_half", lambda image: np.arange(image.shape[1])[None, :].repeat(image.shape[0], 0) < image.shape[1] // 2)
    fg = estimate_foreground(np.zeros((32, 32, 3), np.uint8), "left_half")
    assert fg[:, :16].all() and not fg[:, 16:].any()
    assert estimate_foreground(np.zeros((8, 8, 3), np.uint8), "none").all()
    with pytest.raises(ValueError, match="unknown foreground estimator 'magic'; registered: border, none"):
        estimate_foreground(np.zeros((8, 8, 3), np.uint8), "magic")
    with pytest.raises(ValueError, match="unknown shape family 'star'; allowed: rectangle"):
        sample_shape("star", "small", np.random.default_rng(0), (32, 32))
    with pytest.raises(ValueError, match="unknown size bin 'giant'"):
        sample_shape("ellipse", "giant", np.random.default_rng(0), (32, 32))
    assert canonical_family("blob") == "perlin" and canonical_family("region") == "polygon"  # older vocabularies
