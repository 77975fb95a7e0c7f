"""Train the discriminator on real normals, real anomaly shots and synthetic samples.

Checkpoint choice uses training-side data only: the held-out normals (``normal_holdout``) and a
held-out tenth of the synthetic samples; the test set is never read here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from uniadc_core.backbones import create_clip, text_type_embeddings
from uniadc_core.config import TrainConfig
from uniadc_core.io import atomic_dir, load_image, load_mask, resize
from uniadc_core.metrics import auroc
from uniadc_core.model import Discriminator, ModelConfig, discriminator_loss, images_to_tensor, predict_from_logits, save_model
from uniadc_core.priors import Vocabulary
from uniadc_core.synth.shards import decode_row

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) uint8
    masks: torch.Tensor  # (N, S, S) uint8 defect index, 0 = normal
    classes: list[str]


@dataclass
class TrainData:
    normals: Batch
    shots: Batch
    synthetic: Batch
    val: Batch


def _real(frame: pl.DataFrame, vocab: Vocabulary, size: int) -> Batch:
    images, masks = [], []
    for row in frame.iter_rows(named=True):
        images.append(resize(load_image(row["path"]), size, policy=vocab.resize))
        if row["is_anomaly"]:
            mask = resize(load_mask(row["mask_path"]), size, policy=vocab.resize)
            masks.append(mask.astype(np.uint8) * vocab.index(row["defect_type"]))
        else:
            masks.append(np.zeros((size, size), np.uint8))
    return _batch(images, masks, frame["object_class"].to_list())


def _batch(images: list[np.ndarray], masks: list[np.ndarray], classes: list[str]) -> Batch:
    if not images:
        return Batch(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1, 1, dtype=torch.uint8), [])
    return Batch(images_to_tensor(images), torch.from_numpy(np.stack(masks)), classes)


def _cat(a: Batch, b: Batch) -> Batch:
    if len(a.classes) == 0:
        return b
    if len(b.classes) == 0:
        return a
    return Batch(torch.cat([a.images, b.images]), torch.cat([a.masks, b.masks]), a.classes + b.classes)


def is_validation_sample(sample_id: str) -> bool:
    """A fixed tenth of the synthetic samples, chosen by a hash of the id, is kept for checkpoint choice."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:4], 16) % 10 == 0


def synthetic_batches(table: pa.Table, size: int) -> tuple[Batch, Batch]:
    """(train, validation) batches of the synthetic samples."""
    parts: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    for row in table.to_pylist():
        image, mask = decode_row(row)
        dest = parts[is_validation_sample(row["sample_id"])]
        dest[0].append(resize(image, size))
        dest[1].append(resize(mask, size, nearest=True))
        dest[2].append(row["object_class"])
    return _batch(*parts[False]), _batch(*parts[True])


def load_train_data(manifest: pl.DataFrame, vocab: Vocabulary, synthetic: pa.Table, size: int) -> TrainData:
    normals = _real(manifest.filter(pl.col("role") == "normal_shot"), vocab, size)
    if len(normals.classes) == 0:
        msg = "the manifest has no normal_shot images; training needs normal images (check ingest.normal_shots)"
        raise ValueError(msg)
    shots = _real(manifest.filter(pl.col("role") == "anomaly_shot"), vocab, size)
    holdout = _real(manifest.filter(pl.col("role") == "normal_holdout"), vocab, size)
    syn_train, syn_val = synthetic_batches(synthetic, size)
    return TrainData(normals, shots, syn_train, _cat(holdout, syn_val))


