"""Synthetic samples as Parquet shards: a deterministic plan, atomic shard writes, a resumable index.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from uniadc_core.config import SynthesizeConfig, parse_params
from uniadc_core.io import atomic_path, decode_image, load_image, load_mask, png_bytes, read_json, resize, sha256_file, write_json
from uniadc_core.priors import Vocabulary
from uniadc_core.synth.procedural import synthesize_cut_paste, synthesize_zero_shot

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("source_image_id", pa.string()),
    ("object_class", pa.string()),
    ("defect_type", pa.string()),
    ("image_png", pa.binary()),
    ("mask_png", pa.binary()),  # pixel value = defect index (vocabulary order, 1-based), 0 = normal
    ("generator", pa.string()),  # procedural | cutpaste | diffusion | repaint
    ("seed", pa.int64()),
    ("quality", pa.float32()),
    ("settings", pa.string()),  # JSON: how the sample was made (prior; diffusion: model, strength, steps, guidance, seed, selection)
])


@dataclass(frozen=True)
class SampleSpec:
    sample_id: str
    object_class: str
    defect_type: str
    defect_index: int
    generator: str
    seed: int
    source_image_id: str
    source_path: str
    shot_path: str | None = None
    shot_mask_path: str | None = None


def code_version() -> str:
    """A hash of the synthesizers' source (priors, masks, both backends, this module): shards made by
    other code are not resumed."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in (here.parent / "priors.py", here.parent / "masks.py", here / "procedural.py", here / "diffusion.py", here / "shards.py"):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


