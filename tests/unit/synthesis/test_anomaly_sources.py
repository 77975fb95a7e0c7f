"""Diverse anomaly sources: procedural textures, crops of other normal images, DRAEM-style Perlin-field masks."""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import TINY_SYNTH
from uniadc_core.data.manifest import read_manifest
from uniadc_core.data.vocabulary import SIZE_BINS, DefectPrior, Vocabulary
from uniadc_core.synthesis.masks import fractal_noise, sample_shape
from uniadc_core.synthesis.plan import plan_samples
from uniadc_core.synthesis.priors import apply_priors_file
from uniadc_core.synthesis.procedural import _appearance, make_sample, synthesize_zero_shot

TEXTURES = ("perlin_texture", "stripes", "gabor", "fill")


def _plain(value=120, size=64) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _disc(size=64, r=14) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r


def test_each_procedural_texture_is_seeded_and_changes_the_masked_region():
    mask = _disc()
    outs = {}
    for kind in TEXTURES:
        prior = DefectPrior(shape="ellipse", size="medium", appearances=(kind,), foreground_only=False)
        a = synthesize_zero_shot(_plain(), prior, np.random.default_rng(3), "none")
        b = synthesize_zero_shot(_plain(), prior, np.random.default_rng(3), "none")
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask), kind  # seeded
        assert a.quality > 0.03 and (a.image[~ndimage.binary_dilation(a.mask, iterations=4)] == 120).all(), kind
        outs[kind] = _appearance(kind, _plain().astype(np.float32), mask, np.random.default_rng(7))
    gray = {k: v[..., 0][mask] for k, v in outs.items()}
    assert gray["fill"].std() < 1e-3 and gray["perlin_texture"].std() > 8 and gray["stripes"].std() > 20  # flat vs textured
    wave = outs["stripes"][..., 0]
    assert np.abs(np.diff(wave, axis=0)).mean() + np.abs(np.diff(wave, axis=1)).mean() > 5  # it oscillates at pixel scale
    change = np.abs(outs["gabor"][..., 0] - 120)
    centre, rim = change[_disc(r=5)].mean(), change[_disc(r=14) & ~_disc(r=10)].mean()
    assert centre > 2 * rim  # the Gaussian envelope: strongest at the defect's centre


def test_donor_appearances_crop_the_donor_and_need_one():
    mask = _disc()
    donor = np.full((64, 64, 3), 230, np.uint8)
    out = _appearance("other_normal", _plain(40).astype(np.float32), mask, np.random.default_rng(0), {"other_normal": donor})
    assert out[mask].min() > 140  # the donor's brightness (gain 0.7..1.3 around its mean), not the dark image's
    with pytest.raises(ValueError, match="appearance 'other_class' needs a donor image; the synthesis plan gives one"):
        _appearance("other_class", _plain().astype(np.float32), mask, np.random.default_rng(0), {})


def test_perlin_field_masks_have_the_bin_area_in_scattered_regions():
    components = {"perlin_field": [], "perlin": []}
    for seed in range(12):
        for family in components:
            m = sample_shape(family, "large", np.random.default_rng(seed), (96, 96))
            lo, hi = SIZE_BINS["large"].area
            assert lo * 96 * 96 - 1 <= m.sum() <= hi * 96 * 96 + 1, family
            components[family].append(ndimage.label(m)[1])
    assert np.mean(components["perlin_field"]) > np.mean(components["perlin"]) + 0.5  # several regions, not one blob
    a, b = fractal_noise((32, 32), 3, np.random.default_rng(1)), fractal_noise((32, 32), 3, np.random.default_rng(1))
    assert np.array_equal(a, b) and -1.5 < a.min() < 0 < a.max() < 1.5


def _vocab_with(tmp_path, vocab_path, appearances: str) -> Vocabulary:
    priors = tmp_path / "priors.yaml"
    priors.write_text(f"classes:\n  '*':\n    stain: {{appearances: [{appearances}]}}\n")
    return apply_priors_file(Vocabulary.from_dict(json.loads(vocab_path.read_text())), priors)


def test_the_plan_gives_donors_only_where_a_prior_uses_them(tiny_dataset, tmp_path):
    manifest, _, vocab_path = tiny_dataset
    cfg = replace(TINY_SYNTH, repaint_fraction=0.0)
    vocab = Vocabulary.from_dict(json.loads(vocab_path.read_text()))
    plain = plan_samples(manifest, vocab, cfg)
    assert all(s.donor_path is None and s.foreign_path is None for s in plain)
    donors = plan_samples(manifest, _vocab_with(tmp_path, vocab_path, "other_normal, other_class"), cfg)
    assert plan_samples(manifest, _vocab_with(tmp_path, vocab_path, "other_normal, other_class"), cfg) == donors  # seeded
    # the donor stream is its own: sources, seeds and ids are those of the plan without donors
    assert [(s.sample_id, s.source_path, s.seed) for s in donors] == [(s.sample_id, s.source_path, s.seed) for s in plain]
    classes = dict(zip(manifest["path"].to_list(), manifest["object_class"].to_list(), strict=True))
    stains = [s for s in donors if s.defect_type == "stain"]
    assert stains and all(s.donor_path != s.source_path and classes[s.donor_path] == s.object_class for s in stains)
    assert all(classes[s.foreign_path] != s.object_class for s in stains)
    assert all(s.donor_path is None for s in donors if s.defect_type != "stain")
    row = make_sample(stains[0], _vocab_with(tmp_path, vocab_path, "other_normal, other_class"), 64, "border")
    settings = json.loads(row["settings"])
    assert settings["donor_same_class"] and settings["donor_other_class"]


def test_other_class_in_a_one_class_dataset_is_a_clear_error(tiny_dataset, tmp_path):
    manifest, manifest_path, vocab_path = tiny_dataset
    one = read_manifest(manifest_path).filter(manifest["object_class"] == "tile")
    vocab = _vocab_with(tmp_path, vocab_path, "other_class")
    vocab = Vocabulary(classes={"tile": vocab.classes["tile"]}, resize=vocab.resize, decode=vocab.decode)
    with pytest.raises(ValueError, match=r"class 'tile', defect 'stain': appearance other_class needs normal images of another object class"):
        plan_samples(one, vocab, TINY_SYNTH)


def test_a_gray_line_gets_gray_defects_and_a_colour_one_keeps_its_colours():
    from uniadc_core.synthesis.procedural import synthesize_cut_paste

    rng = np.random.default_rng(5)
    gray = np.repeat(rng.integers(60, 200, (64, 64, 1), np.uint8), 3, axis=2)
    colour = rng.integers(60, 200, (64, 64, 3), np.uint8)
    for kind in ("colour", "perlin_texture", "noise"):  # appearances that draw a colour or per-channel values
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
