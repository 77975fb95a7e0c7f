"""The procedural synthesizer on gray and colour lines."""

import numpy as np

from uniadc_core.data.vocabulary import DefectPrior
from uniadc_core.synthesis.procedural import synthesize_zero_shot


def _disc(size=64, r=14) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r


def test_a_gray_line_gets_gray_defects_and_a_colour_one_keeps_its_colours():
    from uniadc_core.synthesis.procedural import synthesize_cut_paste

    rng = np.random.default_rng(5)
    gray = np.repeat(rng.integers(60, 200, (64, 64, 1), np.uint8), 3, axis=2)
    colour = rng.integers(60, 200, (64, 64, 3), np.uint8)
    for kind in ("colour", "texture", "noise"):  # appearances that draw a colour or per-channel values
        prior = DefectPrior(shape="ellipse", size="medium", appearances=(kind,), foreground_only=False)
        out = synthesize_zero_shot(gray, prior, np.random.default_rng(1), "none")
        assert out.quality > 0.02 and (out.image[..., 0] == out.image[..., 1]).all() and (out.image[..., 0] == out.image[..., 2]).all(), kind
        tinted = synthesize_zero_shot(colour, prior, np.random.default_rng(1), "none")
        diff = tinted.image.astype(int) - colour.astype(int)
        assert np.abs(diff[..., 0] - diff[..., 1])[tinted.mask].mean() > 1, kind  # a per-channel change on a colour image
    shot = gray.copy()
    shot[20:40, 20:40] = 30
    pasted = synthesize_cut_paste(gray, shot, _disc(r=8), np.random.default_rng(2), "none")  # colour jitter per channel
    assert pasted.mask.any() and (pasted.image[..., 0] == pasted.image[..., 2]).all()
