"""The open_clip backbone with a tiny random model built from a JSON config (nothing downloaded)."""

import json
from dataclasses import replace

import pytest
import torch

from tests.conftest import TINY_TRAIN
from tests.tiny_models import TINY_CLIP  # noqa: E402
from uniadc_core.config import ClipConfig
from uniadc_core.model.backbones import create_backbone
from uniadc_core.model.discriminator import load_model, save_model
from uniadc_core.model.train import FeatureCache, build_model, load_train_data, train_discriminator
from uniadc_core.synthesis.synthesize import load_inputs
from uniadc_core.weights import create_clip, resolve_pretrained


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    (d / "uniadc-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    return d


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'; valid: scratch, open_clip"):
        create_backbone("resnet", 8, 8, {})


def test_open_clip_backbone_gives_dense_features_in_the_joint_space(clip_dir):
    backbone = create_backbone("open_clip", 0, 0, {"model_name": "uniadc-tiny-clip", "pretrained": "", "layers": [0, 1],
                                                         "config_dir": str(clip_dir)})
    pre = backbone.preprocess
    assert pre.size == 64 and len(pre.mean) == 3
    feats, emb = backbone(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 16, 4, 4) and emb.shape == (2, 16)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("proj.") for n in trainable)  # the ViT is frozen


def test_weights_from_a_local_file_and_clear_errors(clip_dir, tmp_path):
    from safetensors.torch import save_file

    model, _ = create_clip("uniadc-tiny-clip", "", config_dir=str(clip_dir))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again, _ = create_clip("uniadc-tiny-clip", str(path), config_dir=str(clip_dir))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="not found; put the file there"):
        resolve_pretrained("uniadc-tiny-clip", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope' for open_clip model 'ViT-B-32'; valid: openai"):
        resolve_pretrained("ViT-B-32", "nope")
    with pytest.raises(FileNotFoundError, match="not in the local cache and train.clip.offline is true. Provide them"):
        resolve_pretrained("ViT-B-32", "openai", offline=True)
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        create_clip("no-such-model", "")


def test_train_save_load_round_trip_with_open_clip(tiny_dataset, tiny_shards, clip_dir, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    cfg = replace(TINY_TRAIN, backbone="open_clip", epochs=1,
                  clip=ClipConfig(model_name="uniadc-tiny-clip", pretrained="", layers=[0, 1], config_dir=str(clip_dir)))
    data = load_train_data(manifest, vocab, tiny_shards, 64)
    model, history = train_discriminator(data, vocab, cfg, progress=False)
    assert model.config.embed_dim == 16 and model.config.mean[0] == pytest.approx(0.4815, abs=1e-4)
    assert len(history) == 1
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = data.val.images[:3]
    a, b = model.predict(x), loaded.predict(x)
    assert torch.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5) and torch.equal(a.pixel_types, b.pixel_types)
    with pytest.raises(ValueError, match="takes 64 px; set train.image_size: 64"):
        train_discriminator(load_train_data(manifest, vocab, tiny_shards, 32), vocab, cfg, progress=False)


def _clip_cfg(clip_dir, **kw):
    return replace(TINY_TRAIN, backbone="open_clip", epochs=2,
                   clip=ClipConfig(model_name="uniadc-tiny-clip", pretrained="", layers=[0, 1], config_dir=str(clip_dir)), **kw)


def test_cached_frozen_features_give_the_same_outputs_and_training(tiny_dataset, tiny_shards, clip_dir):
    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, 64)
    model = build_model(data, vocab, _clip_cfg(clip_dir)).eval()
    assert model.has_frozen_part and not build_model(data, vocab, TINY_TRAIN).has_frozen_part
    cache = FeatureCache(1.0, torch.device("cpu"))
    images, keys = data.val.images[:4], [f"k{i}" for i in range(4)]
    with torch.no_grad():
        direct, _ = model(images)
        cached, _ = model.forward_frozen(cache.frozen(model, images, keys), images.shape[-2:])
        again, _ = model.forward_frozen(cache.frozen(model, images, keys), images.shape[-2:])
    assert cache.misses == 4 and cache.hits == 4 and cache.bytes > 0
    assert torch.allclose(direct, cached, atol=0.05, rtol=0.01) and torch.equal(cached, again)  # half-precision storage
    # a cap of zero bytes stores nothing and still gives the outputs
    tiny = FeatureCache(0.0, torch.device("cpu"))
    with torch.no_grad():
        capped, _ = model.forward_frozen(tiny.frozen(model, images, keys), images.shape[-2:])
    assert torch.equal(capped, cached) and not tiny.store
    on, h_on = train_discriminator(data, vocab, _clip_cfg(clip_dir, cache_features="on"), progress=False)
    off, h_off = train_discriminator(data, vocab, _clip_cfg(clip_dir, cache_features="off"), progress=False)
    for a, b in zip(h_on, h_off, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)


def test_implicit_normal_class_trains_saves_and_loads(tiny_dataset, tiny_shards, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, 64)
    model, history = train_discriminator(data, vocab, replace(TINY_TRAIN, normal_class="implicit"), progress=False)
    assert model.type_embeddings.shape == (len(vocab.defect_types), 8)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.normal_class == "implicit" and "normal_logit" in loaded.state_dict()
    x = data.val.images[:3]
    a, b = model.predict(x), loaded.predict(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and a.type_probs.shape == (3, len(vocab.defect_types))
