"""DRAEM's reconstruction branch: the autoencoder, its targets in the stream, its loss, and the model folder."""

import dataclasses

import pytest
import torch

from tests.conftest import TINY_TRAIN
from uniadc_core.config import parse_params
from uniadc_core.model.discriminator import Discriminator, ModelConfig, load_model, save_model
from uniadc_core.model.reconstruction import Reconstructor, reconstruction_loss, ssim
from uniadc_core.model.train import load_train_data, train_step, training_stream
from uniadc_core.synthesis.synthesize import load_inputs

RECON_TRAIN = dataclasses.replace(TINY_TRAIN, reconstruction=dataclasses.replace(TINY_TRAIN.reconstruction, enabled=True, width=8))


def _model(**kw) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(ModelConfig(defect_types=["crack", "hole"], image_size=64, width=8, embed_dim=8, reconstruction={"width": 8}, **kw)).eval()


def test_ssim_and_the_loss_on_known_pairs():
    a = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5) and (ssim(a, torch.rand(2, 3, 32, 32)) < 0.2).all()
    assert reconstruction_loss(a, a, torch.ones(2)).item() == pytest.approx(0.0, abs=1e-5)
    b = a.clone()
    b[1] = 1 - b[1]
    assert reconstruction_loss(b, a, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-5)  # weight 0: ignored
    assert reconstruction_loss(b, a, torch.tensor([0.0, 1.0])).item() > 0.3
    assert Reconstructor(4)(torch.randn(1, 3, 48, 64)).shape == (1, 3, 48, 64)


def test_the_discriminator_sees_image_and_reconstruction_and_round_trips(tmp_path):
    model = _model()
    assert model.backbone.stem[0][0].in_channels == 6 and model.reconstructor is not None
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    logits, _, recon = model.forward_with_reconstruction(images)
    assert logits.shape == (2, 3, 64, 64) and recon.shape == (2, 3, 64, 64)
    assert model.reconstruct(images).dtype == torch.uint8
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert any(k.startswith("reconstructor.") for k in loaded.state_dict())
    assert torch.equal(loaded.predict(images).anomaly_map, model.predict(images).anomaly_map)  # one scoring path, saved whole
    with pytest.raises(ValueError, match=r"train.reconstruction.enabled needs train.backbone: scratch"):
        Discriminator(ModelConfig(defect_types=["crack"], backbone="torchvision", backbone_options={"arch": "resnet18", "weights": ""},
                                  reconstruction={"width": 8}))
    with pytest.raises(ValueError, match="this model has no reconstructor"):
        Discriminator(ModelConfig(defect_types=["crack"], image_size=64, width=8, embed_dim=8)).reconstruct(images)


def test_the_stream_carries_each_samples_clean_normal(tiny_dataset, tiny_shards):
    manifest, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, 64)
    plain = list(training_stream(data, TINY_TRAIN, 4))
    with_clean = list(training_stream(data, RECON_TRAIN, 4))
    assert [s["key"] for s in plain] == [s["key"] for s in with_clean]  # the same draws: the default stream is unchanged
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(plain, with_clean, strict=True))
    assert "clean" not in plain[0]
    normals = {tuple(img.flatten()[:64].tolist()): img for img in data.normals.images}
    seen = set()
    for s in with_clean:
        kind = s["key"].split(":")[0]
        seen.add(kind)
        if kind == "normal":
            assert s["has_clean"] and torch.equal(s["clean"], s["image"])
        elif kind == "syn":
            assert s["has_clean"]  # painted on a normal shot: its source, under the same flips
            flips = s["key"].split("|")[1]
            dims = [d for d, f in zip((-1, -2), flips, strict=True) if f == "1"]
            unflipped = s["clean"].flip(dims) if dims else s["clean"]
            assert tuple(unflipped.flatten()[:64].tolist()) in normals
            outside = s["mask"] == 0
            assert (s["clean"].float() - s["image"].float()).abs()[:, outside].mean() < 8  # the same image away from the defect
        else:
            assert not s["has_clean"]  # a real anomaly shot: no clean image known
    assert {"normal", "syn"} <= seen


def test_a_training_step_learns_to_reconstruct(tiny_dataset, tiny_shards):
    manifest, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, 64)
    from uniadc_core.model.train import build_model

    torch.manual_seed(0)
    model = build_model(data, vocab, RECON_TRAIN).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(enabled=False)
    batch = torch.utils.data.default_collate(list(training_stream(data, RECON_TRAIN, 1)))
    first = train_step(model, opt, scaler, batch, RECON_TRAIN, torch.device("cpu"))["recon"].item()
    for _ in range(30):
        last = train_step(model, opt, scaler, batch, RECON_TRAIN, torch.device("cpu"))["recon"].item()
    assert last < 0.75 * first  # the autoencoder fits its targets (standalone it halves the loss in 30 steps)
    cfg = parse_params({"train": {"reconstruction": {"enabled": True, "width": 8, "loss_weight": 0.5}}}).train
    assert cfg.reconstruction.enabled and cfg.reconstruction.loss_weight == 0.5


def test_a_memory_of_the_autoencoders_features(tmp_path):
    from uniadc_core.config import MemoryConfig
    from uniadc_core.model.fusion import attach_memory

    model = _model()
    normals = torch.randint(0, 255, (6, 3, 64, 64), dtype=torch.uint8)
    cfg = MemoryConfig(weight=1.0, size=64, features="autoencoder", max_patches=2000)
    attach_memory(model, normals[:4], normals[4:], cfg, seed=0)
    assert model.patch_features(normals[:1]).shape == (1, 8 * 8, 8, 8)  # the encoder's H/8 and H/16 levels, 4w channels each
    assert model.memory.bank.shape[1] == 64 and model.config.memory["features"] == "autoencoder"
    with torch.no_grad():
        expected = model.reconstructor.patches(model.normalise(normals[:1]))
    assert torch.equal(model.patch_features(normals[:1]), expected)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.predict(normals).anomaly_map, model.predict(normals).anomaly_map)
    plain = Discriminator(ModelConfig(defect_types=["crack"], image_size=64, width=8, embed_dim=8))
    with pytest.raises(ValueError, match=r"train.memory.features: autoencoder needs train.reconstruction.enabled: true"):
        attach_memory(plain, normals[:4], normals[4:], cfg)
