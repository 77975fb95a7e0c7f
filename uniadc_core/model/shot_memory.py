"""A memory of what each named defect looks like: the frozen patch features of the real anomaly shots' defects.

    memory = build_shot_memory(model.patch_features, shot_images, shot_masks, num_types)  # None: a type lacks a shot
    log_p = memory.log_probs(patches)                                           # (B, K, h, w) type log-probabilities

Each real shot gives the patches of its defect (the cells whose pixels are at least ``MIN_SHARE`` defect in its
mask), in its eight flips and quarter turns (a crack or a chipped edge is the same defect turned). A patch's
evidence for type t is its distance d_t to the nearest patch of type t, turned into probabilities by
softmax(-d / temperature). The temperature is fitted by maximum likelihood on the synthetic samples at their most
anomalous patch (training-side data with known types; it never sees a test image), so the probability is a
calibrated guess, not a one-hot vote. On MTD, with one shot per type, the nearest shot patch at the memory's peak names
the defect far more often than the type head trained on synthetic samples (benchmarks/results/type_probe.md).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MIN_SHARE = 0.25  # a shot's patch is a defect patch when at least this share of its cell is defect in the mask
TEMPERATURES = np.geomspace(0.01, 2.0, 64)  # searched by maximum likelihood


class ShotMemory:
    """Defect patch features (M, C), each with its type index 0..K-1, and the softmax temperature."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, num_types: int, temperature: float = 0.1):
        if bank.ndim != 2 or labels.shape != (len(bank),):
            msg = f"shot memory: expected a (M, C) bank and (M,) labels, got {tuple(bank.shape)} and {tuple(labels.shape)}"
            raise ValueError(msg)
        missing = sorted(set(range(num_types)) - set(labels.tolist()))
        if missing:
            msg = f"shot memory: no defect patch of type index {missing}; every type needs a real shot"
            raise ValueError(msg)
        order = labels.long().argsort(stable=True)  # grouped by type: each type's rows are one slice (no boolean indexing to export)
        self.bank, self.labels = bank.float()[order].contiguous(), labels.long()[order]
        self.num_types, self.temperature = num_types, float(temperature)
        counts = torch.bincount(self.labels, minlength=num_types).tolist()
        ends = np.cumsum(counts).tolist()
        self._slices = [(e - c, e) for c, e in zip(counts, ends, strict=True)]
        self._square = (self.bank * self.bank).sum(1)

    def __len__(self) -> int:
        return len(self.bank)

    def distances(self, patches: torch.Tensor, block: int = 1 << 22) -> torch.Tensor:
        """(B, K, h, w): each patch's distance to the nearest defect patch of each type (patches (B, C, h, w)); the
        queries go in chunks whose (chunk, M) block of distances holds about ``block`` floats (16 MiB)."""
        b, c, h, w = patches.shape
        q = patches.permute(0, 2, 3, 1).reshape(-1, c).float()
        bank, square = self.bank.to(q.device), self._square.to(q.device)
        step = max(256, block // len(bank))
        parts = []
        for i in range(0, len(q), step):
            x = q[i:i + step]
            sq = ((x * x).sum(1, keepdim=True) - 2 * x @ bank.T + square).clamp(min=0)  # (chunk, M)
            parts.append(torch.stack([sq[:, a:e].min(1).values for a, e in self._slices], 1))  # (chunk, K)
        return torch.cat(parts).sqrt().view(b, h, w, self.num_types).permute(0, 3, 1, 2)

    def log_probs(self, patches: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """(B, K, h, w) log softmax(-d / temperature) of each patch's type distances."""
        t = self.temperature if temperature is None else temperature
        return (-self.distances(patches) / t).log_softmax(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank, "labels": self.labels}


def dihedral(images: torch.Tensor) -> torch.Tensor:
    """The eight flips and quarter turns of (N, ..., H, W) square images, view by view."""
    turns = [images.rot90(k, (-2, -1)) for k in range(4)]
    return torch.cat(turns + [t.flip(-1) for t in turns])


def defect_cells(labels: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, h, w) bool defect cells and (N, h, w) long their type index 0..K-1 of (N, S, S) masks of defect indices
    1..K: a cell is a defect cell when at least ``MIN_SHARE`` of it is defect (a shot whose defect is smaller than
    that everywhere keeps its cells with any defect), typed by its most frequent defect index."""
    present = [int(v) for v in labels.unique() if v > 0]
    if not present:  # shots without a mask (kept by allow_missing_masks): no defect cell to take
        empty = torch.zeros(len(labels), *grid, dtype=torch.bool)
        return empty, empty.long()
    shares = torch.stack([F.adaptive_avg_pool2d((labels == v).float()[:, None], grid)[:, 0] for v in present], 1)  # (N, V, h, w)
    best, which = shares.max(1)
    kind = torch.tensor(present)[which] - 1
    keep = best >= MIN_SHARE
    for i in range(len(labels)):
        if not bool(keep[i].any()):
            keep[i] = best[i] > 0
    return keep, kind


@torch.no_grad()
def build_shot_memory(patch_features, images: torch.Tensor, masks: torch.Tensor, num_types: int,
                      batch_size: int = 16) -> ShotMemory | None:
    """The shot memory of real anomaly shots ``images`` (N, 3, S, S) uint8 with ``masks`` (N, S, S) of defect indices
    1..K, each in its eight dihedral views; ``patch_features``: uint8 images -> (B, C, h, w). None (with a log line)
    when some type has no shot with a mask."""
    have = {int(v) for v in masks.unique() if v > 0}
    if len(images) == 0 or have != set(range(1, num_types + 1)):
        log.info("train: type evidence from the type head alone (real shots with masks cover %d of %d defect types)", len(have), num_types)
        return None
    rows, labels = [], []
    for i in range(0, len(images), batch_size):
        views, view_masks = dihedral(images[i:i + batch_size]), dihedral(masks[i:i + batch_size])
        for j in range(0, len(views), batch_size):
            p = patch_features(views[j:j + batch_size]).float().cpu()  # (b, C, h, w)
            keep, kind = defect_cells(view_masks[j:j + batch_size].long(), tuple(p.shape[-2:]))
            rows.append(p.permute(0, 2, 3, 1)[keep])
            labels.append(kind[keep])
    memory = ShotMemory(torch.cat(rows), torch.cat(labels), num_types)
    log.info("train: shot memory of %d defect patches from %d real shots (8 views each)", len(memory), len(images))
    return memory


def fit_temperature(log_likelihood, temperatures: np.ndarray = TEMPERATURES) -> float:
    """The temperature of ``temperatures`` with the highest ``log_likelihood(t)`` (the first on ties)."""
    values = [log_likelihood(float(t)) for t in temperatures]
    return float(temperatures[int(np.argmax(values))])


@torch.no_grad()
def calibrate_temperature(memory: ShotMemory, patches: torch.Tensor, peaks: torch.Tensor, types: torch.Tensor) -> float:
    """Set ``memory.temperature`` by maximum likelihood of ``types`` (N,) 0..K-1 of N labelled samples, each judged at
    its most anomalous patch (``peaks`` (N,) flat index into h * w of ``patches`` (N, C, h, w)); returns it."""
    if len(patches) == 0:
        return memory.temperature
    d = memory.distances(patches).flatten(2)  # (N, K, hw)
    at_peak = d[torch.arange(len(d)), :, peaks]  # (N, K)
    memory.temperature = fit_temperature(lambda t: float((-at_peak / t).log_softmax(1)[torch.arange(len(types)), types].sum()))
    log.info("train: shot memory temperature %.3g (maximum likelihood on %d synthetic samples)", memory.temperature, len(types))
    return memory.temperature
