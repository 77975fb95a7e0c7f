"""Give a trained discriminator its memory of normal patches and the statistics that fuse the two maps.

    attach_memory(model, normals, holdout, cfg.memory, seed)   # after training, before saving

The memory holds patches of the normal *training* shots only (in the views ``augment`` allows:
flips, 90-degree turns), subsampled at random to ``max_patches`` (each batch keeps only its drawn
patches, so RAM holds no more) and then to ``size`` by the coreset selection. With ``budget:
per_class`` (the default) both limits apply to each object class's normals and the memory is the
union of the class coresets, searched with no class label: a varied class (a circuit board) cannot
take the coreset centres a plain one (a tile) needs, and adding a class to a line never thins the
coverage of the others. The fusion
statistics (mean and standard deviation of each map over every pixel) come from the held-out
normals, which neither the memory nor the discriminator saw, so neither term wins the fused map
by its scale.
"""

from __future__ import annotations

import logging

import torch

from uniadc_core.config import MemoryConfig
from uniadc_core.model.discriminator import Discriminator
from uniadc_core.model.loader import Batch
from uniadc_core.model.memory import NormalMemory
from uniadc_core.model.shot_memory import build_shot_memory, calibrate_temperature
from uniadc_core.model.terms import fit_terms, memory_terms

log = logging.getLogger(__name__)


FEW_NORMALS = 16  # augment "auto": below this many normal shots the memory keeps their flips and turns


def resolve_augment(augment: str, normal_shots: int) -> str:
    """``auto``: the flips and 90-degree turns of a few shots fill a memory that would be too sparse; with many
    shots they only add views the line never shows (on MTD they cost image AUROC: benchmarks/results)."""
    if augment != "auto":
        return augment
    return "rot90" if normal_shots < FEW_NORMALS else "none"


def views(images: torch.Tensor, augment: str) -> torch.Tensor:
    """The images (N, 3, S, S) and the views of them the memory keeps."""
    out = [images]
    if augment in ("flip", "rot90"):
        out += [images.flip(-1), images.flip(-2)]
    if augment == "rot90":
        out += [images.rot90(k, (-2, -1)) for k in (1, 2, 3)]
    return torch.cat(out)


@torch.no_grad()
def _patches(model: Discriminator, normals: torch.Tensor, augment: str, limit: int, seed: int,
             batch_size: int = 16) -> tuple[torch.Tensor, int, torch.Tensor]:
    """At most ``limit`` patch features (rows of C) of the views of ``normals``, drawn uniformly at random, how
    many there were, and the index of the image in ``normals`` each row (or view of it) came from: each batch
    keeps only its drawn rows, so RAM holds ``limit`` rows, not all."""
    device = model.mean.device
    n_views = len(views(normals[:1], augment))
    rows, origins, keep, offset = [], [], None, 0
    for i in range(0, len(normals), batch_size):
        batch = views(normals[i:i + batch_size], augment)
        image_of = i + torch.arange(len(batch)) % (len(batch) // n_views)  # views() stacks the whole batch view by view
        for j in range(0, len(batch), batch_size):
            p = model.patch_features(batch[j:j + batch_size].to(device)).float().cpu()  # (b, C, h, w)
            if keep is None:  # every image has the same h x w patches: draw the kept ones once
                total = p.shape[2] * p.shape[3] * n_views * len(normals)
                keep = torch.zeros(total, dtype=torch.bool)
                keep[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:limit]] = True
            drawn = keep[offset:offset + p.shape[0] * p.shape[2] * p.shape[3]]
            rows.append(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])[drawn])
            origins.append(image_of[j:j + batch_size].repeat_interleave(p.shape[2] * p.shape[3])[drawn])
            offset += len(drawn)
    return torch.cat(rows), offset, torch.cat(origins)


@torch.no_grad()
def calibrate(model: Discriminator, holdout: torch.Tensor, batch_size: int = 16) -> Discriminator:
    """Fit the standardiser of each of the model's score terms on every pixel of ``holdout`` (N, 3, S, S) uint8
    held-out normals, which neither the memory nor the discriminator saw (``terms.fit_terms``: one pass)."""
    if len(model.config.terms) < 2:
        return model
    model.eval()
    device = model.mean.device
    maps = (model.component_maps(holdout[i:i + batch_size].to(device))[2] for i in range(0, len(holdout), batch_size))
    model.config.terms = fit_terms(model.config.terms, maps)
    log.info("train: score terms %s", [(t.name, t.weight, round(t.mean, 4), round(t.std, 4)) for t in model.config.terms])
    return model


