from pathlib import Path

import numpy as np
import pytest

from uniadc_core.data.vocabulary import DefectPrior, Vocabulary, default_prior
from uniadc_core.synthesis.masks import estimate_foreground
from uniadc_core.synthesis.priors import apply_priors_file, sample_mask

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,family", [("crack", "crack"), ("deep_scratch", "scratch"), ("Blowhole", "hole"),
                                          ("oil_stain", "perlin"), ("Fray", "line"), ("chip", "polygon"), ("weird", "perlin"),
                                          ("Uneven", "polygon"), ("rough_patch", "perlin"), ("fold", "brush")])
def test_default_prior_from_name(name, family):
    prior = default_prior(name, "tile")
    assert prior.shape == family
    assert any(name.replace("_", " ") in p for p in prior.prompts) and prior.negative_prompt


def test_masks_stay_on_the_foreground_unless_the_prior_says_otherwise():
    img = np.full((128, 128, 3), 20, np.uint8)
    img[32:96, 32:96] = 200  # an object on a dark background
    fg = estimate_foreground(img)
    rng = np.random.default_rng(1)
    for _ in range(10):
        mask = sample_mask(DefectPrior(shape="perlin", size="small"), rng, (128, 128), fg)
        assert mask.any() and not (mask & ~fg).any()
    anywhere = [sample_mask(DefectPrior(shape="ellipse", size="small", foreground_only=False), rng, (128, 128), fg) for _ in range(20)]
    assert any((m & ~fg).any() for m in anywhere)


def test_vocabulary_round_trip_and_errors():
    vocab = Vocabulary({"a": {"crack": default_prior("crack", "a")}, "b": {"crack": default_prior("crack", "b"), "hole": default_prior("hole", "b")}})
    assert vocab.defect_types == ["crack", "hole"] and vocab.index("hole") == 2
    assert Vocabulary.from_dict(vocab.to_dict()).to_dict() == vocab.to_dict()
    old = vocab.to_dict()
    old["classes"]["a"]["crack"]["shape"] = "blob"  # a vocabulary written before the shape library: still read
    old["classes"]["a"]["crack"].pop("negative_prompt")
    assert Vocabulary.from_dict(old).prior("a", "crack").shape == "blob"
    with pytest.raises(ValueError, match="unknown defect type 'dent'; known: crack, hole"):
        vocab.index("dent")
    with pytest.raises(ValueError, match="unknown defect type 'hole' for class 'a'"):
        vocab.prior("a", "hole")
    with pytest.raises(ValueError, match="unknown shape family 'star'"):
        DefectPrior(shape="star").validate("priors")


def _vocab():
    return Vocabulary({"tile": {"crack": default_prior("crack", "tile"), "stain": default_prior("stain", "tile")},
                       "fabric": {"hole": default_prior("hole", "fabric")}})


def test_priors_file_overrides_by_class_and_type(tmp_path):
    path = tmp_path / "priors.yaml"
    path.write_text("""
defaults:
  negative_prompt: "text"
classes:
  "*":
    crack: {size: medium}
  tile:
    crack:
      prompts: "a tile with a long crack"
      shape: line
      foreground_only: false
""")
    vocab = apply_priors_file(_vocab(), path)
    crack = vocab.prior("tile", "crack")
    assert crack.shape == "line" and crack.size == "medium" and crack.prompts == ("a tile with a long crack",)
    assert crack.negative_prompt == "text" and crack.foreground_only is False
    stain = vocab.prior("tile", "stain")  # no entry: the name's prior, with the defaults applied
    assert stain.shape == default_prior("stain", "tile").shape and stain.negative_prompt == "text"
    assert vocab.defect_types == _vocab().defect_types


@pytest.mark.parametrize("text,message", [
    ("classes: {marble: {crack: {size: small}}}", "unknown object class 'marble'; the dataset has: fabric, tile"),
    ("classes: {fabric: {crack: {size: small}}}", "unknown defect type 'crack' for class 'fabric'; known: hole"),
    ("classes: {tile: {crack: {shape: star}}}", "classes.tile.crack: unknown shape family 'star'"),
    ("classes: {tile: {crack: {sise: small}}}", "unknown key 'sise'. Did you mean 'size'?"),
    ("classes: {tile: {crack: {size: giant}}}", "unknown size bin 'giant'"),
    ("classes: {tile: {crack: {appearances: [glow]}}}", "unknown appearance"),
    ("klasses: {}", "expected top-level keys 'defaults' and/or 'classes'"),
    ("classes: [", "not valid YAML"),
])
def test_priors_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "priors.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        apply_priors_file(_vocab(), path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="priors file not found; fix synthesize.priors"):
        apply_priors_file(_vocab(), tmp_path / "missing.yaml")


def test_the_shipped_mtd_priors_file_is_valid():
    from uniadc_core.data.manifest import build_vocabulary  # noqa: F401  (the real path builds it from the manifest)

    types = ["blowhole", "break", "crack", "fray", "uneven"]
    vocab = Vocabulary({"magnetic_tile": {t: default_prior(t, "magnetic_tile") for t in types}})
    mtd = apply_priors_file(vocab, ROOT / "priors/mtd.yaml")
    assert mtd.prior("magnetic_tile", "uneven").shape == "polygon" and mtd.prior("magnetic_tile", "fray").shape == "brush"
