"""Training samples as a stream: real images in memory, synthetic samples read from the Parquet
shards one row group at a time, mixed by configured shares and split across DataLoader workers.

    units = row_groups(synthetic_dir)               # (shard, row group) pairs of the complete index (data.shards)
    stream = MixedStream(normals, shots, units, ...)
    loader = make_loader(stream, batch_size, workers)
    stream.set_epoch(e); for batch in loader: ...    # batch["image"] (B, 3, S, S) uint8, ["mask"], ["key"]

Determinism: every random choice comes from generators seeded by (seed, epoch, worker), and the
DataLoader returns batches in worker order, so a seed and a worker count fix the batches exactly.
Only a tenth of the synthetic samples (chosen by a hash of the id) is kept out for validation.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.data.shards import RowGroup, read_row_group

START_METHOD = "forkserver"
AUGMENTATIONS = ("none", "flip", "strong")


class Batch(NamedTuple):
    """Samples held in memory."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    masks: torch.Tensor  # (N, S, S) uint8 defect index, 0 = normal
    classes: list[str]
    ids: tuple[str, ...] = ()  # manifest image ids, where known


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class MixedStream(IterableDataset):
    """``steps`` batches per epoch; each sample is synthetic with probability ``synthetic_fraction``,
    a real anomaly shot with ``shot_fraction`` (when there are shots), else a real normal.

    Normals are visited in a fresh random order each epoch (cycled when the epoch needs more);
    synthetic row groups are shuffled per epoch and dealt to the workers, and each worker draws at
    random from a buffer of ``buffer_rows`` rows filled from several of its row groups. Random horizontal and vertical
    flips are applied per sample and recorded in the key.
    """

    def __init__(self, normals: Batch, shots: Batch, units: list[RowGroup], pre: Preprocess, batch_size: int, steps: int,
                 synthetic_fraction: float, shot_fraction: float, seed: int, augment: str = "flip", buffer_rows: int = 512):
        super().__init__()
        self.normals, self.shots, self.units = normals, shots, list(units)
        self.pre, self.batch_size, self.steps = pre, batch_size, steps
        self.p_syn = synthetic_fraction if self.units else 0.0
        self.p_shot = shot_fraction if len(shots.classes) else 0.0
        if augment not in AUGMENTATIONS:
            msg = f"unknown augmentation '{augment}'; valid: {', '.join(AUGMENTATIONS)}"
            raise ValueError(msg)
        self.seed, self.augment, self.buffer_rows = seed, augment, buffer_rows
        # shared with persistent DataLoader workers, which keep their own copy of everything else
        self._epoch = mp.get_context(START_METHOD).RawValue("q", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating the loader for that epoch."""
        self._epoch.value = epoch

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def _rows(self, units: list[RowGroup]) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, str]]:
        """The training rows of ``units``, cycled; ends only if a whole pass has none."""
        while True:
            produced = False
            for unit in units:
                rows = read_row_group(unit, self.pre)
                produced = produced or bool(rows)
                yield from rows
            if not produced:
                return

    def _synthetic(self, units: list[RowGroup], gen: torch.Generator) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """Samples drawn at random from a buffer of ``buffer_rows`` rows kept full from the row groups,
        so consecutive samples come from several row groups, not one."""
        source, buffer = self._rows(units), []
        while True:
            while len(buffer) < self.buffer_rows and (row := next(source, None)) is not None:
                buffer.append(row)
            if not buffer:
                return
            i = int(torch.randint(len(buffer), (), generator=gen))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            sid, _, image, mask, _ = buffer.pop()
            yield f"syn:{sid}", torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.from_numpy(np.array(mask))

    def _normals(self, gen: torch.Generator) -> Iterator[int]:
        while True:
            yield from torch.randperm(len(self.normals.classes), generator=gen).tolist()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = torch.randperm(len(self.units), generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch))).tolist()
        mine = [self.units[i] for i in order[wid::workers]] or [self.units[i] for i in order]
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, wid))
        synthetic, normals = self._synthetic(mine, gen), self._normals(gen)
        for _ in range(wid, self.steps, workers):  # this worker's batches; the DataLoader takes them in turn
            for _ in range(self.batch_size):
                u = torch.rand((), generator=gen).item()
                item = next(synthetic, None) if u < self.p_syn else None
                if item is None and u < self.p_syn + self.p_shot and self.p_shot:
                    i = int(torch.randint(len(self.shots.classes), (), generator=gen))
                    item = (f"shot:{i}", self.shots.images[i], self.shots.masks[i])
                if item is None:
                    i = next(normals)
                    item = (f"normal:{i}", self.normals.images[i], self.normals.masks[i])
                key, image, mask = item
                if self.augment != "none":
                    flips = (torch.rand(2, generator=gen) < 0.5).tolist()
                    dims = [d for d, f in zip((-1, -2), flips, strict=True) if f]
                    if dims:
                        image, mask = image.flip(dims), mask.flip(dims)
                    key = f"{key}|{int(flips[0])}{int(flips[1])}"
                if self.augment == "strong":
                    image, mask = _crop_and_jitter(image, mask, gen)
                    key = f"{key}|{int(torch.randint(1 << 62, (), generator=gen))}"  # every strong view is new
                yield {"image": image.contiguous(), "mask": mask.contiguous(), "key": key}


def _crop_and_jitter(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of 60-100% of the area (aspect 0.8-1.25) resized back, then brightness and contrast
    jitter; the mask follows the crop (nearest)."""
    size = image.shape[-1]
    r = torch.rand(6, generator=gen).tolist()
    area, aspect = 0.6 + 0.4 * r[0], 0.8 * (1.25 / 0.8) ** r[1]
    h = min(size, max(8, round(size * (area / aspect) ** 0.5)))
    w = min(size, max(8, round(size * (area * aspect) ** 0.5)))
    y, x = int(r[2] * (size - h + 1)), int(r[3] * (size - w + 1))
    contrast, brightness = 0.8 + 0.4 * r[4], 40.0 * (r[5] - 0.5)
    out = torch.nn.functional.interpolate(image[:, y:y + h, x:x + w].float()[None], size=(size, size), mode="bilinear",
                                          align_corners=False)[0]
    mean = out.mean()
    m = torch.nn.functional.interpolate(mask[y:y + h, x:x + w][None, None].float(), size=(size, size), mode="nearest")[0, 0]
    return ((out - mean) * contrast + mean + brightness).clamp(0, 255).round().to(torch.uint8), m.to(mask.dtype)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per sample; the training process keeps the cores


def make_loader(stream: MixedStream, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of the stream; with ``workers`` > 0, row groups are read and decoded in that many processes.

    Workers are started once (persistent) from a clean forkserver process: a plain fork would copy
    whatever threads and exit handlers the caller runs (a Prefect flow run, MLflow) into each worker.
    """
    if not workers:
        return DataLoader(stream, batch_size=stream.batch_size)
    return DataLoader(stream, batch_size=stream.batch_size, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=True,
                      multiprocessing_context=START_METHOD)
