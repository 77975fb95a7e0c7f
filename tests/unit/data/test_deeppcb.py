"""The DeepPCB layout on a generated tree: template/tested pairs, several typed boxes per image (overlapping, one
past the edge), RGB and grayscale JPEGs, the authors' split lists; the label maps and the multi-type metrics."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from uniadc_core.config import parse_params
from uniadc_core.data.deeppcb import make_deeppcb_records, read_boxes
from uniadc_core.data.ingest import ingest
from uniadc_core.data.manifest import Role
from uniadc_core.data.vocabulary import Vocabulary

SIZE = 64


def _board(path: Path, seed: int, rgb: bool = False) -> None:
    rng = np.random.default_rng(seed)
    gray = np.where(rng.random((SIZE, SIZE)) < 0.5, 20, 235).astype(np.uint8)
    (Image.fromarray(np.repeat(gray[..., None], 3, 2)) if rgb else Image.fromarray(gray)).save(path, quality=95)


def make_deeppcb_tree(root: Path, pairs: int = 8) -> Path:
    """group00001/00001/00001KKK_{temp,test}.jpg + group00001/00001_not/00001KKK.txt; pairs 0-5 trainval, 6-7 test."""
    images, notes = root / "group00001/00001", root / "group00001/00001_not"
    images.mkdir(parents=True)
    notes.mkdir(parents=True)
    lines = {"train": [], "test": []}
    for k in range(pairs):
        stem = f"00001{k:03d}"
        _board(images / f"{stem}_temp.jpg", 2 * k, rgb=k == 1)
        _board(images / f"{stem}_test.jpg", 2 * k + 1, rgb=k == 1)
        boxes = [f"{4 + k} 4 30 20 1", "10 30 40 60 3", "35 8 50 25 2"]  # open, mousebite (the largest), short
        if k == 2:
            boxes.append("20 25 30 35 6")  # a pin-hole on top of the mousebite
        if k == 3:
            boxes.append("50 50 70 70 4")  # a spur past the edge: clipped to the image
        (notes / f"{stem}.txt").write_text("\n".join(boxes) + "\n")
        lines["train" if k < 6 else "test"].append(f"group00001/00001/{stem}.jpg group00001/00001_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


def test_records_keep_each_pair_on_its_lists_side(tmp_path):
    root = make_deeppcb_tree(tmp_path / "pcb")
    records = make_deeppcb_records(root)
    assert len(records) == 16 and sum(r.defect_type is None for r in records) == 8
    side = {}
    for r in records:
        side.setdefault(r.path.name[:8], set()).add(r.split)
    assert all(len(s) == 1 for s in side.values()) and sum(s == {"test"} for s in side.values()) == 2
    tested = [r for r in records if r.defect_type is not None]
    assert all(r.defect_type == "mousebite" and len(r.boxes) >= 3 and r.mask_path is None for r in tested)
    assert {b[4] for b in tested[2].boxes} == {"open", "mousebite", "short", "pin_hole"}


def test_held_out_templates_are_whole_board_designs(tmp_path):
    root = make_deeppcb_tree(tmp_path / "pcb")
    images, notes = root / "group00002/00002", root / "group00002/00002_not"
    images.mkdir(parents=True)
    notes.mkdir(parents=True)
    for k in range(6):  # a second design, all on the trainval side
        stem = f"00002{k:03d}"
        _board(images / f"{stem}_temp.jpg", 100 + 2 * k)
        _board(images / f"{stem}_test.jpg", 101 + 2 * k)
        (notes / f"{stem}.txt").write_text("4 4 30 20 1\n")
        with (root / "trainval.txt").open("a") as f:
            f.write(f"group00002/00002/{stem}.jpg group00002/00002_not/{stem}.txt\n")
    records = make_deeppcb_records(root)
    assert {r.group for r in records} == {"group00001", "group00002"}
    assert all(r.group == r.path.parent.parent.name for r in records)
    for seed in range(4):
        spec = {"kind": "deeppcb", "root": str(root), "anomaly_shots": 0, "holdout_fraction": 0.25, "seed": seed}
        m = ingest(parse_params({"ingest": spec}).ingest, tmp_path / f"prepared{seed}").manifest
        held = m.filter(pl.col("role") == Role.NORMAL_HOLDOUT)
        assert held["group"].n_unique() == 1 and held.height == 6  # 3 of 12 asked: the whole of one design
        assert set(held["group"]).isdisjoint(m.filter(pl.col("role") == Role.NORMAL_SHOT)["group"])


def test_ingest_draws_label_maps_and_lists_every_type(tmp_path):
    root = make_deeppcb_tree(tmp_path / "pcb")
    result = ingest(parse_params({"ingest": {"kind": "deeppcb", "root": str(root), "anomaly_shots": 1}}).ingest, tmp_path / "prepared")
    m = result.manifest
    vocab = Vocabulary.from_dict(json.loads(result.vocabulary_path.read_text()))
    assert set(vocab.classes["pcb"]) == {"open", "mousebite", "short", "pin_hole", "spur"}
    assert vocab.decode["mask_values"] == "labels"
    row = m.filter(pl.col("path").str.ends_with("00001002_test.jpg")).row(0, named=True)
    assert row["defect_types"] == "mousebite,open,pin_hole,short"
    labels = np.asarray(Image.open(row["mask_path"]))
    assert labels.shape == (SIZE, SIZE)
    assert labels[28, 25] == vocab.index("pin_hole")  # the smaller box on top of the larger
    assert labels[50, 15] == vocab.index("mousebite") and labels[10, 10] == vocab.index("open") and labels[0, 0] == 0
    clipped = m.filter(pl.col("path").str.ends_with("00001003_test.jpg")).row(0, named=True)
    assert json.loads(clipped["boxes"])[-1] == [50, 50, SIZE - 1, SIZE - 1, "spur"]
    assert (np.asarray(Image.open(clipped["mask_path"]))[50:, 50:] == vocab.index("spur")).all()
    pre = vocab.preprocess(32)
    lm = pre.load_labels(row["mask_path"], vocab.index("mousebite"))
    assert set(np.unique(lm)) == {0} | {vocab.index(t) for t in ("open", "mousebite", "short", "pin_hole")}
    # shots come from the trainval side; the test side keeps its pairs, templates and tested images
    shots = m.filter(pl.col("role") == Role.ANOMALY_SHOT)
    assert shots.height == 1 and shots["split"][0] == "train"
    test = m.filter(pl.col("role") == Role.TEST)
    assert test.height == 4 and test["is_anomaly"].sum() == 2


def test_multi_type_images_count_any_present_type_as_right():
    from uniadc_core.evaluation.evaluate import EvalSet, type_accuracy

    present = np.array([[True, False, False, False], [False, True, True, False], [False, False, False, True]])
    test = EvalSet([None] * 3, np.zeros((3, 4, 4), np.uint8), np.ones(3, bool), np.array([0, 1, 3]), ["a"] * 3, ["0", "1", "2"], present)
    assert type_accuracy(test, np.array([0, 2, 3])) == 1.0  # type 2 is in image 1 too
    assert type_accuracy(test, np.array([1, 3, 3])) == pytest.approx(1 / 3)
    plain = test._replace(present=None)
    assert type_accuracy(plain, np.array([0, 2, 3])) == pytest.approx(2 / 3)  # one type per image: plain accuracy


def test_deeppcb_errors_name_the_file_the_line_and_the_fix(tmp_path):
    root = make_deeppcb_tree(tmp_path / "pcb")
    note = root / "group00001/00001_not/00001000.txt"
    note.write_text("1 2 3 4 9\n")
    with pytest.raises(ValueError, match=r"00001000.txt:1: unknown defect type 9; DeepPCB's types are 1 open"):
        read_boxes(note)
    note.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"00001000.txt:1: expected 'x1 y1 x2 y2 type'"):
        read_boxes(note)
    note.write_text("100 100 120 120 1\n")  # wholly outside the 64 x 64 image
    from uniadc_core.data.validate import DatasetError
    with pytest.raises(DatasetError, match=r"box 1 \(100 100 120 120, open\) lies outside the 64x64 image"):
        ingest(parse_params({"ingest": {"kind": "deeppcb", "root": str(root)}}).ingest, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    note.unlink()
    with pytest.raises(FileNotFoundError, match=r"00001000.txt: annotation file not found \(listed in .*trainval.txt:1\)"):
        make_deeppcb_records(root)
    (root / "trainval.txt").unlink()
    (root / "test.txt").unlink()
    with pytest.raises(ValueError, match=r"neither trainval.txt nor test.txt is here"):
        make_deeppcb_records(root)
