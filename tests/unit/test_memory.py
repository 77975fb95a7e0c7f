"""The normal-feature memory, the torchvision backbone from local weights, and the fused map through save/load."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_TRAIN, train_with_memory
from uniadc_core.config import MemoryConfig, TorchvisionConfig
from uniadc_core.model.discriminator import MEMORY_FILE, load_model, save_model
from uniadc_core.model.fusion import FEW_NORMALS, _patches, attach_memory, class_groups, resolve_augment, views
from uniadc_core.model.memory import NormalMemory, coverage_radius, gaussian_blur, greedy_coreset
from uniadc_core.model.terms import DISCRIMINATOR_ONLY
from uniadc_core.synthesis.synthesize import load_inputs
from uniadc_core.weights import load_torchvision

SHARED_WEIGHTS = Path(__file__).resolve().parents[3] / "shared/weights/mobilenet_v2_imagenet.safetensors"


def _clusters(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Points in 20 tight clusters of very different sizes: a random subset misses the small ones."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([1000, 800, 400] + [45] * 17)[:20]
    centres = torch.randn(20, 16, generator=gen) * 10
    return torch.cat([c + 0.1 * torch.randn(int(k), 16, generator=gen) for c, k in zip(centres, sizes)])[:n]


def test_coreset_keeps_its_size_and_covers_better_than_random():
    x = _clusters()
    picks = greedy_coreset(x, 40, seed=0)
    assert len(picks) == 40 and len(set(picks.tolist())) == 40
    rand = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:40]
    greedy_r, random_r = coverage_radius(x, x[picks]), coverage_radius(x, x[rand])
    assert greedy_r < 0.5 * random_r, (greedy_r, random_r)  # every cluster gets a memory point
    assert len(NormalMemory.build(x, 40, "random", 0)) == 40 and len(NormalMemory.build(x[:10], 40)) == 10
    with pytest.raises(ValueError, match="unknown memory selection 'best'"):
        NormalMemory.build(x, 40, "best")


def test_memory_distances_are_the_nearest_neighbour_distances():
    gen = torch.Generator().manual_seed(1)
    bank, query = torch.randn(500, 24, generator=gen), torch.randn(700, 24, generator=gen)
    memory = NormalMemory(bank)
    exact = torch.cdist(query.double(), bank.double())
    torch.testing.assert_close(memory.distances(query, k=1, block=128 * len(bank)).double(), exact.min(1).values, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(memory.distances(query, k=3).double(), exact.topk(3, largest=False).values.mean(1), atol=1e-3, rtol=1e-4)
    assert float(memory.distances(bank[:5]).max()) < 1e-2  # a memory patch is at distance 0 from itself


def test_nearest_rows_are_found_exactly_far_from_the_origin():
    """Features with a large common offset (unnormalised activations): the nearest row and its distance are those of
    an exact float64 search, for every query alone as in any batch (the product must not reorder near rows)."""
    gen = torch.Generator().manual_seed(2)
    unit = torch.nn.functional.normalize  # rows of length 1 (dim 1 by default)
    query = 300.0 + torch.randn(200, 64, generator=gen)
    near = query + unit(torch.randn(200, 64, generator=gen))  # at distance 1 from its query
    second = query + 1.05 * unit(torch.randn(200, 64, generator=gen))  # at 1.05: a near tie, inside the product's rounding
    memory = NormalMemory(torch.cat([second, near, 300.0 + torch.randn(1000, 64, generator=gen)]))
    bank = memory.bank
    exact = torch.cdist(query.double(), bank.double()).min(1).values
    batched = memory.distances(query, k=1, block=64 * len(bank)).double()
    alone = torch.cat([memory.distances(query[i:i + 1], k=1) for i in range(len(query))]).double()
    torch.testing.assert_close(batched, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, batched, atol=1e-6, rtol=1e-6)


def test_gaussian_blur_keeps_the_mass_and_spreads_a_spike():
    spike = torch.zeros(1, 32, 32)
    spike[0, 16, 16] = 1.0
    out = gaussian_blur(spike, 2.0)
    assert out.shape == spike.shape and abs(float(out.sum()) - 1.0) < 1e-4 and float(out.max()) < 0.1
    assert torch.equal(gaussian_blur(spike, 0.0), spike)


def test_views_are_flips_and_turns():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    assert len(views(x, "none")) == 2 and len(views(x, "flip")) == 6 and len(views(x, "rot90")) == 12
    assert torch.equal(views(x, "rot90")[6:8], x.rot90(1, (-2, -1)))


def test_auto_augment_turns_a_few_shots_and_leaves_many_as_they_are():
    assert resolve_augment("auto", 2) == "rot90" and resolve_augment("auto", FEW_NORMALS) == "none"
    assert resolve_augment("flip", 500) == "flip" and resolve_augment("none", 1) == "none"


def test_batchnorm_folding_keeps_the_outputs_of_a_frozen_cnn():
    from uniadc_core.model.cnn import fold_batchnorm

    torch.manual_seed(0)
    net = load_torchvision("mobilenet_v2").eval()
    for m in net.modules():  # non-trivial statistics, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net.features[:7](x)
        folded = fold_batchnorm(net)
        after = folded.features[:7](x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.features.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    # a tapped convolution keeps its own output: its BatchNorm is not folded into it
    pair = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))).eval()
    fold_batchnorm(pair, keep=["0.0"])
    assert isinstance(pair[0][1], torch.nn.BatchNorm2d)
    fold_batchnorm(pair)
    assert isinstance(pair[0][1], torch.nn.Identity) and pair[0][0].bias is not None


def test_torchvision_weights_load_offline_with_clear_errors(tmp_path):
    from safetensors.torch import save_file

    net = load_torchvision("mobilenet_v2")  # random init
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = load_torchvision("mobilenet_v2", str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    torch.save(net.state_dict(), tmp_path / "plain.pth")  # a plain state dict: read with weights_only
    assert torch.equal(load_torchvision("mobilenet_v2", str(tmp_path / "plain.pth")).features[0][0].weight, net.features[0][0].weight)
    with pytest.raises(FileNotFoundError, match=r"train.torchvision.weights: .*missing.safetensors not found.*never downloaded"):
        load_torchvision("mobilenet_v2", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="does not hold 'resnet18' weights"):
        load_torchvision("resnet18", str(path))
    with pytest.raises(ValueError, match="unknown torchvision classification architecture 'resnet19'"):
        load_torchvision("resnet19")


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"shared MobileNetV2 weights not found at {SHARED_WEIGHTS}")
def test_the_shared_mobilenet_file_loads_and_gives_patch_features():
    from uniadc_core.model.cnn import TorchvisionBackbone, default_layers

    net = load_torchvision("mobilenet_v2", str(SHARED_WEIGHTS))
    backbone = TorchvisionBackbone(net, default_layers("mobilenet_v2"), embed_dim=8)
    (patches,) = backbone.encode_frozen(torch.zeros(2, 3, 256, 256))
    assert patches.shape == (2, 24 + 32 + 64, 32, 32) and torch.isfinite(patches).all()


@pytest.fixture(scope="module")
def tv_model(tiny_dataset, tiny_shards):
    cfg = replace(TINY_TRAIN, backbone="torchvision", epochs=1, torchvision=TorchvisionConfig(arch="mobilenet_v2", grid=8),
                  memory=MemoryConfig(weight=0.5, size=300, smooth=2.0))
    return train_with_memory(tiny_dataset, tiny_shards, cfg)


def test_torchvision_backbone_is_frozen_and_trains_its_neck(tv_model, tiny_dataset):
    from uniadc_core.model.train import build_model

    model, data = tv_model
    _, manifest_path, vocab_path = tiny_dataset
    torch.manual_seed(TINY_TRAIN.seed)  # as training starts: the same initial weights
    cfg = replace(TINY_TRAIN, backbone="torchvision", torchvision=TorchvisionConfig(arch="mobilenet_v2"))
    start = build_model(data, load_inputs(manifest_path, vocab_path)[1], cfg)
    trained, initial = model.backbone.state_dict(), start.backbone.state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in trained if k.startswith("cnn."))  # BatchNorm statistics too
    assert not all(torch.equal(trained[k], initial[k]) for k in trained if k.startswith("neck."))
    assert model.config.backbone_options["layers"] == ["features.3", "features.6", "features.10"]
    assert model.has_frozen_part and not model.backbone.cnn.training


def test_memory_and_fusion_round_trip_to_identical_maps(tv_model, tmp_path):
    model, data = tv_model
    disc, mem = model.config.terms
    assert len(model.memory) == 300 and (disc.name, disc.weight, mem.name, mem.weight) == ("discriminator", 0.5, "memory", 0.5)
    assert disc.std > 0 and mem.std > 0 and disc.pixels == mem.pixels == data.holdout.images[:, 0].numel()
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / MEMORY_FILE).is_file()
    again = load_model(tmp_path / "m", device="cpu")
    images = data.val.images[:6]
    a, b = model.predict(images), again.predict(images)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.score, b.score)
    assert again.config.terms == model.config.terms  # typed records through config.json
    # the fused map is the weighted sum of the two standardised terms
    _, _, maps = model.component_maps(images)
    expected = 0.5 * (maps["memory"] - mem.mean) / mem.std + 0.5 * (maps["discriminator"] - disc.mean) / disc.std
    torch.testing.assert_close(a.anomaly_map, expected)
    # the score: the fused map window-averaged (a lone pixel is noise), then its maximum
    pooled = torch.nn.functional.avg_pool2d(expected[:, None], 7, stride=1, padding=3, count_include_pad=False)[:, 0]
    torch.testing.assert_close(a.score, pooled.flatten(1).max(1).values)
    # the standardisers are each map's mean and spread over the held-out normal pixels
    _, _, held_maps = model.component_maps(data.holdout.images)
    for term in (disc, mem):
        m = held_maps[term.name].double()
        assert term.mean == pytest.approx(float(m.mean()), rel=1e-6) and term.std == pytest.approx(float(m.std(correction=0)), rel=1e-5)
    # held-out normals sit near 0 on the fused scale, training normals too (their patches are in the memory)
    held = model.predict(data.holdout.images).anomaly_map
    assert abs(float(held.mean())) < 0.5
    (tmp_path / "m" / MEMORY_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"memory.safetensors: missing, though .*config.json lists it; re-run the train stage"):
        load_model(tmp_path / "m")


def test_memory_patches_are_drawn_batch_by_batch_up_to_the_limit(tv_model):
    model, data = tv_model
    normals = data.normals.images[:5]
    h = w = normals.shape[-1] // 8  # the patch grid (stride 8)
    kept, total, origin = _patches(model, normals, "flip", limit=100, seed=0, batch_size=2)
    assert total == 5 * 3 * h * w and kept.shape == (100, model.patch_features(normals[:1]).shape[1])
    everything, total, origin = _patches(model, normals, "none", limit=10**9, seed=0, batch_size=2)
    direct = model.patch_features(normals).permute(0, 2, 3, 1).reshape(-1, kept.shape[1])
    assert total == len(everything) == 5 * h * w
    torch.testing.assert_close(everything, direct)


def test_memory_only_flags_a_pasted_foreign_patch(tv_model):
    model, data = tv_model
    fitted = model.config.terms
    model.config.terms = tuple(replace(t, weight=float(t.name == "memory")) for t in fitted)
    try:
        normal = data.holdout.images[:1].clone()
        odd = normal.clone()
        odd[..., 16:40, 16:40] = torch.tensor([255, 0, 255], dtype=torch.uint8).view(1, 3, 1, 1)  # a magenta square
        maps = model.predict(torch.cat([normal, odd])).anomaly_map.numpy()
    finally:
        model.config.terms = fitted
    inside = np.zeros(maps.shape[1:], bool)
    inside[20:36, 20:36] = True
    assert maps[1][inside].mean() > maps[0][inside].mean() + 1.0


def test_a_per_class_budget_keeps_a_plain_class_covered_beside_a_varied_one(tv_model):
    model, data = tv_model
    s = data.normals.images.shape[-1]
    gen = torch.Generator().manual_seed(0)
    plain = (128 + torch.randint(-4, 5, (6, 1, s, s), generator=gen)).expand(6, 3, s, s).to(torch.uint8)  # a flat tile
    varied = torch.randint(0, 256, (6, 3, s, s), generator=gen).to(torch.uint8)  # a busy board
    normals, classes = torch.cat([plain, varied]), ["tile"] * 6 + ["board"] * 6
    per_class = attach_memory(copy.deepcopy(model), normals, data.holdout.images, MemoryConfig(weight=1.0, size=40), classes=classes)
    total = attach_memory(copy.deepcopy(model), normals, data.holdout.images, MemoryConfig(weight=1.0, size=80, budget="total"), classes=classes)
    assert len(per_class.memory) == len(total.memory) == 80  # 40 per class, or 80 for the two together
    tile_patches, _, _ = _patches(model, plain, "none", 10**6, seed=0)
    # one coreset over both spends its centres on the busy class: the flat one is covered worse by the same bank size
    assert per_class.memory.distances(tile_patches).max() < 0.5 * total.memory.distances(tile_patches).max()
    unlabelled = attach_memory(copy.deepcopy(model), normals, data.holdout.images, MemoryConfig(weight=1.0, size=80))
    torch.testing.assert_close(unlabelled.memory.bank, total.memory.bank)  # no class names: one class, as budget total
    assert list(class_groups(classes, 12, "per_class")) == ["board", "tile"]
    with pytest.raises(ValueError, match="11 class names for 12 normal images"):
        class_groups(classes[:11], 12, "per_class")


def test_leaving_an_item_out_drops_its_rows():
    bank = torch.arange(12, dtype=torch.float32).view(6, 2)
    memory = NormalMemory(bank, torch.tensor([0, 1, 0, 2, 1, 1]))
    less = memory.without(1)
    torch.testing.assert_close(less.bank, bank[[0, 2, 3]])
    assert less.sources.tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="every row comes from item 0"):
        NormalMemory(bank[:2], sources=torch.tensor([0, 0])).without(0)
    with pytest.raises(ValueError, match="which item each row came from.*retrain"):
        NormalMemory(bank).without(0)
    with pytest.raises(ValueError, match=r"sources of shape \(5,\) for a bank of 6 rows"):
        NormalMemory(bank, sources=torch.zeros(5))


def test_memory_patches_name_the_image_they_came_from(tv_model):
    model, data = tv_model
    normals = data.normals.images[:5]
    kept, total, origin = _patches(model, normals, "flip", limit=10**9, seed=0, batch_size=2)
    assert len(kept) == len(origin) == total
    for i in range(5):  # the rows said to come from image i are exactly the patches of its three views
        own = model.patch_features(views(normals[i:i + 1], "flip"))
        own = own.permute(0, 2, 3, 1).reshape(-1, own.shape[1])
        mine = kept[origin == i]
        assert len(mine) == len(own) and float(torch.cdist(mine, own).min(1).values.max()) < 1e-4
    some, _, drawn_from = _patches(model, normals, "flip", limit=50, seed=1, batch_size=2)
    everything = dict(zip(map(tuple, kept.tolist()), origin.tolist()))
    assert [everything[tuple(r)] for r in some.tolist()] == drawn_from.tolist()


def _grouped_shots(manifest):
    """The tiny demo's normal shots, two images to an item (``group``), and the manifest with those groups."""
    import polars as pl

    from uniadc_core.data.manifest import Role

    shots = manifest.filter(pl.col("role") == Role.NORMAL_SHOT)
    groups = [f"{c}-{i // 2}" for i, c in enumerate(shots["object_class"].to_list())]
    named = dict(zip(shots["image_id"].to_list(), groups))
    grouped = manifest.with_columns(pl.col("image_id").replace_strict(named, default=None).alias("group"))
    return grouped.filter(pl.col("role") == Role.NORMAL_SHOT), grouped


