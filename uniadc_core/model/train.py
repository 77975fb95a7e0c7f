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
import math
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from uniadc_core.config import TrainConfig
from uniadc_core.data.manifest import Role, item_names
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.device import resolve_device
from uniadc_core.io import atomic_dir, timings_path, write_json
from uniadc_core.metrics import auroc
from uniadc_core.model.backbones import text_type_embeddings
from uniadc_core.model.cnn import default_layers
from uniadc_core.model.discriminator import Discriminator, ModelConfig, discriminator_loss, predict_from_maps, save_model
from uniadc_core.model.fusion import attach_memory, attach_shot_memory
from uniadc_core.model.loader import Batch, MixedStream, make_loader
from uniadc_core.model.train_data import TILE_MARK, TrainData, load_train_data  # noqa: F401  (load_train_data: part of this module's API)
from uniadc_core.weights import create_clip, resolve_timm_weights

log = logging.getLogger(__name__)


def samples_per_epoch(data: TrainData, cfg: TrainConfig) -> int:
    """Enough samples for every normal once at its share of the batch (at least ``min_epoch_samples``)."""
    p_syn = cfg.synthetic_fraction if data.units else 0.0
    p_shot = cfg.shot_fraction if data.shots.classes else 0.0
    return max(cfg.min_epoch_samples, math.ceil(len(data.normals.classes) / (1.0 - p_syn - p_shot)))


def training_stream(data: TrainData, cfg: TrainConfig, steps: int) -> MixedStream:
    """The stream of ``steps`` training batches per epoch, mixed and augmented as ``cfg`` says."""
    return MixedStream(data.normals, data.shots, data.units, data.pre, cfg.batch_size, steps,
                       cfg.synthetic_fraction, cfg.shot_fraction, cfg.seed, cfg.augment, cfg.shuffle_buffer)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    choice = cfg.precision
    if choice == "auto":
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "fp16" and device.type != "cuda":
        msg = "train.precision fp16 needs a CUDA device; use bf16 or fp32 on cpu"
        raise ValueError(msg)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


class FeatureCache:
    """Frozen-backbone outputs per sample key (the key includes the flips), stored in half precision
    up to a memory cap. Exact for the trainable layers up to that rounding; nothing is cached for a
    backbone without a frozen part."""

    def __init__(self, max_gb: float, device: torch.device):
        self.max_bytes, self.device = int(max_gb * 2**30), device
        self.store: dict[str, tuple[torch.Tensor, ...]] = {}
        self.bytes = self.hits = self.misses = 0

    def frozen(self, model: Discriminator, images: torch.Tensor, keys: list[str]) -> tuple[torch.Tensor, ...]:
        todo = list({k: i for i, k in enumerate(keys) if k not in self.store}.values())  # a key repeated in a batch once
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh = {}
        if todo:
            out = model.encode_frozen(images[todo])
            for j, i in enumerate(todo):
                parts = tuple(t[j].to(self.device, torch.float16) for t in out)
                fresh[keys[i]] = parts
                size = sum(t.numel() * t.element_size() for t in parts)
                if self.bytes + size <= self.max_bytes:
                    self.store[keys[i]] = parts
                    self.bytes += size
        rows = [self.store[k] if k in self.store else fresh[k] for k in keys]
        return tuple(torch.stack([r[n] for r in rows]).to(images.device) for n in range(len(rows[0])))


@torch.no_grad()
def validate(model: Discriminator, val: Batch, cfg: TrainConfig, device: torch.device | None = None,
             amp: torch.dtype | None = None, cache: FeatureCache | None = None, batch_size: int = 32) -> dict[str, float]:
    device = device or torch.device("cpu")
    model.eval()
    losses, scores = [], []
    for i in range(0, len(val.classes), batch_size):
        images, masks = val.images[i:i + batch_size].to(device), val.masks[i:i + batch_size].to(device).long()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            if cache is not None:
                keys = [f"val:{j}" for j in range(i, i + len(images))]
                logits, emb = model.forward_frozen(cache.frozen(model, images, keys), images.shape[-2:])
            else:
                logits, emb = model(images)
        logits = logits.float()
        losses.append(discriminator_loss(logits, masks, cfg.focal_gamma, cfg.type_loss_weight)["loss"].item() * len(images))
        scores.append(predict_from_maps(logits, emb.float()).score.cpu())
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
    """What a checkpoint must match to be resumed: config, vocabulary, the real tensors and the shards."""
    h = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), vocab.defect_types, data.synthetic_fingerprint], sort_keys=True).encode())
    for part in (data.normals, data.shots, data.val):
        h.update(str(tuple(part.images.shape)).encode())
        h.update(str(int(part.images.sum())).encode() + str(int(part.masks.sum())).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, model, ema, best_state, opt, sched, scaler, progress: dict) -> None:
    """Everything needed to continue after ``progress['epoch']``; replaced atomically.

    The sample stream needs no state: its random choices are seeded by (seed, epoch, worker)."""
    with atomic_dir(path) as tmp:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
        if best_state is not None:
            tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "state.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2))


