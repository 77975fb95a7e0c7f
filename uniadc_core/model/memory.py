"""A memory of normal patch features: what normal looks like, kept as PatchCore keeps it.

    memory = NormalMemory.build(features, size=4096, method="greedy")    # (N, C) patches of the normal shots
    d = memory.distances(query, k=1)                                     # (M,) distance to the nearest normal patch

The memory holds a subset of the normal training patches: ``greedy`` picks it by k-centre
(farthest-point) selection (on a random projection to 128 dimensions when the features are wider), so
every normal patch has a memory patch near it; ``random`` draws it uniformly, for comparison. A patch far from every memory patch looks
like nothing normal the model has seen. Distances are computed in chunks with one matrix product
per chunk (``[q, 1] @ [-2 m; |m|^2]``) to find the nearest rows, whose distances are then taken
directly (``|q - m|``, exact to float32 whatever the batch), so memory stays bounded whatever the
number of queries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SELECTIONS = ("greedy", "random")


def _augmented_bank(bank: torch.Tensor) -> torch.Tensor:
    """(C + 1, N) ``[-2 m; |m|^2]`` of bank rows m (N, C): ``[q, 1] @ it`` is ``|m|^2 - 2 q.m`` for every pair."""
    return torch.cat([-2 * bank, (bank * bank).sum(1, keepdim=True)], 1).T.contiguous()


def _partial_sq(query: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
    """(M, N) ``|m|^2 - 2 q.m``: the squared distance less ``|q|^2``, written once by one matrix product with no
    broadcast copy (the nearest rows are the same; their distances are then taken directly)."""
    return torch.cat([query, query.new_ones(len(query), 1)], 1) @ augmented


def _sq_distances(query: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
    """(M, N) squared Euclidean distances of query rows (M, C) to the bank behind ``augmented``."""
    return _partial_sq(query, augmented).add_((query * query).sum(1, keepdim=True)).clamp_(min=0)


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0, projection_dim: int = 128) -> torch.Tensor:
    """Indices (size,) of a k-centre subset of ``features`` (N, C): each pick is the row farthest from
    those already picked, measured on a random projection to ``projection_dim`` (Johnson-Lindenstrauss)
    when C is larger.

    Each step is one vector-matrix product over the features stored channel-major (C, N), which reads
    memory in order (about 3x faster here than the row-major matrix-vector product), then
    ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` in place: a pick costs about N * C multiply-adds and no
    temporary of the size of the data."""
    n, c = features.shape
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if c > projection_dim:
        x = x @ (torch.randn(c, projection_dim, generator=gen) / math.sqrt(projection_dim))  # (N, d)
    xt = x.T.contiguous()  # (d, N)
    sq = (xt * xt).sum(0)  # (N,)
    picks = torch.empty(size, dtype=torch.long)
    picks[0] = int(torch.randint(n, (), generator=gen))
    nearest = torch.full((n,), float("inf"))  # squared distance of every row to its nearest pick
    for i in range(1, size + 1):
        j = int(picks[i - 1])
        d = (xt[:, j] @ xt).mul_(-2).add_(sq).add_(sq[j])  # (N,) squared distances to the newest pick
        torch.minimum(nearest, d, out=nearest)
        if i < size:
            picks[i] = int(nearest.argmax())
    return picks


def coverage_radius(features: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> float:
    """The largest distance of any row of ``features`` to its nearest row of ``bank``: what a coreset minimises."""
    augmented = _augmented_bank(bank.float())
    worst = 0.0
    for start in range(0, len(features), chunk):
        d = _sq_distances(features[start:start + chunk].float(), augmented).min(1).values
        worst = max(worst, float(d.max()))
    return math.sqrt(worst)


class NormalMemory:
    """A bank (K, C) of normal patch features and the nearest-neighbour distance to it."""

    def __init__(self, bank: torch.Tensor, sources: torch.Tensor | None = None):
        """``sources``: (K,) the index of the item (a normal image, or the physical part it shows) each row was drawn
        from."""
        if bank.ndim != 2 or len(bank) == 0:
            msg = f"normal memory: expected a non-empty (K, C) bank of patch features, got shape {tuple(bank.shape)}"
            raise ValueError(msg)
        if sources is not None and sources.shape != (len(bank),):
            msg = f"normal memory: sources of shape {tuple(sources.shape)} for a bank of {len(bank)} rows; expected ({len(bank)},)"
            raise ValueError(msg)
        self.bank = bank.float().contiguous()
        self.sources = None if sources is None else sources.long()
        # the product runs on rows centred on the bank's mean: distances are the same, the |q|^2 + |m|^2 it cancels
        # far smaller, so its rounding rarely reorders two near rows (which row is nearest must not depend on the batch)
        self._centre = self.bank.mean(0)
        self._augmented = _augmented_bank(self.bank - self._centre)

    @classmethod
    def build(cls, features: torch.Tensor, size: int, method: str = "greedy", seed: int = 0,
              sources: torch.Tensor | None = None, projection_dim: int = 128) -> NormalMemory:
        """A memory of at most ``size`` rows of ``features`` (N, C), chosen by ``method``; ``sources`` (N,):
        each row's item, kept for the rows chosen; ``projection_dim``: the greedy selection's projection."""
        if method not in SELECTIONS:
            msg = f"unknown memory selection '{method}'; valid: {', '.join(SELECTIONS)}"
            raise ValueError(msg)
        if size >= len(features):
            return cls(features, sources=sources)
        if method == "greedy":
            picks = greedy_coreset(features, size, seed, projection_dim)
        else:
            picks = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:size]
        return cls(features[picks], sources=None if sources is None else sources[picks])

    def without(self, item: int) -> NormalMemory:
        """This memory less the rows drawn from ``item``: close to a memory built as if that item had never been a
        normal shot (the other rows stay the centres the coreset chose with it; on the 9 training commutators of
        one KolektorSDD run, each item's highest score moved by at most 6 % between the two). Scores of the
        item's own images against it are out-of-sample, as a new part's are."""
        if self.sources is None:
            msg = "normal memory: no record of which item each row came from (a model trained before uniadc kept one); retrain the model"
            raise ValueError(msg)
        keep = self.sources != item
        if not bool(keep.any()):
            msg = f"normal memory: every row comes from item {item}; leaving it out leaves nothing to compare with"
            raise ValueError(msg)
        return NormalMemory(self.bank[keep], self.sources[keep])

    def __len__(self) -> int:
        return len(self.bank)

    @torch.no_grad()
    def distances(self, query: torch.Tensor, k: int = 1, block: int = 1 << 21) -> torch.Tensor:
        """(M,) mean distance of each query row (M, C) to its ``k`` nearest memory rows.

        On a CPU, queries go in chunks whose (chunk, K) block of distances holds about ``block`` floats
        (8 MiB; at least 128 rows): small enough to stay in the cache between the product that writes it
        and the reduction that reads it (benchmarks/memory_speed.py)."""
        augmented, bank, centre = self._augmented.to(query.device), self.bank.to(query.device), self._centre.to(query.device)
        chunk = 2048 if query.is_cuda else max(128, block // len(self.bank))  # a GPU wants large products
        kk = min(k, len(self.bank))
        out = []
        for start in range(0, len(query), chunk):
            q = query[start:start + chunk].float()
            part = _partial_sq(q - centre, augmented)
            nearest = part.topk(kk, dim=1, largest=False).indices if kk > 1 else part.min(1, keepdim=True).indices  # (m, k)
            # the product finds the nearest rows; their distances are taken again directly, free of the product's
            # cancellation (|q|^2 + |m|^2 - 2 q.m of two near vectors), so a score does not depend on the batch
            out.append((q[:, None] - bank[nearest]).square().sum(2).sqrt().mean(1))
        if not out:
            return torch.zeros(0, device=query.device)
        return torch.cat(out)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) maps smoothed by a separable Gaussian of ``sigma`` pixels (reflected borders)."""
    if sigma <= 0:
        return maps
    x = maps[:, None]
    for axis in (-1, -2):
        # a map narrower than the kernel gets the kernel cut to its width (reflection needs radius < width)
        radius = max(0, min(int(math.ceil(3 * sigma)), x.shape[axis] - 1))
        if radius == 0:
            continue
        t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        pad, shape = ((radius, radius, 0, 0), (1, 1, 1, -1)) if axis == -1 else ((0, 0, radius, radius), (1, 1, -1, 1))
        x = F.conv2d(F.pad(x, pad, mode="reflect"), kernel.view(shape))
    return x[:, 0]


def distance_map(memory: NormalMemory, patches: torch.Tensor, size: tuple[int, int], k: int = 1, smooth: float = 0.0) -> torch.Tensor:
    """(B, H, W): each patch's distance to the memory (patches (B, C, h, w)), upsampled to ``size`` and smoothed."""
    b, c, h, w = patches.shape
    d = memory.distances(patches.permute(0, 2, 3, 1).reshape(-1, c), k).view(b, 1, h, w)
    d = F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(d, smooth)