def class_groups(classes: list[str] | None, n: int, budget: str) -> dict[str, torch.Tensor]:
    """The row indices of each object class (``budget: per_class``), or of all ``n`` rows as one group."""
    if budget != "per_class" or not classes:
        return {"": torch.arange(n)}
    if len(classes) != n:
        msg = f"normal memory: {len(classes)} class names for {n} normal images"
        raise ValueError(msg)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        groups.setdefault(c, []).append(i)
    return {c: torch.tensor(rows) for c, rows in sorted(groups.items())}


def attach_memory(model: Discriminator, normals: torch.Tensor, holdout: torch.Tensor, cfg: MemoryConfig, seed: int = 0,
                  classes: list[str] | None = None, items: list[str] | None = None) -> Discriminator:
    """Build the memory from ``normals`` (N, 3, S, S) uint8 of the object ``classes`` (one name per image;
    None: one class), add its score term and fit the terms' standardisers on ``holdout`` (``calibrate``). ``items``
    (one name per image: the physical part it shows) are recorded with the bank, row by row, as indices into
    ``config.memory["items"]``, so a part's own rows can be left out when its images are scored
    (``NormalMemory.without``, fit_cada.leave_item_out)."""
    if cfg.weight <= 0:
        return model
    model.eval()
    if items is not None and len(items) != len(normals):
        msg = f"normal memory: {len(items)} item names for {len(normals)} normal images"
        raise ValueError(msg)
    names = sorted(set(items)) if items is not None else []
    index = {x: i for i, x in enumerate(names)}
    item_of = torch.tensor([index[x] for x in items] if items is not None else [], dtype=torch.long)
    banks, sources, drawn, total, channels = [], [], 0, 0, 0
    for name, rows in class_groups(classes, len(normals), cfg.budget).items():
        augment = resolve_augment(cfg.augment, len(rows))
        patches, n, origin = _patches(model, normals[rows], augment, cfg.max_patches, seed)
        memory = NormalMemory.build(patches, cfg.size, cfg.selection, seed, item_of[rows[origin]] if items is not None else None)
        banks.append(memory.bank)
        sources.append(memory.sources)
        drawn, total, channels = drawn + len(patches), total + n, patches.shape[1]
        if name:
            log.info("train: memory of class %s: %d patches (%s of %d drawn from %d, views: %s)", name, len(banks[-1]), cfg.selection,
                     len(patches), n, augment)
    model.memory = NormalMemory(torch.cat(banks), torch.cat(sources) if items is not None else None)
    model.config.memory = {"k": cfg.k, "smooth": cfg.smooth, **({"items": names} if items is not None else {})}
    model.config.terms = memory_terms(cfg.weight)
    log.info("train: normal memory of %d patches (%s of %d drawn from %d, %d channels, %d classes)",
             len(model.memory), cfg.selection, drawn, total, channels, len(banks))
    if len(holdout) == 0:
        log.warning("train: no held-out normals; the score terms are standardised on the training normals (memory distances biased low)")
        holdout = normals
    return calibrate(model, holdout)


@torch.no_grad()
def attach_shot_memory(model: Discriminator, shots: Batch, val: Batch, batch_size: int = 16) -> Discriminator:
    """Give a model with a normal memory its shot memory (``shot_memory.py``) of the real anomaly ``shots``, its
    temperature fitted on the anomalous samples of ``val`` (the synthetic validation tenth, never trained on), each
    judged at the patch farthest from the normal memory. Without a normal memory, or when a type has no real shot,
    the model keeps the type head alone."""
    if model.memory is None:
        return model
    model.eval()
    memory = build_shot_memory(model.patch_features, shots.images, shots.masks, model.config.num_types, batch_size)
    if memory is None:
        return model
    anomalous = val.masks.flatten(1).amax(1) > 0
    images, masks = val.images[anomalous], val.masks[anomalous].long()
    device = model.mean.device
    patches = [model.patch_features(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    if patches:
        p = torch.cat(patches)
        peaks = model.memory.distances(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])).view(len(p), -1).argmax(1)
        types = torch.stack([torch.bincount(m[m > 0] - 1, minlength=model.config.num_types).argmax() for m in masks])
        calibrate_temperature(memory, p, peaks, types)
    model.shot_memory = memory
    model.config.shots = {"temperature": memory.temperature}
    return model
