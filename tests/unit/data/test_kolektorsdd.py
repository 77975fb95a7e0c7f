"""The KolektorSDD layout on a generated tree: palette BMP masks with 0/1 values, empty masks, byte-identical
items and images, RGB and grayscale JPEGs; the split by item and the shots from training items."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from uniadc_core.config import parse_params
from uniadc_core.data.ingest import ingest
from uniadc_core.data.kolektorsdd import make_kolektorsdd_records
from uniadc_core.data.manifest import Role


def _surface(path: Path, seed: int, rgb: bool = False) -> None:
    rng = np.random.default_rng(seed)
    gray = rng.integers(60, 200, (48, 20), dtype=np.uint8)  # tall and narrow, as the commutator images are
    im = Image.fromarray(np.repeat(gray[..., None], 3, axis=2)) if rgb else Image.fromarray(gray)
    im.save(path, quality=95)


def _mask(path: Path, crack: bool, value: int = 1) -> None:
    m = np.zeros((48, 20), np.uint8)
    if crack:
        m[10:30, 8:10] = value
        im = Image.fromarray(m, mode="L").convert("P")  # the publishers' palette BMP: raw values 0/1
        im.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0] * 759)
    else:
        im = Image.fromarray(m)  # a grayscale all-0 mask: no defect
    im.save(path)


def make_kolektor_tree(root: Path, items: int = 7) -> Path:
    """kos00..kos06 with 3 parts each, part 1 cracked; kos07 a byte copy of kos00 (its crack annotated
    again); kos08 sharing its Part0 with kos02; kos03/Part2 a copy of kos03/Part0; kos05 in RGB JPEGs;
    kos06/Part2 without a mask file."""
    for i in range(items):
        d = root / f"kos{i:02d}"
        d.mkdir(parents=True)
        for k in range(3):
            _surface(d / f"Part{k}.jpg", 10 * i + k, rgb=i == 5)
            if not (i == 6 and k == 2):
                _mask(d / f"Part{k}_label.bmp", crack=k == 1)
    shutil.copy(root / "kos03/Part0.jpg", root / "kos03/Part2.jpg")
    shutil.copytree(root / "kos00", root / f"kos{items:02d}")
    _mask(root / f"kos{items:02d}/Part1_label.bmp", crack=True, value=2)  # the same crack, labelled otherwise
    partial = root / f"kos{items + 1:02d}"  # shares one image with kos02, the others its own
    partial.mkdir()
    for k in range(3):
        _surface(partial / f"Part{k}.jpg", 1000 + k)
        _mask(partial / f"Part{k}_label.bmp", crack=k == 1)
    shutil.copy(root / "kos02/Part0.jpg", partial / "Part0.jpg")
    return root


def test_records_split_by_item_with_copies_on_one_side(tmp_path):
    root = make_kolektor_tree(tmp_path / "kolektor")
    records = make_kolektorsdd_records(root, folds=3, test_fold=0, split_seed=0)
    by_item: dict[str, set] = {}
    for r in records:
        by_item.setdefault(r.path.parent.name, set()).add(r.split)
    assert all(len(s) == 1 for s in by_item.values())  # never split inside an item
    names = {(r.path.parent.name, r.path.name) for r in records}
    assert ("kos03", "Part2.jpg") not in names and not any(n[0] == "kos07" for n in names)  # copies kept once
    assert len(records) == 7 * 3 - 1 + 2 and ("kos08", "Part0.jpg") not in names
    cracks = [r for r in records if r.defect_type is not None]
    assert {(r.path.parent.name, r.path.name) for r in cracks} == {(f"kos{i:02d}", "Part1.jpg") for i in (*range(7), 8)}
    assert all(r.defect_type == "crack" and r.mask_path.name == "Part1_label.bmp" for r in cracks)
    assert all(r.mask_path is None for r in records if r.defect_type is None)  # empty or missing masks: normal
    sides = [{r.path.parent.name: r.split for r in make_kolektorsdd_records(root, folds=3, test_fold=f)} for f in range(3)]
    assert all(sum(s[item] == "test" for s in sides) == 1 for item in by_item)  # each item in exactly one test fold
    for seed in range(6):  # items that share an image share the side, whatever the deal
        for f in range(3):
            side = {r.path.parent.name: r.split for r in make_kolektorsdd_records(root, folds=3, test_fold=f, split_seed=seed)}
            assert side["kos08"] == side["kos02"]
    assert make_kolektorsdd_records(root, folds=3, test_fold=0, split_seed=1) != records  # another split_seed, another deal
    item = {r.path.parent.name: r.group for r in records}
    assert item["kos00"] == "kos00+kos07" and item["kos02"] == item["kos08"] == "kos02+kos08" and item["kos01"] == "kos01"


def test_ingest_kolektorsdd_draws_shots_from_training_items_and_tests_on_the_rest(tmp_path):
    root = make_kolektor_tree(tmp_path / "kolektor")
    spec = {"kind": "kolektorsdd", "root": str(root), "anomaly_shots": 1, "holdout_fraction": 0.25}
    result = ingest(parse_params({"ingest": spec}).ingest, tmp_path / "prepared")
    m = result.manifest
    test_items = set(m.filter(pl.col("split") == "test")["path"].map_elements(lambda p: Path(p).parent.name, return_dtype=pl.Utf8))
    shot = m.filter(pl.col("role") == Role.ANOMALY_SHOT)
    assert shot.height == 1 and Path(shot["path"][0]).parent.name not in test_items
    unused = m.filter(pl.col("role") == Role.UNUSED_ANOMALY)
    assert unused.height >= 1 and all(Path(p).parent.name not in test_items for p in unused["path"])
    test = m.filter(pl.col("role") == Role.TEST)
    assert test["is_anomaly"].sum() >= 1 and (~test["is_anomaly"]).sum() >= 1
    assert all(Path(p).parent.name in test_items for p in test["path"])
    assert m.filter(pl.col("role") == Role.NORMAL_SHOT).height >= 1
    held = m.filter(pl.col("role") == Role.NORMAL_HOLDOUT)["group"].to_list()
    assert held and set(held).isdisjoint(m.filter(pl.col("role") == Role.NORMAL_SHOT)["group"].to_list())  # whole items
    assert '"mask_values": "nonzero"' in result.vocabulary_path.read_text()  # auto means nonzero for this layout
    zero = ingest(parse_params({"ingest": {**spec, "anomaly_shots": 0}}).ingest, tmp_path / "zero").manifest
    assert zero.filter(pl.col("role") == Role.ANOMALY_SHOT).height == 0
    assert zero.filter(pl.col("role") == Role.TEST).height == test.height  # shots never come out of the test side


def test_kolektorsdd_errors_name_the_key_and_the_fix(tmp_path):
    root = make_kolektor_tree(tmp_path / "kolektor")
    with pytest.raises(ValueError, match=r"ingest.kolektorsdd.test_fold is 3; it must be in 0..2"):
        make_kolektorsdd_records(root, folds=3, test_fold=3)
    with pytest.raises(ValueError, match=r"too few for ingest.kolektorsdd.folds: 9"):
        make_kolektorsdd_records(root, folds=9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no item folders with images; a KolektorSDD tree has kosNN/PartK.jpg"):
        make_kolektorsdd_records(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"set ingest.root"):
        make_kolektorsdd_records(tmp_path / "missing")
    from uniadc_core.config.schema import ConfigError
    with pytest.raises(ConfigError, match=r"ingest.kolektorsdd.folds"):
        parse_params({"ingest": {"kind": "kolektorsdd", "kolektorsdd": {"folds": 1}}})
