"""The MTD and folder layouts, and bad-input validation (each problem its own clear message)."""

import csv
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from uniadc_core.config import parse_params
from uniadc_core.data.ingest import ingest
from uniadc_core.data.mtd import make_mtd_records
from uniadc_core.data.validate import DatasetError, check_records

RNG = np.random.default_rng(0)


def _img(path: Path, w: int, h: int, mode: str = "L", value: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        arr = RNG.integers(0, 255, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
    else:
        arr = np.full((h, w) if mode == "L" else (h, w, 3), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _soft_mask(path: Path, w: int, h: int) -> Path:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 4: w // 2] = 255
    mask[h // 4 - 1, w // 4: w // 2] = 100  # soft edge: below 128, not defect
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def make_mtd_tree(root: Path, normals: int = 8, per_type: int = 2) -> Path:
    """A small MTD tree: grayscale JPEGs of mixed sizes, soft masks, a train list."""
    sizes = [(60, 90), (120, 64), (96, 96)]
    for i in range(normals):
        w, h = sizes[i % 3]
        _img(root / "MT_Free/Imgs" / f"exp0_num_{i}.jpg", w, h)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "MT_Free/Imgs" / f"exp0_num_{i}.png")
    for t in ("Blowhole", "Crack"):
        for i in range(per_type):
            w, h = sizes[i % 3]
            _img(root / f"MT_{t}/Imgs/exp1_{t}_{i}.jpg", w, h)
            _soft_mask(root / f"MT_{t}/Imgs/exp1_{t}_{i}.png", w, h)
    (root / "train_normals.txt").write_text("\n".join(f"exp0_num_{i}.jpg" for i in range(normals - 2)) + "\n")
    return root


def test_mtd_layout_uses_the_train_list_and_soft_masks(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd")
    records = make_mtd_records(root)
    normals = [r for r in records if r.defect_type is None]
    assert sum(r.split == "train" for r in normals) == 6 and sum(r.split == "test" for r in normals) == 2
    assert {r.defect_type for r in records} == {None, "blowhole", "crack"}
    assert all(r.object_class == "magnetic_tile" for r in records)
    good, problems = check_records(records)
    assert problems == [] and len(good) == len(records)
    assert {(c.width, c.height) for c in good} == {(60, 90), (120, 64), (96, 96)}


def test_mtd_without_a_train_list_splits_by_seed(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd")
    (root / "train_normals.txt").unlink()
    a = make_mtd_records(root, test_normal_fraction=0.25, seed=1)
    b = make_mtd_records(root, test_normal_fraction=0.25, seed=1)
    assert a == b and sum(r.split == "test" and r.defect_type is None for r in a) == 2


def test_mtd_ingest_end_to_end(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd", normals=10, per_type=3)
    params = parse_params({"ingest": {"kind": "mtd", "root": str(root), "anomaly_shots": 1, "normal_shots": 4}})
    result = ingest(params.ingest, tmp_path / "prepared")
    m = result.manifest
    assert m.filter(pl.col("role") == "anomaly_shot").height == 2
    assert m.filter(pl.col("role").is_in(["normal_shot", "normal_holdout"])).height == 4
    assert set(m["width"].to_list()) == {60, 120, 96}


def make_folder_tree(root: Path) -> dict:
    for i in range(6):
        _img(root / "good" / f"n{i}.png", 64, 64, mode="RGB")
    for i in range(2):
        _img(root / "bad/scratch" / f"s{i}.png", 64, 64, mode="RGB")
        _soft_mask(root / "gt/scratch" / f"s{i}_mask.png", 64, 64)
        _img(root / "bad/dent" / f"d{i}.png", 64, 64, mode="RGB")
    return {"kind": "folder", "root": str(root), "anomaly_shots": 0,
            "folder": {"test_normal_fraction": 0.5, "classes": {"part": {
                "normal": ["good"], "defects": {"scratch": "bad/scratch", "dent": "bad/dent"}, "masks": {"scratch": "gt/scratch"}}}}}


def test_folder_layout_pairs_masks_by_stem(tmp_path):
    spec = make_folder_tree(tmp_path / "f")
    spec["allow_missing_masks"] = True  # dent has no masks
    result = ingest(parse_params({"ingest": spec}).ingest, tmp_path / "prepared")
    m = result.manifest
    scratch = m.filter(pl.col("defect_type") == "scratch")
    assert scratch["mask_path"].null_count() == 0 and scratch["mask_path"].str.ends_with("_mask.png").all()
    assert m.filter(pl.col("defect_type") == "dent")["mask_path"].null_count() == 2
    assert m.filter(~pl.col("is_anomaly") & (pl.col("split") == "test")).height == 3


def test_folder_unknown_defect_type_in_masks(tmp_path):
    spec = make_folder_tree(tmp_path / "f")
    spec["folder"]["classes"]["part"]["masks"]["crack"] = "gt/scratch"
    with pytest.raises(ValueError, match=r"masks: unknown defect type\(s\) \['crack'\]; defect types come from 'defects': dent, scratch"):
        ingest(parse_params({"ingest": spec}).ingest, tmp_path / "prepared")


# ---------------------------------------------------------------------------- bad inputs


def _plant(root: Path, kind: str) -> tuple[Path, str]:
    """Plant one bad input of ``kind`` in an MTD tree; return (the file to blame, expected message part)."""
    free, crack = root / "MT_Free/Imgs", root / "MT_Crack/Imgs"
    if kind == "corrupt":
        p = free / "exp0_num_0.jpg"
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # truncated JPEG
        return p, "not a readable image"
    if kind == "not_image":
        p = free / "notes.jpg"
        p.write_text("shift log, not a picture")
        return p, "not a readable image"
    if kind == "empty_file":
        p = free / "exp0_num_99.jpg"
        p.write_bytes(b"")
        return p, "empty image file (0 bytes)"
    if kind == "mask_size":
        p = crack / "exp1_Crack_0.png"
        Image.fromarray(np.full((10, 10), 255, np.uint8)).save(p)
        return crack / "exp1_Crack_0.jpg", "is 10x10 but the image is"
    if kind == "missing_mask":
        (crack / "exp1_Crack_1.png").unlink()
        return crack / "exp1_Crack_1.jpg", "anomaly image without a mask"
    if kind == "empty_mask":
        p = crack / "exp1_Crack_0.png"
        w, h = Image.open(p).size
        Image.fromarray(np.full((h, w), 90, np.uint8)).save(p)  # soft values only: MTD's rule is >= 128
        return crack / "exp1_Crack_0.jpg", "marks no defect pixel under ingest.mask_values: threshold (its values: 90)"
    if kind == "duplicate":
        src = free / "exp0_num_1.jpg"
        dst = root / "MT_Crack/Imgs/copy_of_normal.jpg"
        dst.write_bytes(src.read_bytes())
        _soft_mask(dst.with_suffix(".png"), *Image.open(src).size)
        return dst, "same content as"
    if kind == "tiny":
        p = free / "exp0_num_50.jpg"
        _img(p, 8, 8)
        return p, "images need at least 16 px"
    if kind == "corrupt_mask":
        p = crack / "exp1_Crack_1.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return p, "not a readable mask"
    raise AssertionError(kind)


BAD = ["corrupt", "not_image", "empty_file", "mask_size", "missing_mask", "empty_mask", "duplicate", "tiny", "corrupt_mask"]


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_input_fails_with_its_own_message_and_writes_nothing(tmp_path, kind):
    root = make_mtd_tree(tmp_path / "mtd", normals=8, per_type=2)
    blamed, expected = _plant(root, kind)
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "manifest.parquet").write_bytes(b"previous manifest")  # must survive a failed ingest
    params = parse_params({"ingest": {"kind": "mtd", "root": str(root), "anomaly_shots": 0}})
    with pytest.raises(DatasetError) as err:
        ingest(params.ingest, out)
    assert f"{blamed}: " in str(err.value) and expected in str(err.value)
    assert (out / "manifest.parquet").read_bytes() == b"previous manifest"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet"]


def test_skip_mode_quarantines_exactly_the_planted_files(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd", normals=10, per_type=3)
    planted = {str(_plant(root, k)[0]) for k in ("not_image", "empty_file", "tiny", "missing_mask", "duplicate")}
    params = parse_params({"ingest": {"kind": "mtd", "root": str(root), "anomaly_shots": 0, "on_error": "skip"}})
    result = ingest(params.ingest, tmp_path / "prepared")
    with open(tmp_path / "prepared/quarantine.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == planted
    assert all(r["reason"] for r in rows)
    assert not set(result.manifest["path"].to_list()) & planted
    assert result.manifest.height == 10 + 2 * 3 - 1  # all good images; only the unmasked crack is lost