def _load_checkpoint(path: Path, fingerprint: str, model, ema, opt, sched, scaler) -> tuple[dict | None, dict]:
    """(best_state, progress) from a matching checkpoint, else (None, {})."""
    progress_file = path / "progress.json"
    if not progress_file.is_file():
        return None, {}
    try:  # everything read before anything is applied: a damaged checkpoint leaves the fresh model untouched
        progress = json.loads(progress_file.read_text())
        if progress.get("fingerprint") != fingerprint:
            log.info("train: ignoring checkpoint %s (made with other data or params)", path)
            return None, {}
        tensors = load_file(str(path / "state.safetensors"))
        states = torch.load(path / "optimizer.pt", weights_only=True)  # plain tensors and numbers only
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a disk fault or a power cut mid-write
        log.warning("train: checkpoint %s cannot be read (%s); training starts from the first epoch", path, exc)
        return None, {}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    torch.set_rng_state(tensors["rng.torch"])
    opt.load_state_dict(states["optimizer"])
    sched.load_state_dict(states["scheduler"])
    scaler.load_state_dict(states["scaler"])
    log.info("train: resuming from %s after epoch %d", path, progress["epoch"])
    return best, progress


def build_model(data: TrainData, vocab: Vocabulary, cfg: TrainConfig) -> Discriminator:
    """A fresh discriminator for the config: open_clip type embeddings start at their text embeddings."""
    mean, std = channel_stats(data.normals.images)
    options, size, embed_dim, type_init, loaded = {}, cfg.image_size, cfg.embed_dim, None, None
    if cfg.backbone == "torchvision":
        tv = cfg.torchvision
        options = {**dataclasses.asdict(tv), "layers": tv.layers or default_layers(tv.arch)}  # the layers used, recorded
        mean, std = list(tv.mean), list(tv.std)
    if cfg.backbone == "timm":  # the weights' identity is recorded with the model
        _, identity = resolve_timm_weights(cfg.timm.model, cfg.timm.weights)
        options = {**dataclasses.asdict(cfg.timm), "levels": sorted(cfg.timm.levels), "weights_sha256": identity["sha256"]}
        mean, std = list(cfg.timm.mean), list(cfg.timm.std)
    if cfg.backbone == "open_clip":
        options = {**dataclasses.asdict(cfg.clip)}
        loaded = create_clip(cfg.clip.model_name, cfg.clip.pretrained, cfg.clip.offline, cfg.clip.config_dir)  # read once
        clip, pre = loaded
        mean, std, size, embed_dim = list(pre.mean), list(pre.std), pre.size, clip.visual.output_dim
        # defect types start at their text embeddings, as in UniADC
        type_init = text_type_embeddings(clip, cfg.clip.model_name, cfg.clip.object_name, vocab.defect_types)
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
        decode=vocab.decode,
        intensity=vocab.intensity,
        normal_class=cfg.normal_class,
    )
    model = Discriminator(config, loaded_clip=loaded)
    if type_init is not None:
        model.type_embeddings.data.copy_(type_init if cfg.normal_class == "explicit" else type_init[1:])
    return model


