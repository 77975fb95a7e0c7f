"""Score terms: the fused map, the one pooling rule for the image score, the standardisers and their records."""

import dataclasses
import json

import pytest
import torch

from uniadc_core.model.discriminator import ModelConfig
from uniadc_core.model.terms import DISCRIMINATOR_ONLY, EVEN_ODDS_Z, SCORE_POOL, Term, as_terms, even_odds, fit_terms, fuse, image_score, memory_terms


def _maps(seed: int, b: int = 3, shift: float = 0.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"discriminator": torch.randn(b, 16, 16, generator=gen) * 4 - 2,
            "memory": torch.rand(b, 16, 16, generator=gen) * 0.1 + 3 + shift}


def test_a_lone_term_is_its_own_map_in_its_own_units():
    maps = _maps(0)
    assert fuse(maps, DISCRIMINATOR_ONLY) is maps["discriminator"]
    assert even_odds(DISCRIMINATOR_ONLY) == 0.0  # log-odds: 0 is even odds
    assert fit_terms(DISCRIMINATOR_ONLY, [maps]) == DISCRIMINATOR_ONLY  # nothing to balance


def test_fitted_terms_standardise_each_map_on_the_held_out_pixels_in_one_pass():
    held = [_maps(1), _maps(2, b=5)]  # batches of any size
    terms = fit_terms(memory_terms(0.25), held)
    every = {k: torch.cat([h[k] for h in held]) for k in held[0]}
    for t in terms:
        assert t.pixels == every[t.name].numel()
        assert t.mean == pytest.approx(float(every[t.name].double().mean()), rel=1e-9)
        assert t.std == pytest.approx(float(every[t.name].double().std(correction=0)), rel=1e-9)
    fused = fuse(every, terms)
    assert abs(float(fused.mean())) < 1e-5 and even_odds(terms) == EVEN_ODDS_Z  # z-units: normals sit at 0
    expected = 0.75 * (every["discriminator"] - terms[0].mean) / terms[0].std + 0.25 * (every["memory"] - terms[1].mean) / terms[1].std
    torch.testing.assert_close(fused, expected)
    # a memory map on another scale (x 1000) gets the same fused map: neither term wins by its scale
    scaled = fit_terms(memory_terms(0.25), [{**h, "memory": h["memory"] * 1000} for h in held])
    torch.testing.assert_close(fuse({**every, "memory": every["memory"] * 1000}, scaled), fused, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no held-out normal pixels"):
        fit_terms(memory_terms(0.5), [])


def test_the_image_score_is_the_maximum_of_the_window_averaged_map():
    amap = torch.zeros(2, 32, 32)
    amap[0, 10, 10] = 49.0  # one hot pixel: averaged over a 7 x 7 window
    amap[1, 5:12, 20:27] = 2.0  # a 7 x 7 region of 2
    score = image_score(amap)
    assert SCORE_POOL == 7
    torch.testing.assert_close(score, torch.tensor([1.0, 2.0]))
    edge = torch.zeros(1, 32, 32)
    edge[0, 0, 0] = 16.0  # at a corner the window holds 4 x 4 pixels of the image, no padding
    torch.testing.assert_close(image_score(edge), torch.tensor([1.0]))


def test_terms_are_typed_records_in_the_model_config():
    terms = fit_terms(memory_terms(0.5), [_maps(3)])
    config = ModelConfig(defect_types=["crack"], terms=terms)
    raw = json.loads(json.dumps(dataclasses.asdict(config)))
    assert raw["terms"][1] == {"name": "memory", "weight": 0.5, "mean": terms[1].mean, "std": terms[1].std, "pixels": terms[1].pixels}
    assert ModelConfig(**raw).terms == terms
    assert ModelConfig(defect_types=["crack"]).terms == (Term("discriminator", 1.0),)
    with pytest.raises(ValueError, match="unknown score term 'texture'; valid: discriminator, memory"):
        as_terms([{"name": "texture", "weight": 1.0}])
    with pytest.raises(ValueError, match="each named once"):
        as_terms([Term("memory", 0.5), Term("memory", 0.5)])
    with pytest.raises(ValueError, match="score terms \\['memory'\\] have no map"):
        fuse({"discriminator": torch.zeros(1, 2, 2)}, terms)
