import json
import logging
import shutil

import pytest
import torch

from tests.conftest import TINY_TRAIN
from uniadc_core.model.discriminator import Discriminator, ModelConfig, discriminator_loss, load_model, save_model
from uniadc_core.model.train import load_train_data, train_discriminator
from uniadc_core.synthesis.synthesize import load_inputs


def _tiny(types=("crack", "hole")):
    torch.manual_seed(0)
    return Discriminator(ModelConfig(defect_types=list(types), image_size=64, width=8, embed_dim=8)).eval()


def test_prediction_shapes_and_ranges():
    model = _tiny()
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    p = model.predict(images)
    assert p.score.shape == (3,) and p.anomaly_map.shape == (3, 64, 64) and p.type_probs.shape == (3, 2)
    assert p.embedding.shape == (3, model.backbone.embed_channels)
    assert torch.isfinite(p.anomaly_map).all()  # log-odds
    assert torch.equal(p.score, torch.nn.functional.avg_pool2d(p.anomaly_map[:, None], 7, 1, 3, count_include_pad=False).flatten(1).max(1).values)
    assert torch.allclose(p.type_probs.sum(1), torch.ones(3), atol=1e-5)
    assert set(p.pixel_types.unique().tolist()) <= {1, 2}


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = _tiny()
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    a, b = model.predict(images), loaded.predict(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.type_probs, b.type_probs)
    assert loaded.config == model.config


def test_load_refuses_mismatches(tmp_path):
    save_model(_tiny(), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["defect_types"] = ["crack", "hole", "stain"]  # one more type than the weights hold
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights do not match config.json"):
        load_model(tmp_path / "m")
    cfg["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model format 99"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="nothing/config.json: not found"):
        load_model(tmp_path / "nothing")


def test_a_truncated_altered_or_missing_weight_file_is_named_with_the_stage_to_rerun(tmp_path):
    model = _tiny()
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    record = json.loads((tmp_path / "m" / "config.json").read_text())["files"]["model.safetensors"]
    assert record["size"] == weights.stat().st_size and len(record["sha256"]) == 64
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(ValueError, match=r"m/model.safetensors: \d+ bytes where .*config.json records \d+ \(truncated or replaced\); "
                       r"re-run the train stage \(`dvc repro train`\)"):
        load_model(tmp_path / "m")
    altered = bytearray(good)
    altered[-8:] = b"\x00" * 8  # same size, other bytes
    weights.write_bytes(bytes(altered))
    with pytest.raises(ValueError, match=r"model.safetensors: its sha256 is not the one .*config.json records"):
        load_model(tmp_path / "m")
    weights.write_bytes(good)
    assert torch.equal(load_model(tmp_path / "m").predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).anomaly_map,
                       model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).anomaly_map)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors: not found.*train stage"):
        load_model(tmp_path / "m")


def test_loss_prefers_the_right_answer():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 2
    good = torch.full((1, 3, 8, 8), -5.0)
    good[:, 0] = 5.0
    good[0, :, 2:5, 2:5] = torch.tensor([-5.0, -5.0, 5.0]).view(3, 1, 1)
    wrong_type = good.clone()
    wrong_type[0, 1:, 2:5, 2:5] = torch.tensor([5.0, -5.0]).view(2, 1, 1)
    missed = torch.full((1, 3, 8, 8), -5.0)
    missed[:, 0] = 5.0
    lg, lt, lm = (discriminator_loss(x, target) for x in (good, wrong_type, missed))
    assert lg["loss"] < lt["loss"] and lg["loss"] < lm["loss"]
    assert lt["type_ce"] > 5 and lg["type_ce"] < 0.01 and lm["dice"] > 0.85


def test_training_reduces_loss_and_keeps_the_best_epoch(tiny_dataset, tiny_shards):
    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, TINY_TRAIN.image_size)
    assert len(data.val.classes) > 0 and len(data.shots.classes) == 6
    model, history = train_discriminator(data, vocab, TINY_TRAIN, progress=False)
    assert len(history) == TINY_TRAIN.epochs
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert sum(1 for h in history if h.get("best")) >= 1
    assert model.config.defect_types == vocab.defect_types


def test_interrupted_training_resumes_to_the_same_model(tiny_dataset, tiny_shards, tmp_path, caplog):
    from dataclasses import replace

    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, TINY_TRAIN.image_size)
    cfg = replace(TINY_TRAIN, epochs=3)
    straight, h1 = train_discriminator(data, vocab, cfg, progress=False)
    ckpt = tmp_path / "ckpt"
    train_discriminator(data, vocab, cfg, progress=False, checkpoint=ckpt, stop_after=1)  # "crash" after epoch 1
    assert json.loads((ckpt / "progress.json").read_text())["epoch"] == 1
    resumed, h2 = train_discriminator(data, vocab, cfg, progress=False, checkpoint=ckpt)
    assert [h["epoch"] for h in h2] == [1, 2, 3]
    assert [round(h["train_loss"], 6) for h in h2] == [round(h["train_loss"], 6) for h in h1]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # a checkpoint made with other params is ignored, not resumed
    other, h3 = train_discriminator(data, vocab, replace(cfg, lr=0.001), progress=False, checkpoint=ckpt, stop_after=1)
    assert len(h3) == 1
    # a damaged checkpoint (a power cut mid-write, a disk fault) is named and ignored: training starts over
    for damaged, content in (("progress.json", b"{"), ("state.safetensors", b"\x10" + bytes(7) + b"{"), ("optimizer.pt", b"PK\x03\x04")):
        shutil.rmtree(ckpt)
        train_discriminator(data, vocab, cfg, progress=False, checkpoint=ckpt, stop_after=1)
        (ckpt / damaged).write_bytes(content)
        with caplog.at_level(logging.WARNING, logger="uniadc_core"):
            again, h4 = train_discriminator(data, vocab, cfg, progress=False, checkpoint=ckpt)
        assert f"{ckpt} cannot be read" in caplog.text and "starts from the first epoch" in caplog.text, damaged
        assert [round(h["train_loss"], 6) for h in h4] == [round(h["train_loss"], 6) for h in h1], damaged
        for (k, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), (damaged, k)
        caplog.clear()


def test_training_twice_on_the_same_inputs_gives_byte_identical_model_folders(tiny_dataset, tiny_shards, tmp_path):
    import os
    import stat

    from uniadc_core.io import timings_path
    from uniadc_core.model.train import train

    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    folders = [train(manifest, vocab, tiny_shards, TINY_TRAIN, tmp_path / f"run{i}" / "discriminator") for i in range(2)]
    files = [sorted(p.name for p in f.iterdir()) for f in folders]
    assert files[0] == files[1] and "model.safetensors" in files[0] and "history.json" in files[0]
    for name in files[0]:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    assert all("seconds" not in rec for rec in json.loads((folders[0] / "history.json").read_text()))
    timings = json.loads(timings_path(folders[0]).read_text())  # the wall times, outside the hashed folder
    assert [t["epoch"] for t in timings] == [1, 2] and all(t["seconds"] > 0 for t in timings)
    umask = os.umask(0)
    os.umask(umask)
    for f in folders[0].iterdir():  # the usual permissions (safetensors alone writes 0600)
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name
