"""The shard writer: the plan on disk, atomic shard writes, a resumable index (reader: ``uniadc_core.data.shards``).

Layout of the output folder::

    plan.json            every shard's sample specs and the plan's fingerprint
    shard-00000.parquet  a few hundred rows, zstd, written to a temp name then renamed
    index.json           complete shards with row counts and sha256; ``complete`` once all are in

A shard is complete only when it is listed in ``index.json`` with a matching checksum, so a
crashed run resumes where it stopped and a half-written shard is never read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from uniadc_core.config import SynthesizeConfig, parse_params
from uniadc_core.data.shards import SHARD_SCHEMA, shard_name
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.io import atomic_path, read_json, sha256_file, write_json
from uniadc_core.synthesis.plan import SampleSpec, clear_cache, code_version
from uniadc_core.synthesis.synthesizers import get_synthesizer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the store


@contextmanager
def _index_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the index: safe across threads and processes."""
    with open(out_dir / ".index.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_index(out_dir: Path) -> dict:
    path = out_dir / "index.json"
    if not path.is_file():
        return {"fingerprint": None, "shards": {}, "complete": False}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is unreadable; treating every shard as missing", path)
        return {"fingerprint": None, "shards": {}, "complete": False}


def prepare(out_dir: str | Path, specs: list[SampleSpec], cfg: SynthesizeConfig, vocab: Vocabulary) -> list[int]:
    """Write the plan (with the resolved priors), keep complete shards of the same plan, remove anything
    else; return pending shard ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [specs[i:i + cfg.shard_size] for i in range(0, len(specs), cfg.shard_size)]
    config = asdict(cfg)
    for key in ("workers", "runner", "dask_address"):  # how shards are scheduled does not change what they hold
        config.pop(key)
    if cfg.backend != "diffusion":  # diffusion knobs do not change procedural shards
        config.pop("diffusion")
    plan = {"config": config, "code": code_version(), "vocabulary": vocab.to_dict(),
            "shards": [[asdict(s) for s in shard] for shard in shards]}
    fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    plan["fingerprint"] = fingerprint
    with _index_lock(out_dir):
        index = _read_index(out_dir)
        if index.get("fingerprint") != fingerprint:
            if index.get("shards"):
                log.info("synthesize: plan changed (%s -> %s); discarding %d old shard(s)", index.get("fingerprint"), fingerprint,
                         len(index["shards"]))
            index = {"fingerprint": fingerprint, "shards": {}, "complete": False}
        kept = {}
        for name, entry in index["shards"].items():
            path = out_dir / name
            if path.is_file() and sha256_file(path) == entry["sha256"]:
                kept[name] = entry
            else:
                log.warning("synthesize: %s is missing or corrupt; it will be rewritten", path)
        index["shards"] = kept
        index["complete"] = False
        for path in out_dir.iterdir():  # temp files, unindexed shards, files of an older plan
            if path.name in ("index.json", "plan.json", ".index.lock") or path.name in kept:
                continue
            if path.is_file():
                path.unlink()
        write_json(out_dir / "plan.json", plan)
        write_json(out_dir / "index.json", index)
    pending = [i for i in range(len(shards)) if shard_name(i) not in kept]
    log.info("synthesize: %d shard(s) planned, %d complete, %d to make", len(shards), len(kept), len(pending))
    return pending


def load_plan(out_dir: str | Path) -> dict:
    return read_json(Path(out_dir) / "plan.json")


def write_shard(out_dir: str | Path, shard_id: int, row_group_size: int = 64, progress: bool = False) -> Path:
    """Make one shard from the plan (its config and priors included), write it atomically, index it."""
    out_dir = Path(out_dir)
    plan = load_plan(out_dir)
    specs = [SampleSpec(**s) for s in plan["shards"][shard_id]]
    vocab = Vocabulary.from_dict(plan["vocabulary"])
    cfg = parse_params({"synthesize": plan["config"]}).synthesize
    rows = get_synthesizer(cfg.backend)(specs, vocab, cfg, progress=progress, label=shard_name(shard_id))
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    path = out_dir / shard_name(shard_id)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    entry = {"rows": table.num_rows, "sha256": sha256_file(path)}
    with _index_lock(out_dir):
        index = _read_index(out_dir)
        if index.get("fingerprint") != plan["fingerprint"]:
            msg = f"{out_dir}/index.json belongs to another plan; another synthesis run is writing here"
            raise RuntimeError(msg)
        index["shards"][path.name] = entry
        index["shards"] = dict(sorted(index["shards"].items()))
        write_json(out_dir / "index.json", index)
    return path


def finalize(out_dir: str | Path) -> dict:
    """Check every planned shard is indexed and mark the index complete."""
    out_dir = Path(out_dir)
    plan = load_plan(out_dir)
    with _index_lock(out_dir):
        index = _read_index(out_dir)
        missing = [shard_name(i) for i in range(len(plan["shards"])) if shard_name(i) not in index["shards"]]
        if missing:
            msg = f"{out_dir}: shards not written: {missing}; re-run the synthesize stage to finish them"
            raise RuntimeError(msg)
        index["complete"] = True
        index["rows"] = sum(e["rows"] for e in index["shards"].values())
        config = plan["config"]
        candidates = config.get("diffusion", {}).get("candidates", 1) if config.get("backend") == "diffusion" else 1
        index["generated"] = index["rows"] * candidates  # every kept sample is the best of its candidates
        index["kept_ratio"] = round(1 / candidates, 6)
        write_json(out_dir / "index.json", index)
    clear_cache()  # the decoded inputs are not needed after the last shard: the later stages get the memory back
    return index


