"""The texture filter bank as the normal memory's features: descriptors, standardisation, a memory that sees a finish."""

import pytest
import torch

from uniadc_core.config import ConfigError, MemoryConfig, parse_params
from uniadc_core.model.discriminator import Discriminator, ModelConfig, load_model, save_model
from uniadc_core.model.fusion import attach_memory, texture_norm
from uniadc_core.model.memory import gaussian_blur
from uniadc_core.model.texture import CHANNELS, STRIDE, texture_patches


def _surface(n: int, size: int = 64, grain: float = 40.0, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) uint8 grey surfaces with a fine random grain of ``grain`` grey levels."""
    gen = torch.Generator().manual_seed(seed)
    x = 120 + grain * (torch.rand(n, 1, size, size, generator=gen) - 0.5)
    return x.clamp(0, 255).to(torch.uint8).expand(n, 3, size, size).contiguous()


def test_descriptors_see_brightness_bands_energy_and_direction():
    flat = torch.full((1, 3, 32, 48), 100, dtype=torch.uint8)
    p = texture_patches(flat)
    assert p.shape == (1, CHANNELS, 32 // STRIDE, 48 // STRIDE) and torch.isfinite(p).all()
    assert p[0, 0:8:2].abs().max() < 1e-4  # no band-pass brightness anywhere on a flat surface (rounding aside)
    stripes = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    stripes[..., ::4] = 255  # vertical lines: the brightness changes along x only
    s = texture_patches(stripes)[0]
    horizontal, vertical = s[8].mean(), s[9].mean()  # log energy of the x and of the y gradient, sigma 1
    assert horizontal > vertical + 5
    assert s[1].mean() > p[0, 1].mean() + 5  # the finest band's energy: lines against a flat surface
    tiny = texture_patches(torch.zeros(1, 3, 6, 5, dtype=torch.uint8))  # smaller than a kernel
    assert tiny.shape == (1, CHANNELS, 1, 1) and torch.isfinite(tiny).all()
    with pytest.raises(ValueError, match="smaller than one 4 px cell"):
        texture_patches(torch.zeros(1, 3, 3, 40, dtype=torch.uint8))


def test_a_blur_of_a_map_narrower_than_its_kernel_cuts_the_kernel():
    spike = torch.zeros(1, 5, 40)
    spike[0, 2, 20] = 1.0
    out = gaussian_blur(spike, 4.0)  # radius 12 along x, cut to 4 along y (reflection needs radius < width)
    assert out.shape == spike.shape and out[0, 2].argmax().item() == 20
    assert out[0, 2, 12] > 0 and out[0, 0, 20] > 0  # spread along x and along y
    flat = torch.full((1, 3, 7), 2.5)
    assert torch.allclose(gaussian_blur(flat, 8.0), flat)  # a constant stays constant
    assert torch.equal(gaussian_blur(torch.ones(1, 1, 1), 3.0), torch.ones(1, 1, 1))  # one pixel: nothing to blur


def test_a_texture_memory_flags_a_smooth_patch_on_a_grainy_surface_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Discriminator(ModelConfig(defect_types=["uneven"], image_size=64, width=8, embed_dim=8)).eval()
    normals = _surface(8)
    cfg = MemoryConfig(weight=1.0, size=256, features="texture", max_patches=4000, augment="none", smooth=0.0)
    attach_memory(model, normals[:6], normals[6:], cfg, seed=0)
    memory = model.config.memory
    assert memory["features"] == "texture" and len(memory["norm"][0]) == CHANNELS == model.memory.bank.shape[1]
    assert memory["norm"] == texture_norm(normals[:6])
    bank = model.patch_features(normals[:6]).permute(0, 2, 3, 1).reshape(-1, CHANNELS)
    assert bank.mean(0).abs().max() < 1e-3 and (bank.std(0) - 1).abs().max() < 1e-2  # standardised on the normals
    query = _surface(1, seed=5)
    query[..., 16:48, 16:48] = 120  # a polished square: no grain, same mean brightness
    amap = model.predict(query).anomaly_map[0]
    inside, outside = amap[24:40, 24:40].mean(), amap[:, :8].mean()
    assert inside > outside + 2.0  # fused z-scores: the smooth finish is far from every normal patch
    assert model.predict(_surface(1, seed=6)).anomaly_map[0].max() < inside
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.config.memory["norm"] == memory["norm"]
    assert torch.equal(loaded.predict(query).anomaly_map, model.predict(query).anomaly_map)
    del loaded.config.memory["norm"]
    with pytest.raises(ValueError, match="no 'norm'"):
        loaded.predict(query)


def test_texture_is_a_memory_feature_of_the_params():
    assert parse_params({"train": {"memory": {"weight": 0.5, "features": "texture"}}}).train.memory.features == "texture"
    with pytest.raises(ConfigError, match="'train.memory.features': got 'gabor'"):
        parse_params({"train": {"memory": {"features": "gabor"}}})
