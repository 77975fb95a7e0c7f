"""The image-level texture term: pooled texture statistics, their shrunk Gaussian, and its share of the image score."""

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from uniadc_core.config import ConfigError, parse_params
from uniadc_core.model.discriminator import Discriminator, ModelConfig, load_model, save_model
from uniadc_core.model.scoring import _score_maps, _texture_distances, attach_image_texture, score_images
from uniadc_core.model.train import train
from uniadc_core.model.texture import IMAGE_STATISTICS, fit_gaussian, image_statistics, log_mahalanobis


def _surface(seed: int, size: int = 64, smooth_rows: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 grey surface with a fine random grain; its first ``smooth_rows`` rows polished (no grain,
    the same mean brightness): a change of finish over a large area, as MTD's uneven surfaces."""
    rng = np.random.default_rng(seed)
    x = 120 + 40 * (rng.random((size, size)) - 0.5)
    x[:smooth_rows] = 120
    return np.repeat(x.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_a_polished_half_moves_the_image_statistics_far_from_the_normal_gaussian():
    normals = torch.stack([image_statistics(_surface(s)) for s in range(60)])
    assert normals.shape == (60, IMAGE_STATISTICS) and normals.dtype == torch.float64 and torch.isfinite(normals).all()
    gaussian = fit_gaussian(normals[:50])
    assert 0.0 < gaussian["shrinkage"] < 0.5 and len(gaussian["precision"]) == IMAGE_STATISTICS
    held = log_mahalanobis(normals[50:], gaussian)
    uneven = log_mahalanobis(torch.stack([image_statistics(_surface(100 + s, smooth_rows=32)) for s in range(3)]), gaussian)
    assert uneven.min() > held.max() + 1.0  # the log distance: e (2.7x) the squared distance at least
    few = fit_gaussian(normals[:3])  # fewer normals than statistics: shrunk hard, still invertible
    assert few["shrinkage"] > gaussian["shrinkage"] and torch.isfinite(log_mahalanobis(normals[50:], few)).all()
    with pytest.raises(ValueError, match="at least 3"):  # two normals: one direction of spread, no shrinkage, singular
        fit_gaussian(normals[:2])
    small = image_statistics(_surface(0, size=12))  # 3 x 3 cells: the border margin shrinks to fit
    assert small.shape == (IMAGE_STATISTICS,) and torch.isfinite(small).all()


def test_the_image_texture_term_joins_the_score_in_the_one_scoring_path_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Discriminator(ModelConfig(defect_types=["uneven"], image_size=64, width=8, embed_dim=8)).eval()
    paths = []
    for s in range(40):
        paths.append(tmp_path / f"normal_{s}.png")
        Image.fromarray(_surface(s)).save(paths[-1])
    holdout = [_surface(200 + s) for s in range(12)]
    plain = score_images(model, holdout).score
    attach_image_texture(model, paths, holdout, 0.5)
    texture = model.config.image_texture
    assert texture["weight"] == 0.5 and len(texture["stats"]) == 4 and len(texture["mean"]) == IMAGE_STATISTICS
    assert texture["stats"][0] == pytest.approx(float(plain.astype(np.float64).mean()), rel=1e-5)
    queries = [_surface(300, smooth_rows=32), _surface(301)]
    fused = score_images(model, queries)
    plain_q, g = _score_maps(model, queries, 32, False, False), _texture_distances(model, queries, False)
    mu_s, sd_s, mu_g, sd_g = texture["stats"]
    term = 0.5 * (g - mu_g) / sd_g
    np.testing.assert_allclose(fused.score, 0.5 * (plain_q.score - mu_s) / sd_s + term, rtol=1e-5)
    # the map standardised and weighted as the plain score is, and not lifted: a whole-image term says nothing about
    # where; its maximum plus the image's term is the score
    np.testing.assert_allclose(fused.anomaly_map, 0.5 * (plain_q.anomaly_map - mu_s) / sd_s, rtol=1e-4, atol=1e-5)
    assert np.abs(score_images(model, holdout).score.mean()) < 1e-4  # standardised on these very images: mean 0

    attach_image_texture(model, paths, holdout, 0.95)  # the distance nearly alone: the polished half stands out
    alone = score_images(model, [*queries, *holdout]).score
    assert alone[0] > alone[1:].max()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(score_images(loaded, queries).score, alone[:2], rtol=1e-5)
    del loaded.config.image_texture["stats"]
    with pytest.raises(ValueError, match="no 'stats'"):
        score_images(loaded, queries)
    with pytest.raises(ValueError, match="no held-out"):
        attach_image_texture(model, paths, [], 0.5)
    attach_image_texture(model, paths, holdout, 0.0)  # weight 0 removes the term
    assert model.config.image_texture == {}
    np.testing.assert_allclose(score_images(model, holdout).score, plain, rtol=1e-6)


def test_image_texture_is_a_share_below_one_in_the_params():
    assert parse_params({"train": {"image_texture": 0.5}}).train.image_texture == 0.5
    for bad in (1.0, 1.5):  # at 1 the score would ignore the map, and the map would be empty
        with pytest.raises(ConfigError, match="train.image_texture"):
            parse_params({"train": {"image_texture": bad}})


def test_training_with_the_term_refuses_too_few_normals_before_it_starts(tmp_path):
    manifest = pl.DataFrame({"role": ["normal_shot", "normal_shot", "normal_holdout", "test"]})
    cfg = parse_params({"train": {"image_texture": 0.5}}).train
    with pytest.raises(ValueError, match=r"train.image_texture: 2 training normal\(s\).*ingest.holdout_fraction: 0"):
        train(manifest, None, None, cfg, tmp_path / "model")
    assert not (tmp_path / "model").exists()