def _augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal and vertical flips per sample."""
    n = images.shape[0]
    for dim in (-1, -2):
        flip = torch.rand(n, generator=gen) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(dim), images)
        masks = torch.where(flip.view(n, 1, 1), masks.flip(dim), masks)
    return images, masks


def _epoch_indices(data: TrainData, cfg: TrainConfig, gen: torch.Generator) -> list[tuple[str, int]]:
    """One epoch's samples: every normal once (topped up at random to half of ``min_epoch_samples``
    in few-shot settings), anomaly shots at about a tenth of that, synthetic samples in proportion."""
    n = len(data.normals.classes)
    n_real = max(n, cfg.min_epoch_samples // 2)
    picks = list(range(n)) + [int(i) for i in torch.randint(n, (n_real - n,), generator=gen)]
    items = [("normals", i) for i in picks]
    if data.shots.classes:  # real anomalies are rare: repeat them so they weigh like ~10% of the normals
        reps = max(1, round(0.1 * n_real / len(data.shots.classes)))
        items += [("shots", i) for i in range(len(data.shots.classes))] * reps
    n_syn = len(data.synthetic.classes)
    if n_syn:
        k = int(round(cfg.synthetic_per_epoch * n_real))
        items += [("synthetic", int(i)) for i in torch.randint(n_syn, (k,), generator=gen)]
    order = torch.randperm(len(items), generator=gen)
    return [items[i] for i in order]


def _gather(data: TrainData, items: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([getattr(data, src).images[i] for src, i in items])
    masks = torch.stack([getattr(data, src).masks[i] for src, i in items])
    return images, masks


@torch.no_grad()
def validate(model: Discriminator, val: Batch, cfg: TrainConfig, batch_size: int = 32) -> dict[str, float]:
    model.eval()
    losses, scores = [], []
    for i in range(0, len(val.classes), batch_size):
        images, masks = val.images[i:i + batch_size], val.masks[i:i + batch_size].long()
        logits, emb = model(images)
        losses.append(discriminator_loss(logits, masks, cfg.focal_gamma, cfg.type_loss_weight)["loss"].item() * len(images))
        scores.append(predict_from_logits(logits, emb).score)
    labels = (val.masks.flatten(1).amax(1) > 0).numpy()
    out = {"val_loss": float(np.sum(losses) / max(1, len(val.classes)))}
    if 0 < labels.sum() < len(labels):
        out["val_image_auroc"] = auroc(torch.cat(scores).numpy(), labels)
    return out


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    x = images.float() / 255.0
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp(min=0.02).tolist()


@torch.no_grad()
def _update_ema(ema: Discriminator, model: Discriminator, decay: float) -> None:
    """Average the trained parameters and the buffers; frozen weights are the same in both."""
    for e, m in zip(ema.parameters(), model.parameters()):
        if m.requires_grad:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m, alpha=1 - decay)
        else:
            e.copy_(m)


def _fingerprint(data: TrainData, cfg: TrainConfig, vocab: Vocabulary) -> str:
    """What a checkpoint must match to be resumed: config, vocabulary and the training tensors."""
    h = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), vocab.defect_types], sort_keys=True).encode())
    for part in (data.normals, data.shots, data.synthetic, data.val):
        h.update(str(tuple(part.images.shape)).encode())
        h.update(str(int(part.images.sum())).encode() + str(int(part.masks.sum())).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, model, ema, best_state, opt, sched, gen, progress: dict) -> None:
    """Everything needed to continue after ``progress['epoch']``; replaced atomically."""
    with atomic_dir(path) as tmp:
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
        if best_state is not None:
            tensors.update({f"best.{k}": v.detach().contiguous() for k, v in best_state.items()})
        tensors["rng.generator"] = gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "state.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))


def _load_checkpoint(path: Path, fingerprint: str, model, ema, opt, sched, gen) -> tuple[dict | None, dict]:
    """(best_state, progress) from a matching checkpoint, else (None, {})."""
    progress_file = path / "progress.json"
    if not progress_file.is_file():
        return None, {}
    progress = json.loads(progress_file.read_text())
    if progress.get("fingerprint") != fingerprint:
        log.info("train: ignoring checkpoint %s (made with other data or params)", path)
        return None, {}
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    states = torch.load(path / "optimizer.pt", weights_only=True)  # plain tensors and numbers only
    opt.load_state_dict(states["optimizer"])
    sched.load_state_dict(states["scheduler"])
    log.info("train: resuming from %s after epoch %d", path, progress["epoch"])
    return best, progress


def train_discriminator(
    data: TrainData,
    vocab: Vocabulary,
    cfg: TrainConfig,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
) -> tuple[Discriminator, list[dict]]:
    """Train and return the model at its best validation loss, with the per-epoch history.

    With ``checkpoint``, the state after every epoch is saved there and a matching checkpoint is
    resumed; ``stop_after`` ends the run after that many epochs in total (the checkpoint remains).
    """
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = channel_stats(data.normals.images)
    options, size, embed_dim, type_init = {}, cfg.image_size, cfg.embed_dim, None
    if cfg.backbone == "open_clip":
        options = {**dataclasses.asdict(cfg.clip)}
        clip, pre = create_clip(cfg.clip.model_name, cfg.clip.pretrained, cfg.clip.offline, cfg.clip.config_dir)
        mean, std, size, embed_dim = pre.mean, pre.std, pre.image_size, clip.visual.output_dim
        # defect types start at their text embeddings, as in UniADC
        type_init = text_type_embeddings(clip, cfg.clip.model_name, cfg.clip.object_name, vocab.defect_types)
        del clip
        if size != data.normals.images.shape[-1]:
            msg = (f"train.image_size is {data.normals.images.shape[-1]} but open_clip model '{cfg.clip.model_name}' "
                   f"takes {size} px; set train.image_size: {size}")
            raise ValueError(msg)
    config = ModelConfig(
        defect_types=vocab.defect_types,
        backbone=cfg.backbone,
        backbone_options=options,
        image_size=size,
        width=cfg.width,
        embed_dim=embed_dim,
        mean=mean,
        std=std,
        classes={c: sorted(t) for c, t in vocab.classes.items()},
        resize=vocab.resize,
    )
    model = Discriminator(config)
    if type_init is not None:
        model.type_embeddings.data.copy_(type_init)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(_epoch_indices(data, cfg, torch.Generator().manual_seed(0))) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    ema = copy.deepcopy(model).requires_grad_(False)  # moving average of the weights: steadier than the last step
    fingerprint = _fingerprint(data, cfg, vocab)
    best_state, state = _load_checkpoint(Path(checkpoint), fingerprint, model, ema, opt, sched, gen) if checkpoint else (None, {})
    start, best, history = state.get("epoch", 0), state.get("best", float("inf")), state.get("history", [])
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start * steps_per_epoch, desc="train", unit="step", disable=not progress)
    for epoch in range(start, last):
        model.train()
        t0, items, sums = time.perf_counter(), _epoch_indices(data, cfg, gen), {}
        for step in range(steps_per_epoch):
            images, masks = _gather(data, items[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            images, masks = _augment(images, masks, gen)
            logits, _ = model(images)
            parts = discriminator_loss(logits, masks.long(), cfg.focal_gamma, cfg.type_loss_weight)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            _update_ema(ema, model, cfg.ema_decay)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            bar.update()
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
        record = {"epoch": epoch + 1, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()}}
        record.update(validate(ema, data.val, cfg) if data.val.classes else {})
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        score = record.get("val_loss", record["train_loss"])
        if score < best:
            best, best_state = score, copy.deepcopy(ema.state_dict())
            record["best"] = True
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        if checkpoint:
            _save_checkpoint(Path(checkpoint), model, ema, best_state, opt, sched, gen,
                             {"epoch": epoch + 1, "best": best, "history": history, "fingerprint": fingerprint})
    bar.close()
    if best_state is not None:
        ema.load_state_dict(best_state)
    return ema.eval(), history


def checkpoint_path(out_dir: str | Path) -> Path:
    """Where training keeps its per-epoch checkpoint: beside the model directory, hidden."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.checkpoint")


def train(manifest: pl.DataFrame, vocab: Vocabulary, synthetic: pa.Table, cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Train (resuming an interrupted run of the same data and params) and save the model directory."""
    data = load_train_data(manifest, vocab, synthetic, cfg.image_size)
    log.info("train: %d normals, %d anomaly shots, %d synthetic, %d validation samples",
             len(data.normals.classes), len(data.shots.classes), len(data.synthetic.classes), len(data.val.classes))
    ckpt = checkpoint_path(out_dir)
    model, history = train_discriminator(data, vocab, cfg, checkpoint=ckpt)
    path = save_model(model, out_dir, extra={"history.json": history})
    shutil.rmtree(ckpt, ignore_errors=True)
    return path