def train_step(model: Discriminator, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, cfg: TrainConfig,
               device: torch.device, amp: torch.dtype | None = None, cache: FeatureCache | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step on a loader batch (autocast when ``amp``; frozen features from ``cache`` when given)."""
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True).long()
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        if cache is not None:
            logits, _ = model.forward_frozen(cache.frozen(model, images, batch["key"]), images.shape[-2:])
        else:
            logits, _ = model(images)
    parts = discriminator_loss(logits.float(), masks, cfg.focal_gamma, cfg.type_loss_weight)
    opt.zero_grad(set_to_none=True)
    scaler.scale(parts["loss"]).backward()
    scaler.step(opt)
    scaler.update()
    return parts


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
    device = resolve_device(cfg.device, "train.device")
    amp = resolve_precision(cfg, device)
    model = build_model(data, vocab, cfg).to(device)
    # strong augmentation makes every view new, so there would be nothing to reuse
    use_cache = model.has_frozen_part and cfg.cache_features != "off" and cfg.feature_cache_gb > 0 and cfg.augment != "strong"
    if model.has_frozen_part and cfg.cache_features == "on" and not use_cache:
        log.warning("train: feature cache off (train.augment is strong: no view repeats, or feature_cache_gb is 0)")
    cache = FeatureCache(cfg.feature_cache_gb, device) if use_cache else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, samples_per_epoch(data, cfg) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = copy.deepcopy(model).requires_grad_(False)  # moving average of the weights: steadier than the last step
    fingerprint = _fingerprint(data, cfg, vocab)
    best_state, state = _load_checkpoint(Path(checkpoint), fingerprint, model, ema, opt, sched, scaler) if checkpoint else (None, {})
    start, best, history = state.get("epoch", 0), state.get("best", float("inf")), state.get("history", [])
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    stream = training_stream(data, cfg, steps_per_epoch)
    loader = make_loader(stream, cfg.loader_workers, pin_memory=device.type == "cuda")
    log.info("train: %s, %s, %d steps of %d per epoch, %d loader worker(s)%s", device, amp or "fp32", steps_per_epoch,
             cfg.batch_size, cfg.loader_workers, ", frozen features cached" if cache else "")
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start * steps_per_epoch, desc="train", unit="step", disable=not progress)
    for epoch in range(start, last):
        model.train()
        stream.set_epoch(epoch)
        t0, sums = time.perf_counter(), {}
        for batch in loader:
            parts = train_step(model, opt, scaler, batch, cfg, device, amp, cache)
            sched.step()
            _update_ema(ema, model, cfg.ema_decay)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            bar.update()
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
        record = {"epoch": epoch + 1, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()}}
        record.update(validate(ema, data.val, cfg, device, amp, cache) if data.val.classes else {})
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        score = record.get("val_loss", record["train_loss"])
        if score < best:
            best, best_state = score, copy.deepcopy(ema.state_dict())
            record["best"] = True
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        if checkpoint:
            _save_checkpoint(Path(checkpoint), model, ema, best_state, opt, sched, scaler,
                             {"epoch": epoch + 1, "best": best, "history": history, "fingerprint": fingerprint})
    bar.close()
    if cache is not None:
        log.info("train: feature cache %d hits, %d misses, %.1f MiB", cache.hits, cache.misses, cache.bytes / 2**20)
    if best_state is not None:
        ema.load_state_dict(best_state)
    return ema.cpu().eval(), history


MACHINE_DEPENDENT = ("seconds",)  # history keys kept out of the model folder: a re-run on the same inputs gives the same bytes


def checkpoint_path(out_dir: str | Path) -> Path:
    """Where training keeps its per-epoch checkpoint: beside the model directory, hidden."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.checkpoint")


def train(manifest: pl.DataFrame, vocab: Vocabulary, synthetic_dir: str | Path | None, cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Train (resuming an interrupted run of the same data and params) and save the model directory."""
    shots = manifest.filter(pl.col("role") == Role.NORMAL_SHOT)
    data = load_train_data(manifest, vocab, synthetic_dir, cfg.image_size)
    log.info("train: %d normals, %d anomaly shots, %d synthetic (streamed from %d row groups), %d validation samples",
             len(data.normals.classes), len(data.shots.classes), sum(u.rows for u in data.units), len(data.units), len(data.val.classes))
    ckpt = checkpoint_path(out_dir)
    model, history = train_discriminator(data, vocab, cfg, checkpoint=ckpt)
    item_of = dict(zip(shots["image_id"].to_list(), item_names(shots), strict=True))
    items = [item_of[i] if i in item_of else item_of[i.rsplit(TILE_MARK, 1)[0]] for i in data.normals.ids]  # tiles: id + mark + corner
    attach_memory(model, data.normals.images, data.holdout.images, cfg.memory, cfg.seed, data.normals.classes, items)
    attach_shot_memory(model, data.shots, data.val)
    kept = [{k: v for k, v in rec.items() if k not in MACHINE_DEPENDENT} for rec in history]
    path = save_model(model, out_dir, extra={"history.json": kept})
    write_json(timings_path(out_dir), [{"epoch": rec["epoch"], "seconds": rec["seconds"]} for rec in history if "seconds" in rec])
    shutil.rmtree(ckpt, ignore_errors=True)
    return path
