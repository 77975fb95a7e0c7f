"""ingest.intensity: per_image brings images of other exposures to one mean and spread, at every stage."""

import json

import numpy as np
import pytest

from tests.conftest import TINY_TRAIN, tiny_ingest_config
from uniadc_core.data.ingest import ingest
from uniadc_core.data.preprocess import TARGET_MEAN, TARGET_STD, Preprocess, normalise_intensity
from uniadc_core.data.vocabulary import Vocabulary


def test_two_exposures_of_one_surface_become_the_same_image():
    rng = np.random.default_rng(0)
    surface = rng.normal(0, 1, (40, 60, 1)).repeat(3, axis=2)
    dark, bright = np.clip(70 + 12 * surface, 0, 255).astype(np.uint8), np.clip(170 + 30 * surface, 0, 255).astype(np.uint8)
    a, b = normalise_intensity(dark), normalise_intensity(bright)
    assert abs(a.mean() - TARGET_MEAN) < 1.5 and abs(a.astype(float).std() - TARGET_STD) < 1.5
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # rounding of the 8-bit inputs only
    assert (normalise_intensity(np.full((8, 8, 3), 9, np.uint8)) == TARGET_MEAN).all()  # a flat image: no division by 0
    pre = Preprocess(32, intensity="per_image")
    assert pre.image(bright).shape == (32, 32, 3) and abs(pre.image(bright).mean() - TARGET_MEAN) < 2
    assert np.array_equal(Preprocess(32).image(bright), Preprocess(32, intensity="none").image(bright))
    with pytest.raises(ValueError, match=r"unknown intensity rule 'local'; valid: none, per_image \(ingest.intensity\)"):
        Preprocess(32, intensity="local")


def test_the_rule_travels_from_ingest_to_the_vocabulary_and_the_model(tmp_path):
    from uniadc_core.model.train import build_model, load_train_data

    result = ingest(tiny_ingest_config(tmp_path / "raw", intensity="per_image"), tmp_path / "prepared")
    raw = json.loads(result.vocabulary_path.read_text())
    assert raw["intensity"] == "per_image"
    vocab = Vocabulary.from_dict(raw)
    data = load_train_data(result.manifest, vocab, None, TINY_TRAIN.image_size)
    means = data.normals.images.float().mean((1, 2, 3))
    assert (means - TARGET_MEAN).abs().max() < 3  # every training normal was brought to the target
    model = build_model(data, vocab, TINY_TRAIN)
    assert model.preprocess.intensity == "per_image" and model.config.intensity == "per_image"
    plain = ingest(tiny_ingest_config(tmp_path / "raw2"), tmp_path / "plain")
    assert "intensity" not in json.loads(plain.vocabulary_path.read_text())  # the default leaves older files as they were