def _sample_seed(seed: int, sample_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{sample_id}".encode()).hexdigest()[:8], 16)


def plan_samples(manifest: pl.DataFrame, vocab: Vocabulary, cfg: SynthesizeConfig) -> list[SampleSpec]:
    """Every synthetic sample to make, in a fixed shuffled order; depends only on its inputs and the seed."""
    specs: list[SampleSpec] = []
    normals = manifest.filter(pl.col("role") == "normal_shot")
    shots = manifest.filter(pl.col("role") == "anomaly_shot")
    for cls in sorted(vocab.classes):
        pool = normals.filter(pl.col("object_class") == cls).sort("image_id")
        if pool.height == 0:
            msg = f"class '{cls}' has no normal shots in the manifest; synthesis needs normal images (check ingest.normal_shots)"
            raise ValueError(msg)
        for defect in sorted(vocab.classes[cls]):
            real = shots.filter((pl.col("object_class") == cls) & (pl.col("defect_type") == defect)).sort("image_id")
            n_cut = int(round(cfg.samples_per_type * cfg.repaint_fraction)) if real.height else 0
            rng = np.random.default_rng([cfg.seed, len(specs)])
            for i in range(cfg.samples_per_type):
                sample_id = f"{cls}/{defect}/{i:05d}"
                src = pool.row(int(rng.integers(pool.height)), named=True)
                shot = real.row(i % real.height, named=True) if i < n_cut else None
                specs.append(SampleSpec(
                    sample_id=sample_id,
                    object_class=cls,
                    defect_type=defect,
                    defect_index=vocab.index(defect),
                    generator=("repaint" if cfg.backend == "diffusion" else "cutpaste") if shot else cfg.backend,
                    seed=_sample_seed(cfg.seed, sample_id),
                    source_image_id=src["image_id"],
                    source_path=src["path"],
                    shot_path=shot["path"] if shot else None,
                    shot_mask_path=shot["mask_path"] if shot else None,
                ))
    # a seeded shuffle: every shard and row group mixes classes and defect types, so a reader
    # streaming a few row groups at a time still sees all of them
    order = np.random.default_rng([cfg.seed, 0x5EED]).permutation(len(specs))
    return [specs[i] for i in order]


def make_sample(spec: SampleSpec, vocab: Vocabulary, image_size: int, foreground: str = "border") -> dict:
    """One shard row made by the procedural synthesizer (zero-shot or cut-paste)."""
    rng = np.random.default_rng(spec.seed)
    normal, shot, shot_mask = _load_sources(spec, vocab, image_size)
    prior = vocab.prior(spec.object_class, spec.defect_type)
    if shot is not None:
        out = synthesize_cut_paste(normal, shot, shot_mask, rng, foreground)
        settings = {"shot": Path(spec.shot_path).name, "foreground": foreground}
    else:
        out = synthesize_zero_shot(normal, prior, rng, foreground)
        settings = {"shape": prior.shape, "size": prior.size, "foreground": foreground}
    return _row(spec, out.image, out.mask, out.quality, settings)


def _load_sources(spec: SampleSpec, vocab: Vocabulary, size: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(normal image, real anomaly shot or None, its mask or None) of a spec, at ``size``."""
    normal = resize(load_image(spec.source_path), size, policy=vocab.resize)
    if spec.shot_path is None:
        return normal, None, None
    shot = resize(load_image(spec.shot_path), size, policy=vocab.resize)
    return normal, shot, resize(load_mask(spec.shot_mask_path), size, policy=vocab.resize)


def _row(spec: SampleSpec, image: np.ndarray, mask: np.ndarray, quality: float, settings: dict) -> dict:
    return {
        "sample_id": spec.sample_id,
        "source_image_id": spec.source_image_id,
        "object_class": spec.object_class,
        "defect_type": spec.defect_type,
        "image_png": png_bytes(image),
        "mask_png": png_bytes(mask.astype(np.uint8) * spec.defect_index),
        "generator": spec.generator,
        "seed": spec.seed,
        "quality": quality,
        "settings": json.dumps(settings, sort_keys=True),
    }


def make_diffusion_rows(specs: list[SampleSpec], vocab: Vocabulary, cfg: SynthesizeConfig) -> list[dict]:
    """Shard rows made by the diffusion synthesizer, in batched pipeline calls."""
    from uniadc_core.synth.diffusion import Job, shared_pipeline, shared_selector, synthesize_batch

    jobs = []
    for spec in specs:
        normal, shot, shot_mask = _load_sources(spec, vocab, cfg.image_size)
        types = vocab.classes[spec.object_class]
        class_types = {t: (p.prompts[0] if p.prompts else t.replace("_", " ")) for t, p in types.items()}
        jobs.append(Job(normal, vocab.prior(spec.object_class, spec.defect_type), spec.seed, spec.defect_type,
                        class_types, shot, shot_mask, cfg.foreground))
    with shared_pipeline(cfg.diffusion) as pipe:
        made = synthesize_batch(pipe, jobs, cfg.diffusion, shared_selector(cfg.diffusion, pipe.device))
    return [_row(spec, out.image, out.mask, out.quality, settings) for spec, (out, settings) in zip(specs, made, strict=True)]


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
                log.info("synthesize: plan changed (%s -> %s); discarding %d old shard(s)", index.get("fingerprint"), fingerprint, len(index["shards"]))
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
    if cfg.backend == "diffusion":
        rows = make_diffusion_rows(specs, vocab, cfg)
    else:
        if progress:
            from tqdm import tqdm

            specs = tqdm(specs, desc=shard_name(shard_id), unit="sample", leave=False)
        rows = [make_sample(s, vocab, cfg.image_size, cfg.foreground) for s in specs]
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
    return index


# ---------------------------------------------------------------------------- reading


def complete_shards(out_dir: str | Path) -> list[Path]:
    """Paths of the indexed shards; refuses an incomplete index."""
    out_dir = Path(out_dir)
    index = read_json(out_dir / "index.json")
    if not index.get("complete"):
        msg = f"{out_dir}/index.json is not complete; re-run the synthesize stage (`dvc repro synthesize`)"
        raise ValueError(msg)
    return [out_dir / name for name in index["shards"]]


def read_samples(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of the complete shards as one table."""
    paths = complete_shards(out_dir)
    if not paths:
        return SHARD_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])


def decode_row(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, mask (H, W) uint8 of defect indices) of a shard row."""
    image = decode_image(row["image_png"], f"sample {row['sample_id']}")
    mask = decode_image(row["mask_png"], f"mask of sample {row['sample_id']}", mode="L")
    return image, mask
