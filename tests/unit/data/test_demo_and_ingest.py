import json

import numpy as np
import polars as pl
import pytest

from uniadc_core.data.demo import DEFECTS, generate_demo
from uniadc_core.data.manifest import apply_few_shot, holdout_items, records_to_frame
from uniadc_core.data.mvtec import make_mvtec_records
from uniadc_core.io import load_image, load_mask, sha256_file


def _tree_hashes(root):
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.png"))}


def test_demo_is_deterministic_and_in_mvtec_layout(tmp_path):
    a = generate_demo(tmp_path / "a", seed=3, classes=["tile", "marble"], train_normals=4, test_normals=2, test_per_defect=2)
    b = generate_demo(tmp_path / "b", seed=3, classes=["tile", "marble"], train_normals=4, test_normals=2, test_per_defect=2)
    assert _tree_hashes(a) == _tree_hashes(b)
    assert (a / "tile/train/good/003.png").is_file()
    for defect in DEFECTS["marble"]:
        img = load_image(a / f"marble/test/{defect}/001.png")
        mask = load_mask(a / f"marble/ground_truth/{defect}/001_mask.png")
        assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
        assert 0 < mask.mean() < 0.2, defect
    c = generate_demo(tmp_path / "c", seed=4, classes=["tile"], train_normals=4, test_normals=2, test_per_defect=2)
    assert _tree_hashes(c)["tile/train/good/000.png"] != _tree_hashes(a)["tile/train/good/000.png"]


def test_unknown_demo_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown class.*known: tile, fabric, marble"):
        generate_demo(tmp_path / "x", classes=["wood"])
    assert not (tmp_path / "x").exists()


def test_ingest_applies_the_few_shot_protocol(tiny_dataset):
    manifest, manifest_path, vocab_path = tiny_dataset
    assert manifest["image_id"].n_unique() == manifest.height
    shots = manifest.filter(pl.col("role") == "anomaly_shot")
    # one shot per (class, defect type), moved from test to train
    assert shots.group_by("object_class", "defect_type").len()["len"].to_list() == [1] * shots.height
    assert shots.height == 6 and set(shots["split"]) == {"train"}
    test = manifest.filter(pl.col("role") == "test")
    assert test.filter(pl.col("is_anomaly")).height == 2 * 3 * (3 - 1)
    assert set(test["split"]) == {"test"}
    hold = manifest.filter(pl.col("role") == "normal_holdout")
    assert hold.group_by("object_class").len()["len"].to_list() == [2, 2]  # 25% of 8
    vocab = json.loads(vocab_path.read_text())
    assert vocab["defect_types"] == ["crack", "hole", "scratch", "stain"]
    assert vocab["classes"]["fabric"]["stain"]["shape"] == "perlin"
    assert set(vocab["classes"]["tile"]) == {"crack", "scratch", "stain"}


def test_normal_shots_k_and_too_many_anomaly_shots(tmp_path):
    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=6, test_normals=2, test_per_defect=2)
    frame, problems = records_to_frame(make_mvtec_records(root))
    assert problems == []
    roles = apply_few_shot(frame, normal_shots=2, anomaly_shots=0, seed=0, holdout_fraction=0.5)
    counts = dict(roles.group_by("role").len().iter_rows())
    assert counts == {"normal_shot": 1, "normal_holdout": 1, "unused_normal": 4, "test": 8}
    again = apply_few_shot(frame, normal_shots=2, anomaly_shots=0, seed=0, holdout_fraction=0.5)
    assert roles.equals(again)
    # holdout_min raises a small class's held-out count, never past half its normal shots
    held = [dict(apply_few_shot(frame, normal_shots="all", anomaly_shots=0, seed=0, holdout_fraction=0.25, holdout_min=m)
                 .group_by("role").len().iter_rows()) for m in (0, 2, 5)]
    assert [(h["normal_holdout"], h["normal_shot"]) for h in held] == [(2, 4), (2, 4), (3, 3)]
    with pytest.raises(ValueError, match="anomaly_shots=2; shots need masks and at least one image must stay"):
        apply_few_shot(frame, normal_shots="all", anomaly_shots=2, seed=0)


def test_two_shots_with_a_holdout_warn_and_without_one_train_on_the_same_two(tmp_path, caplog):
    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=6, test_normals=2, test_per_defect=2)
    frame, _ = records_to_frame(make_mvtec_records(root))
    with caplog.at_level("WARNING", logger="uniadc_core.data.manifest"):
        split = apply_few_shot(frame, normal_shots=2, anomaly_shots=0, seed=3, holdout_fraction=0.25)
    assert "class 'tile': 2 normal shot(s), 1 held out: training sees 1 normal image(s)" in caplog.text
    assert "ingest.holdout_fraction: 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="uniadc_core.data.manifest"):
        both = apply_few_shot(frame, normal_shots=2, anomaly_shots=0, seed=3, holdout_fraction=0.0)
        apply_few_shot(frame, normal_shots=4, anomaly_shots=0, seed=3, holdout_fraction=0.25)  # 3 trained: no warning
    assert caplog.text == ""
    drawn = set(split.filter(pl.col("role").is_in(["normal_shot", "normal_holdout"]))["path"])
    trained = set(both.filter(pl.col("role") == "normal_shot")["path"])
    assert len(trained) == 2 and drawn == trained  # the holdout only splits the drawn shots