def test_leave_item_out_scores_are_those_of_a_memory_that_never_saw_the_item(tv_model, tiny_dataset, tmp_path):
    from uniadc_core.cada.fit import leave_item_out_scores, normal_statistics
    from uniadc_core.model.scoring import score_paths

    model, data = tv_model
    shots, grouped = _grouped_shots(tiny_dataset[0])
    assert shots["image_id"].to_list() == list(data.normals.ids)  # the order training reads the normal shots in
    items, everything = shots["group"].to_list(), MemoryConfig(weight=1.0, size=10**6, max_patches=10**7)  # no subsampling
    lio = attach_memory(copy.deepcopy(model), data.normals.images, data.holdout.images, everything, items=items)
    save_model(lio, tmp_path / "m")
    lio = load_model(tmp_path / "m", device="cpu")  # the items survive the model folder
    assert lio.config.memory["items"] == sorted(set(items)) and lio.memory.sources is not None
    rows, s = leave_item_out_scores(lio, shots)
    assert sorted(rows["image_id"].to_list()) == sorted(shots["image_id"].to_list())
    item = items[0]
    mine = [i for i, x in enumerate(items) if x == item]
    others = [i for i, x in enumerate(items) if x != item]
    ref = attach_memory(copy.deepcopy(model), data.normals.images[others], data.holdout.images, everything, items=[items[i] for i in others])
    ref.config.terms = lio.config.terms  # the same fusion scale, so the two scores compare
    paths = shots["path"].to_list()
    expected = score_paths(ref, [paths[i] for i in mine]).score
    got = s.score[[rows["image_id"].to_list().index(shots["image_id"][i]) for i in mine]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    in_sample = score_paths(lio, [paths[i] for i in mine]).score  # its own patches are in the full memory
    assert (in_sample < got).all()
    stats, _, _, normals = normal_statistics(lio, grouped, leave_item_out=True)
    held, _, _, _ = normal_statistics(lio, grouped)
    for cls, st in stats.items():  # every class's statistics now count its training normals too
        assert st.count == held[cls].count + shots.filter(shots["object_class"] == cls).height
    assert normals.height == sum(st.count for st in stats.values())


def test_leave_item_out_needs_a_memory_that_knows_its_items(tv_model, tiny_dataset):
    from uniadc_core.cada.fit import leave_item_out_scores

    model, data = tv_model
    shots, _ = _grouped_shots(tiny_dataset[0])
    unnamed = attach_memory(copy.deepcopy(model), data.normals.images, data.holdout.images, MemoryConfig(weight=1.0, size=100))
    with pytest.raises(ValueError, match="does not record which item each row came from.*retrain it"):
        leave_item_out_scores(unnamed, shots)
    without = copy.deepcopy(model)
    without.memory, without.config.memory, without.config.terms = None, {}, DISCRIMINATOR_ONLY
    with pytest.raises(ValueError, match=r"needs a normal-feature memory.*train.memory.weight above 0"):
        leave_item_out_scores(without, shots)


def test_shot_memory_names_types_from_the_real_shots_and_round_trips(tv_model, tmp_path):
    import copy

    from uniadc_core.model.discriminator import SHOTS_FILE
    from uniadc_core.model.fusion import attach_shot_memory
    from uniadc_core.model.shot_memory import TEMPERATURES

    model, data = tv_model
    model = attach_shot_memory(copy.deepcopy(model), data.shots, data.val)
    shots = model.shot_memory
    assert shots is not None and model.config.shots["temperature"] in TEMPERATURES
    assert set(shots.labels.tolist()) == set(range(model.config.num_types))  # every type has defect patches
    # each shot, seen as a new image, is named by its own patches: its type is the one at its peak
    p = model.predict(data.shots.images)
    truth = torch.stack([torch.bincount(m[m > 0].long() - 1, minlength=model.config.num_types).argmax() for m in data.shots.masks])
    patches = model.patch_features(data.shots.images)
    at_zero = shots.distances(patches).flatten(2).min(2).values.argmin(1)  # the type with the nearest patch anywhere
    assert torch.equal(at_zero, truth)
    assert torch.allclose(p.type_probs.sum(1), torch.ones(len(p.type_probs)), atol=1e-5)
    peak = p.anomaly_map.flatten(1).argmax(1)
    assert torch.equal(p.pixel_types.flatten(1)[torch.arange(len(peak)), peak] - 1, p.type_probs.argmax(1))  # the image's = its peak's
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m", device="cpu")
    q = again.predict(data.shots.images)
    torch.testing.assert_close(q.type_probs, p.type_probs)
    assert torch.equal(q.pixel_types, p.pixel_types)
    (tmp_path / "m" / SHOTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"shots.safetensors: missing, though .*config.json lists it; re-run the train stage"):
        load_model(tmp_path / "m")
