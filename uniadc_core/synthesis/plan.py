"""The synthesis plan: every sample to make, fixed by the inputs and the seed, and the shard row format.

A ``SampleSpec`` says which normal image a sample starts from, which defect type it gets and,
for few-shot generators, which real anomaly shot it reuses. Synthesizers turn specs into rows
(``shard_row``); ``code_version`` hashes the code that decides a row's content, so shards made
by other code are not resumed (the store and the reader are left out: editing them changes no pixel).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uniadc_core.config import SynthesizeConfig
from uniadc_core.data.manifest import Role
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.io import encode_png
from uniadc_core.synthesis.masks import foreground_estimator


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


SAMPLE_CODE = ("plan.py", "priors.py", "masks.py", "procedural.py", "diffusion.py")  # what decides a row's pixels


def code_version() -> str:
    """A hash of the code that makes samples (this plan, priors, masks, both synthesizers)."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in SAMPLE_CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _sample_seed(seed: int, sample_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{sample_id}".encode()).hexdigest()[:8], 16)


def plan_samples(manifest: pl.DataFrame, vocab: Vocabulary, cfg: SynthesizeConfig) -> list[SampleSpec]:
    """Every synthetic sample to make, in a fixed shuffled order; depends only on its inputs and the seed."""
    specs: list[SampleSpec] = []
    normals = manifest.filter(pl.col("role") == Role.NORMAL_SHOT)
    shots = manifest.filter(pl.col("role") == Role.ANOMALY_SHOT)
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


CACHE_BYTES = 256 << 20  # decoded inputs kept per process: a plan reuses each normal (MTD: 900 reads of 382 files)
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_cached_bytes = 0
_cache_lock = threading.Lock()


def _cached(kind: object, pre: Preprocess, path: str, load: Callable[[], np.ndarray]) -> np.ndarray:
    """``load()`` of a file, kept (least recently used out, at most ``CACHE_BYTES``) under the file's absolute path,
    device, inode, size and change times, so a rewritten file is read again (an atomic rewrite is a new inode).
    The array is read-only: a synthesizer that wrote into a shared input would corrupt later samples, so it
    raises instead."""
    global _cached_bytes
    try:
        st = os.stat(path)
    except OSError:
        return load()  # the loader's own error names the file and the fix
    key = (kind, pre, os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _cache_lock:  # shards are made by threads at once (runner local)
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    arr = load()  # outside the lock: two threads may both load a file once, never a wrong one
    arr.flags.writeable = False
    with _cache_lock:
        if key not in _cache:
            _cache[key] = arr
            _cached_bytes += arr.nbytes
        while _cached_bytes > CACHE_BYTES and len(_cache) > 1:
            _cached_bytes -= _cache.popitem(last=False)[1].nbytes
    return arr


def clear_cache() -> None:
    """Forget every kept input (a benchmark's passes each start cold, as a fresh worker does)."""
    global _cached_bytes
    with _cache_lock:
        _cache.clear()
        _cached_bytes = 0


def _image(pre: Preprocess, path: str) -> np.ndarray:
    return _cached("image", pre, path, lambda: pre.load_image(path))


def _native(pre: Preprocess, path: str) -> np.ndarray:
    return _cached("native", pre, path, lambda: pre.native(pre.decode_image(path)))


def load_sources(spec: SampleSpec, vocab: Vocabulary, size: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(normal image, real anomaly shot or None, its mask or None) of a spec, at ``size``."""
    pre = vocab.preprocess(size)
    if pre.tiled:
        return _tile_sources(spec, pre)
    normal = _image(pre, spec.source_path)
    if spec.shot_path is None:
        return normal, None, None
    # the shot's pixels of this spec's type (an image with several types gives each type its own region)
    region = _cached(f"labels:{spec.defect_index}", pre, spec.shot_mask_path,
                     lambda: pre.load_labels(spec.shot_mask_path, spec.defect_index) == spec.defect_index)
    return normal, _image(pre, spec.shot_path), region


def load_foreground(spec: SampleSpec, vocab: Vocabulary, size: int, normal: np.ndarray, method: str) -> np.ndarray:
    """The foreground estimate (``method``) of the spec's normal, ``normal`` as ``load_sources`` gave it: kept with
    the decoded image, as a plan reuses normals (a native tile is a fresh crop each time: ``normal`` estimated
    afresh). The key holds the estimator itself, so one registered again under the same name is not answered
    from the cache."""
    pre = vocab.preprocess(size)
    estimator = foreground_estimator(method)
    if pre.tiled:
        return estimator(normal)
    # estimated from the file's own decoded image (the one load_sources gave), whatever array the caller holds
    return _cached(("foreground", estimator), pre, spec.source_path, lambda: estimator(_image(pre, spec.source_path)))


def _tile_rng(spec: SampleSpec, what: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 0x711E, what])


def _tile_sources(spec: SampleSpec, pre: Preprocess) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``resize: tile``: a seeded native-resolution tile of the normal; the shot's tile centred on its defect."""
    native = _native(pre, spec.source_path)
    normal = pre.crop(native, *pre.random_corner(native.shape, _tile_rng(spec, 0)))
    if spec.shot_path is None:
        return normal, None, None
    shot = _native(pre, spec.shot_path)
    region = pre.native_labels(spec.shot_mask_path, spec.defect_index) == spec.defect_index
    corner = pre.corner_around(region)
    return normal, pre.crop(shot, *corner), pre.crop(region, *corner)  # padded alike: a mirrored defect is in the region



def is_gray(image: np.ndarray) -> bool:
    """True for an (H, W, 3) image whose three channels are equal."""
    return bool((image[..., 1] == image[..., 0]).all() and (image[..., 2] == image[..., 0]).all())


def _stored(image: np.ndarray) -> np.ndarray:
    """A gray image (three equal channels, as MTD, KolektorSDD and DeepPCB give) as one channel: a third of the
    PNG encoding time and size; read back as RGB by ``decode_row``, pixel for pixel the same."""
    return image[..., 0] if is_gray(image) else image


def shard_row(spec: SampleSpec, image: np.ndarray, mask: np.ndarray, quality: float, settings: dict) -> dict:
    return {
        "sample_id": spec.sample_id,
        "source_image_id": spec.source_image_id,
        "object_class": spec.object_class,
        "defect_type": spec.defect_type,
        "image_png": encode_png(_stored(image)),
        "mask_png": encode_png(mask.astype(np.uint8) * spec.defect_index),
        "generator": spec.generator,
        "seed": spec.seed,
        "quality": quality,
        "settings": json.dumps(settings, sort_keys=True),
    }