def test_adding_a_class_leaves_the_other_classes_split_as_it_was(tmp_path):
    root = generate_demo(tmp_path / "d", classes=["tile", "fabric"], train_normals=9, test_normals=2, test_per_defect=3)
    frame, _ = records_to_frame(make_mvtec_records(root))
    for seed in range(3):
        pooled = apply_few_shot(frame, normal_shots="all", anomaly_shots=1, seed=seed, holdout_fraction=0.25)
        alone = apply_few_shot(frame.filter(pl.col("object_class") == "tile"), normal_shots="all", anomaly_shots=1, seed=seed,
                               holdout_fraction=0.25)
        assert pooled.filter(pl.col("object_class") == "tile").select("path", "role", "split").equals(alone.select("path", "role", "split"))
    first, other = (apply_few_shot(frame, normal_shots="all", anomaly_shots=1, seed=s, holdout_fraction=0.25) for s in (0, 1))
    assert not other.select("role").equals(first.select("role"))  # the seed still draws


def test_holdout_takes_whole_items_where_the_manifest_names_them(tmp_path):
    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=24, test_normals=2, test_per_defect=2)
    frame, _ = records_to_frame(make_mvtec_records(root))
    plain = apply_few_shot(frame, normal_shots="all", anomaly_shots=0, seed=0, holdout_fraction=0.25)
    # without items: the first quarter of the shuffled shots, images one by one
    assert plain.filter(pl.col("role") == "normal_holdout").height == 6
    normals = frame.filter(~pl.col("is_anomaly") & (pl.col("split") == "train"))["path"].sort().to_list()
    item = {p: f"item{i // 4}" for i, p in enumerate(normals)}  # 6 items of 4 images
    grouped = frame.with_columns(pl.col("path").replace_strict(item, default=None).alias("group"))
    for seed in range(5):
        roles = apply_few_shot(grouped, normal_shots="all", anomaly_shots=0, seed=seed, holdout_fraction=0.3)
        held = roles.filter(pl.col("role") == "normal_holdout")
        trained = roles.filter(pl.col("role") == "normal_shot")
        assert set(held["group"]).isdisjoint(set(trained["group"]))  # no held-out image shares an item with a shot
        assert held.height == 8 and trained.height == 16  # 30 % of 24 is 7: whole items, so two of four
    # one item only: held out image by image, so something is still trained on
    single = grouped.with_columns(pl.when(pl.col("group").is_not_null()).then(pl.lit("one")).alias("group"))
    roles = apply_few_shot(single, normal_shots="all", anomaly_shots=0, seed=0, holdout_fraction=0.25)
    assert dict(roles.group_by("role").len().iter_rows())["normal_holdout"] == 6
    assert holdout_items(np.array([5, 3, 9]), ["img5", "img3", "img9"], 2).tolist() == [5, 3]  # an item to each image
    assert holdout_items(np.array([5, 3, 9, 1]), ["a", "b", "a", "b"], 1).tolist() == [5, 9]


def test_missing_mask_and_corrupt_image_are_named(tmp_path):
    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=4, test_normals=1, test_per_defect=1)
    (root / "tile/ground_truth/crack/000_mask.png").unlink()
    with pytest.raises(ValueError, match="test/crack/000.png: anomaly image without a mask"):
        records_to_frame(make_mvtec_records(root))
    root = generate_demo(tmp_path / "e", classes=["tile"], train_normals=4, test_normals=1, test_per_defect=1)
    (root / "tile/train/good/001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="001.png: not a readable image"):
        records_to_frame(make_mvtec_records(root))
    root = generate_demo(tmp_path / "f", classes=["tile"], train_normals=4, test_normals=1, test_per_defect=1)
    (root / "tile/ground_truth/dent").mkdir()
    with pytest.raises(ValueError, match=r"mask folder\(s\) \['dent'\] have no test/<defect> image folder"):
        make_mvtec_records(root)


def test_mask_of_wrong_size_is_refused(tmp_path):
    from PIL import Image

    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=4, test_normals=1, test_per_defect=1)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "tile/ground_truth/stain/000_mask.png")
    with pytest.raises(ValueError, match="stain/000.png: mask .*000_mask.png is 64x64 but the image is 128x128"):
        records_to_frame(make_mvtec_records(root))


def test_a_layouts_validation_normals_are_held_out_for_calibration(tmp_path):
    import shutil

    root = generate_demo(tmp_path / "d", classes=["tile"], train_normals=6, test_normals=2, test_per_defect=2)
    extra = root / "tile" / "validation" / "good"
    extra.mkdir(parents=True)
    for i, src in enumerate(sorted((root / "tile" / "test" / "good").iterdir())):
        shutil.move(src, extra / f"val_{i}.png")  # the test normals become the layout's validation normals
    frame, problems = records_to_frame(make_mvtec_records(root))
    assert problems == [] and (frame["split"] == "validation").sum() == 2
    roles = apply_few_shot(frame, normal_shots="all", anomaly_shots=0, seed=0, holdout_fraction=0.25)
    val = roles.filter(pl.col("split") == "validation")
    assert val["role"].to_list() == ["normal_holdout"] * 2  # never trained on, never tested
    counts = dict(roles.filter(pl.col("split") != "validation").group_by("role").len().iter_rows())
    assert counts == {"normal_shot": 4, "normal_holdout": 2, "test": 6}  # the training normals split as without them
