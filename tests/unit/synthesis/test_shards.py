import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY_SYNTH
from uniadc_core.data.shards import SHARD_SCHEMA, complete_shards, decode_row, read_samples
from uniadc_core.io import sha256_file
from uniadc_core.synthesis.synthesize import synthesize

ROOT = Path(__file__).resolve().parents[3]


def test_shards_follow_the_contract(tiny_dataset, tiny_shards):
    manifest, _, vocab_path = tiny_dataset
    vocab = json.loads(vocab_path.read_text())
    index = json.loads((tiny_shards / "index.json").read_text())
    assert index["complete"] and index["rows"] == 2 * 3 * TINY_SYNTH.samples_per_type
    for name, entry in index["shards"].items():
        path = tiny_shards / name
        assert sha256_file(path) == entry["sha256"]
        meta = pq.ParquetFile(path)
        assert meta.schema_arrow == SHARD_SCHEMA and meta.metadata.num_rows == entry["rows"] <= TINY_SYNTH.shard_size
        assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    table = read_samples(tiny_shards)
    rows = table.to_pylist()
    assert len({r["sample_id"] for r in rows}) == len(rows)
    normal_ids = set(manifest.filter(manifest["role"] == "normal_shot")["image_id"])
    for row in rows:
        image, mask = decode_row(row)
        assert image.shape == (64, 64, 3)
        index_of_type = vocab["defect_types"].index(row["defect_type"]) + 1
        assert set(np.unique(mask)) == {0, index_of_type}  # pixel value = defect index
        assert row["source_image_id"] in normal_ids
        assert row["generator"] in ("procedural", "cutpaste") and row["quality"] > 0
    # the demo has one shot per type: half of each type's samples are cut-paste of it
    assert sum(r["generator"] == "cutpaste" for r in rows) == len(rows) // 2


def test_rerun_is_a_no_op_and_changed_plan_rewrites(tiny_dataset, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    out = tmp_path / "syn"
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")} == before
    synthesize(manifest_path, vocab_path, out, replace(TINY_SYNTH, samples_per_type=2))
    assert len(read_samples(out)) == 2 * 3 * 2
    assert len(list(out.glob("shard-*.parquet"))) == len(complete_shards(out))


def test_corrupt_shard_is_detected_and_rewritten(tiny_dataset, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    out = tmp_path / "syn"
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    good = sha256_file(out / "shard-00001.parquet")
    (out / "shard-00001.parquet").write_bytes(b"garbage")
    (out / ".shard-00002.parquet.123.tmp").write_bytes(b"half")  # a temp file left by a crash
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    assert sha256_file(out / "shard-00001.parquet") == good  # deterministic from the seed
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow  # a synthesis subprocess killed and resumed
def test_killed_synthesis_resumes_without_redoing_complete_shards(tiny_dataset, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    out = tmp_path / "syn"
    cfg = replace(TINY_SYNTH, samples_per_type=40, shard_size=6, image_size=256)  # ~40 shards, a few seconds
    script = textwrap.dedent(f"""
        from uniadc_core.config import parse_params
        from uniadc_core.synthesis.synthesize import synthesize
        cfg = parse_params({{"synthesize": {dataclasses.asdict(cfg)!r}}}).synthesize
        synthesize({str(manifest_path)!r}, {str(vocab_path)!r}, {str(out)!r}, cfg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index_path = out / "index.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads(index_path.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_index = json.loads(index_path.read_text())
    assert not killed_index["complete"], "synthesis finished before it could be killed"
    done = {name: (out / name).stat() for name in killed_index["shards"]}
    assert len(done) >= 3

    index = synthesize(manifest_path, vocab_path, out, cfg)
    for name, st in done.items():  # complete shards were not redone
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert index["complete"] and index["rows"] == 2 * 3 * 40
    files = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert files == sorted(index["shards"])  # no stray or duplicate shard
    assert not list(out.glob("*.tmp"))
    ids = read_samples(out, columns=["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 240
    for name, entry in index["shards"].items():
        assert sha256_file(out / name) == entry["sha256"]


def test_unknown_backend_is_refused(tiny_dataset, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    with pytest.raises(ValueError, match="unknown synthesizer 'gan'; valid: procedural"):
        synthesize(manifest_path, vocab_path, tmp_path, replace(TINY_SYNTH, backend="gan"))


def test_shards_of_other_code_are_not_resumed(tiny_dataset, tmp_path, monkeypatch):
    from uniadc_core.synthesis import store

    _, manifest_path, vocab_path = tiny_dataset
    out = tmp_path / "syn"
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    monkeypatch.setattr(store, "code_version", lambda: "changed-code")
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert before.keys() == after.keys() and all(after[k] != before[k] for k in before)


def test_priors_file_reaches_the_shards_and_the_plan(tiny_dataset, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    priors = tmp_path / "priors.yaml"
    priors.write_text("classes:\n  tile:\n    stain: {shape: rectangle, size: large}\n")
    cfg = replace(TINY_SYNTH, repaint_fraction=0.0)
    base = synthesize(manifest_path, vocab_path, tmp_path / "a", cfg)
    big = synthesize(manifest_path, vocab_path, tmp_path / "b", replace(cfg, priors=str(priors)))
    assert base["fingerprint"] != big["fingerprint"]  # the resolved priors are part of the plan
    plan = json.loads((tmp_path / "b/plan.json").read_text())
    assert plan["vocabulary"]["classes"]["tile"]["stain"]["shape"] == "rectangle"

    def areas(out):
        rows = [r for r in read_samples(out).to_pylist() if r["object_class"] == "tile" and r["defect_type"] == "stain"]
        return [(decode_row(r)[1] > 0).mean() for r in rows]

    assert min(areas(tmp_path / "b")) >= 0.06 - 1e-3 > max(areas(tmp_path / "a"))  # large bin vs the name's small bin
    for r in read_samples(tmp_path / "b").to_pylist():
        assert json.loads(r["settings"])["foreground"] == "border"


def test_a_damaged_or_missing_shard_is_named_before_training_reads_it(tiny_dataset, tiny_shards, tmp_path):
    import shutil

    from uniadc_core.model.train_data import load_train_data
    from uniadc_core.synthesis.synthesize import load_inputs

    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    out = tmp_path / "synthetic"
    shutil.copytree(tiny_shards, out)
    shard = complete_shards(out)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # 64 bytes zeroed mid-file, as a failing disk might
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard.name}: its sha256 is not the one .*index.json recorded.*dvc checkout .*dvc repro synthesize"):
        load_train_data(manifest, vocab, out, 64)
    with pytest.raises(ValueError, match=shard.name):
        read_samples(out)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shard.name}: listed in .*index.json but missing"):
        read_samples(out)
