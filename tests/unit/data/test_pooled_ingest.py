"""ingest.kind: sources: several datasets pooled into one manifest, each source its classes and its own mask rule."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from tests.unit.data.test_kolektorsdd import make_kolektor_tree
from tests.unit.data.test_layouts_and_validation import make_mtd_tree
from uniadc_core.config import parse_params
from uniadc_core.data.ingest import ingest
from uniadc_core.data.vocabulary import Vocabulary


def _spec(tmp_path: Path, **kw) -> dict:
    return {"kind": "sources", "anomaly_shots": 1, "holdout_fraction": 0.25, "sources": [
        {"kind": "mtd", "root": str(make_mtd_tree(tmp_path / "mtd"))},
        {"kind": "kolektorsdd", "root": str(make_kolektor_tree(tmp_path / "kolektor")), "object_class": "commutator_line2"},
    ], **kw}


def test_two_layouts_pool_into_one_manifest_with_masks_read_by_each_sources_rule(tmp_path):
    result = ingest(parse_params({"ingest": _spec(tmp_path)}).ingest, tmp_path / "prepared")
    m = result.manifest
    assert set(m["object_class"].unique()) == {"magnetic_tile", "commutator_line2"}
    vocab = Vocabulary.from_dict(json.loads(result.vocabulary_path.read_text()))
    assert set(vocab.classes["magnetic_tile"]) == {"blowhole", "crack"} and set(vocab.classes["commutator_line2"]) == {"crack"}
    assert vocab.decode["mask_values"] == "labels"  # one rule after ingest: the masks were rewritten as label maps
    anomalies = m.filter(pl.col("is_anomaly"))
    assert anomalies["mask_path"].null_count() == 0
    assert all(Path(p).parent == tmp_path / "prepared/masks" for p in anomalies["mask_path"])
    pre = vocab.preprocess(64)
    for row in anomalies.iter_rows(named=True):
        raw = np.asarray(Image.open(row["mask_path"]))
        assert set(np.unique(raw)) == {0, vocab.index(row["defect_type"])}
        assert pre.load_mask(row["mask_path"]).any()
    # KolektorSDD's 0/1 palette masks became defects (read as nonzero), MTD's soft masks were cut at 128
    crack = anomalies.filter(pl.col("object_class") == "commutator_line2").row(0, named=True)
    assert (np.asarray(Image.open(crack["mask_path"])) > 0).sum() == 20 * 2
    tile = anomalies.filter(pl.col("object_class") == "magnetic_tile").row(0, named=True)
    soft = np.asarray(Image.open(next((tmp_path / "mtd").rglob(Path(tile["path"]).stem + ".png"))))
    assert (np.asarray(Image.open(tile["mask_path"])) > 0).sum() == (soft >= 128).sum()
    again = ingest(parse_params({"ingest": _spec(tmp_path / "2")}).ingest, tmp_path / "prepared")  # a re-run in the same folder
    assert sorted(p.name for p in (tmp_path / "prepared/masks").glob("*.png")) == sorted(
        Path(p).name for p in again.manifest["mask_path"].drop_nulls())


def test_pooled_ingest_errors_name_the_source_and_the_fix(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(ValueError, match=r"ingest.kind is sources but ingest.sources is empty"):
        ingest(parse_params({"ingest": {**spec, "sources": []}}).ingest, tmp_path / "a")
    twice = {**spec, "sources": [spec["sources"][0], spec["sources"][0]]}
    with pytest.raises(ValueError, match=r"object class 'magnetic_tile' comes from ingest.sources\[0\] and ingest.sources\[1\]; name them apart"):
        ingest(parse_params({"ingest": twice}).ingest, tmp_path / "b")
    root = tmp_path / "two_classes"
    make_mtd_tree(root / "a")
    make_mtd_tree(root / "b")
    renamed = {**spec, "sources": [{"kind": "mtd", "root": str(root), "object_class": "tiles"}]}
    with pytest.raises(ValueError, match=r"holds the classes \['a', 'b'\]; object_class names the class of a one-class source only"):
        ingest(parse_params({"ingest": renamed}).ingest, tmp_path / "c")
    (tmp_path / "mtd/MT_Crack/Imgs/exp1_Crack_0.png").write_bytes(b"not a png")
    from uniadc_core.data.validate import DatasetError
    with pytest.raises(DatasetError, match=r"exp1_Crack_0.png"):
        ingest(parse_params({"ingest": spec}).ingest, tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing written
