"""The training stream: row groups split across DataLoader workers, the mixing ratio, determinism."""

from collections import Counter
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import TINY_TRAIN
from uniadc_core.config import ConfigError, parse_params
from uniadc_core.data.shards import is_validation_sample, read_samples
from uniadc_core.model.loader import MixedStream, _crop_and_jitter, make_loader
from uniadc_core.model.train import load_train_data, samples_per_epoch
from uniadc_core.synthesis.synthesize import load_inputs


@pytest.fixture(scope="module")
def data(tiny_dataset, tiny_shards):
    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    return load_train_data(manifest, vocab, tiny_shards, 64)


def _stream(data, steps=12, p_syn=0.5, p_shot=0.1, seed=0, batch=8):
    return MixedStream(data.normals, data.shots, data.units, data.pre, batch, steps, p_syn, p_shot, seed)


def _epoch(stream, workers, epoch=0):
    stream.set_epoch(epoch)
    return list(make_loader(stream, workers))


def test_row_groups_cover_the_shards_and_validation_is_held_out(data, tiny_shards):
    table = read_samples(tiny_shards, columns=["sample_id"])
    assert sum(u.rows for u in data.units) == table.num_rows
    assert len(data.units) == sum(pq.ParquetFile(p).metadata.num_row_groups for p in {u.path for u in data.units})
    n_val = sum(is_validation_sample(s) for s in table.column("sample_id").to_pylist())
    n_holdout = len(data.val.classes) - n_val
    assert n_val > 0 and n_holdout > 0
    batches = _epoch(_stream(data, steps=30, p_syn=0.9, p_shot=0.0), 0)
    seen = {k.split("|")[0][4:] for b in batches for k in b["key"] if k.startswith("syn:")}
    assert seen and not any(is_validation_sample(s) for s in seen)


@pytest.mark.slow  # worker processes
def test_two_workers_read_disjoint_row_groups_and_are_deterministic(data):
    stream = _stream(data, steps=8, p_syn=0.9, p_shot=0.0)
    first, again = _epoch(stream, 2), _epoch(stream, 2)
    assert len(first) == 8 and all(b["image"].shape == (8, 3, 64, 64) and b["image"].dtype == torch.uint8 for b in first)
    for a, b in zip(first, again, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # the DataLoader takes batches from workers in turn: even batches from worker 0, odd from worker 1
    groups = {}
    for unit in data.units:
        for sid in pq.ParquetFile(unit.path).read_row_group(unit.index, columns=["sample_id"]).column(0).to_pylist():
            groups[sid] = (unit.path, unit.index)
    by_worker = [{groups[k.split("|")[0][4:]] for b in first[w::2] for k in b["key"] if k.startswith("syn:")} for w in (0, 1)]
    assert by_worker[0] and by_worker[1] and not by_worker[0] & by_worker[1]
    # another epoch deals the row groups again in another order; persistent workers see the new epoch
    second = [b["key"] for b in _epoch(stream, 2, epoch=1)]
    assert second != [b["key"] for b in first]
    loader = make_loader(stream, 2)
    stream.set_epoch(0)
    assert [b["key"] for b in loader] == [b["key"] for b in first]
    stream.set_epoch(1)
    assert [b["key"] for b in loader] == second


def test_mixing_ratio_and_labels(data):
    batches = _epoch(_stream(data, steps=100, p_syn=0.5, p_shot=0.1), 0)
    kinds = Counter(k.split(":")[0] for b in batches for k in b["key"])
    n = sum(kinds.values())
    assert n == 800
    assert abs(kinds["syn"] / n - 0.5) < 0.05 and abs(kinds["shot"] / n - 0.1) < 0.03
    for b in batches:  # a synthetic or shot sample carries a defect mask; a normal an empty one
        for key, mask in zip(b["key"], b["mask"], strict=True):
            assert (mask.max() > 0) == (not key.startswith("normal:")), key
    # every normal appears in an epoch of at least n_normals / normal share samples
    need = samples_per_epoch(data, replace(TINY_TRAIN, synthetic_fraction=0.5, shot_fraction=0.1, min_epoch_samples=0))
    batches = _epoch(_stream(data, steps=-(-need // 8), p_syn=0.5, p_shot=0.1), 0)
    normals = {k.split("|")[0] for b in batches for k in b["key"] if k.startswith("normal:")}
    assert len(normals) >= 0.8 * len(data.normals.classes)


def test_flips_are_applied_and_recorded(data):
    stream = _stream(data, steps=4, p_syn=0.0, p_shot=0.0)
    for b in _epoch(stream, 0):
        for key, image in zip(b["key"], b["image"], strict=True):
            i = int(key.split("|")[0].split(":")[1])
            h, v = key.split("|")[1]
            expected = data.normals.images[i]
            if h == "1":
                expected = expected.flip(-1)
            if v == "1":
                expected = expected.flip(-2)
            assert torch.equal(image, expected)


def test_mix_shares_must_leave_room_for_normals():
    with pytest.raises(ConfigError, match="'train.synthetic_fraction' .* must sum to less than 1"):
        parse_params({"train": {"synthetic_fraction": 0.8, "shot_fraction": 0.2}})
    with pytest.raises(ConfigError, match="train.loader_workers"):
        parse_params({"train": {"loader_workers": -1}})


def test_batches_mix_row_groups_and_defect_types(data):
    groups, types = {}, {}
    for unit in data.units:
        table = pq.ParquetFile(unit.path).read_row_group(unit.index, columns=["sample_id", "defect_type"])
        for sid, dt in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
            groups[sid], types[sid] = (unit.path, unit.index), dt
    # the synthesis plan is shuffled: row groups hold several types, not one sorted run
    assert sum(len({types[s] for s in groups if groups[s] == g}) > 1 for g in set(groups.values())) >= len(set(groups.values())) // 2
    batches = _epoch(_stream(data, steps=10, p_syn=0.99, p_shot=0.0), 0)
    ids = [[k.split("|")[0][4:] for k in b["key"] if k.startswith("syn:")] for b in batches]
    assert min(len({groups[s] for s in b}) for b in ids) >= 2  # each batch draws on several row groups
    assert sum(len({types[s] for s in b}) for b in ids) / len(ids) >= 2.5


def test_strong_augmentation_crops_image_and_mask_together(data):
    def stream(aug):
        return MixedStream(data.normals, data.shots, data.units, data.pre, 8, 6, 0.9, 0.0, 0, aug)

    strong, again, plain = _epoch(stream("strong"), 0), _epoch(stream("strong"), 0), _epoch(stream("none"), 0)
    for a, b in zip(strong, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])  # seeded
    seen = {v for b in plain for v in b["mask"].unique().tolist()}
    for b, p in zip(strong, plain, strict=True):
        assert b["image"].shape == p["image"].shape and b["image"].dtype == torch.uint8
        assert set(b["mask"].unique().tolist()) <= seen | {0}
        assert not torch.equal(b["image"], p["image"])
    # geometry: a bright square marked in the mask is still exactly where the mask says after the crop
    image = torch.full((3, 64, 64), 40, dtype=torch.uint8)
    image[:, 20:40, 24:44] = 220
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[20:40, 24:44] = 3
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        out, m = _crop_and_jitter(image, mask, gen)
        assert set(m.unique().tolist()) <= {0, 3}
        bright = out[0].float() > out[0].float().mean()
        inside = m > 0
        if inside.sum() > 20:
            assert (bright == inside).float().mean() > 0.95
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        stream("wild")
