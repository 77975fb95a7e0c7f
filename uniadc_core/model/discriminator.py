"""The multi-task discriminator: a dense feature extractor and a head that aligns per-pixel
features with one embedding per defect type (index 0 = normal), as in UniADC.

    image -> backbone -> features (B, D, h, w) -> cosine vs. type embeddings / temperature
          -> logits (B, K+1, H, W) -> anomaly map (log-odds of not normal), type probabilities, image score

With a normal-feature memory (``memory.py``), the anomaly map fuses the log-odds with the
patches' distance to the nearest normal patch (``terms.py``: each map standardised on held-out normal
pixels and weighted; the image score pooled from the fused map); the defect type still comes from
the type head. Saved as ``model.safetensors`` + ``config.json`` (+ ``memory.safetensors``) and rebuilt from them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import uniadc_core
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decoding import DecodeOptions
from uniadc_core.device import resolve_device
from uniadc_core.io import read_weights_dir, save_weights_dir
from uniadc_core.model.backbones import create_backbone
from uniadc_core.model.memory import NormalMemory, distance_map
from uniadc_core.model.shot_memory import ShotMemory
from uniadc_core.model.terms import DISCRIMINATOR_ONLY, Term, as_terms, fuse, image_score

FORMAT_VERSION = 3  # 3: score terms as typed records, the image score pooled from the fused map
NORMAL_CLASSES = ("explicit", "implicit")
MEMORY_FILE = "memory.safetensors"  # the normal-feature memory bank, beside model.safetensors
SHOTS_FILE = "shots.safetensors"  # the real shots' defect patches by type (``shot_memory.py``), beside it


@dataclass
class ModelConfig:
    defect_types: list[str]  # vocabulary order; defect index i+1, 0 = normal
    backbone: str = "scratch"
    backbone_options: dict = field(default_factory=dict)  # open_clip: model_name, pretrained, layers, offline, config_dir
    image_size: int = 128
    width: int = 24
    embed_dim: int = 32
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel, on 0..1 pixels
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    classes: dict[str, list[str]] = field(default_factory=dict)  # object class -> its defect types
    resize: str = "stretch"  # how inputs are made: stretch | pad | tile (native-resolution tiles; from ingest.resize)
    decode: dict = field(default_factory=dict)  # how files are decoded: bit_depth, max_pixels (from ingest); {} = defaults
    intensity: str = "none"  # per-image intensity rule: none | per_image (from ingest.intensity)
    normal_class: str = "explicit"  # explicit: normal is type embedding 0 | implicit: a learned constant normal logit
    # the normal-feature memory's scorer: {} = none; else k (neighbours averaged), smooth (Gaussian sigma, px) and
    # items (the physical parts its rows were drawn from, for fit_cada.leave_item_out)
    memory: dict = field(default_factory=dict)
    terms: tuple[Term, ...] = DISCRIMINATOR_ONLY  # the score terms and their standardisers (``terms.py``)
    # the shot memory's settings: {} = none (types from the type head); else its temperature (types from the real shots)
    shots: dict = field(default_factory=dict)
    package_version: str = uniadc_core.__version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.terms = as_terms(self.terms)  # config.json holds them as records

    @property
    def num_types(self) -> int:
        return len(self.defect_types)

    @property
    def preprocess(self) -> Preprocess:
        """How a file becomes this model's input: size, resize policy, normalisation."""
        return Preprocess(self.image_size, self.resize, tuple(self.mean), tuple(self.std), DecodeOptions.from_dict(self.decode),
                          self.intensity)


class Prediction(NamedTuple):
    score: torch.Tensor  # (B,) raw image anomaly score
    anomaly_map: torch.Tensor  # (B, H, W) the fused map (``terms.fuse``); alone, the log-odds log(a / (1 - a)), a = 1 - p(normal)
    type_probs: torch.Tensor  # (B, K) image-level defect-type distribution
    pixel_types: torch.Tensor  # (B, H, W) most likely defect index per pixel, 1..K
    embedding: torch.Tensor  # (B, E) global image embedding (for CADA)
    pixel_type_prob: torch.Tensor  # (B, H, W) uint8: that type's probability, in 1/255 steps


# ---------------------------------------------------------------------------- discriminator


class Discriminator(nn.Module):
    memory_format = torch.channels_last  # faster training steps on this CPU (benchmarks/throughput.py)

    def __init__(self, config: ModelConfig, load_backbone_weights: bool = True, loaded_clip=None):
        super().__init__()
        self.config = config
        options = dict(config.backbone_options)
        if not load_backbone_weights:  # weights come from a saved state dict: build with random init
            options.update({k: "" for k in ("pretrained", "weights") if k in options})
        self.backbone = create_backbone(config.backbone, config.width, config.embed_dim, options, loaded_clip)
        if config.normal_class not in NORMAL_CLASSES:
            msg = f"normal_class must be one of {', '.join(NORMAL_CLASSES)}, got {config.normal_class!r}"
            raise ValueError(msg)
        implicit = config.normal_class == "implicit"  # no normal embedding: a pixel is normal unless a defect type beats this logit
        rows = config.num_types + (0 if implicit else 1)
        self.type_embeddings = nn.Parameter(torch.randn(rows, config.embed_dim) * 0.5)  # (K+1, D) explicit, (K, D) implicit
        if implicit:
            self.normal_logit = nn.Parameter(torch.tensor(0.0))
        self.memory: NormalMemory | None = None  # set by training (train.memory), saved beside the weights
        self.shot_memory: ShotMemory | None = None  # set by training when every type has a real shot (with a memory)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.07)))
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1))
        self.to(memory_format=self.memory_format)

    @property
    def preprocess(self) -> Preprocess:
        return self.config.preprocess

    @property
    def has_frozen_part(self) -> bool:
        """True when the backbone starts with frozen layers whose outputs can be cached per sample."""
        return hasattr(self.backbone, "encode_frozen")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float, standardised."""
        return (images.float() / 255.0 - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 or float images (B, 3, H, W) -> (logits (B, K+1, H, W), embedding (B, E))."""
        x = self.normalise(images) if images.dtype == torch.uint8 else images
        feats, embedding = self.backbone(x.contiguous(memory_format=self.memory_format))
        return self.head(feats, embedding, images.shape[-2:])

    @torch.no_grad()
    def encode_frozen(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frozen backbone's outputs for uint8 images (only when ``has_frozen_part``)."""
        return self.backbone.encode_frozen(self.normalise(images))

    def forward_frozen(self, frozen: tuple[torch.Tensor, ...], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` from cached ``encode_frozen`` outputs: the trainable layers only."""
        feats, embedding = self.backbone.decode_frozen(*frozen)
        return self.head(feats, embedding, size)

    def head(self, feats: torch.Tensor, embedding: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarity of per-pixel features and type embeddings, over a learned temperature."""
        feats = F.normalize(feats, dim=1)
        types = F.normalize(self.type_embeddings, dim=1)
        logits = torch.einsum("bdhw,kd->bkhw", feats, types) / self.log_temperature.exp().clamp(min=1e-3)
        if self.config.normal_class == "implicit":
            logits = torch.cat([self.normal_logit.expand_as(logits[:, :1]), logits], 1)
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits, embedding

    @torch.no_grad()
    def component_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, embedding, each scorer's map (B, H, W) by term name) of uint8 images: ``discriminator`` (the
        anomaly log-odds) and, with a memory, ``memory`` (the distance to the nearest normal patches)."""
        return self._component_maps(images)[:3]

    def _component_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """``component_maps`` and the memory patches (None without a memory)."""
        size = images.shape[-2:]
        if self.memory is None:
            logits, embedding = self(images)
            return logits, embedding, {"discriminator": anomaly_log_odds(logits)}, None
        feats, embedding, patches = self._forward_with_patches(images)
        logits, embedding = self.head(feats, embedding, size)
        distance = distance_map(self.memory, patches, size, self.config.memory.get("k", 1), self.config.memory.get("smooth", 0.0))
        return logits, embedding, {"discriminator": anomaly_log_odds(logits), "memory": distance}, patches

    def _forward_with_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backbone's (features, embedding, memory patches (B, C, h, w)) of uint8 images."""
        return self.backbone.forward_with_patches(self.normalise(images).contiguous(memory_format=self.memory_format))

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """The patches the normal memory keeps, (B, C, h, w), for uint8 images."""
        return self._forward_with_patches(images)[2]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        logits, embedding, maps, patches = self._component_maps(images)
        shots = None
        if self.shot_memory is not None and patches is not None:
            shots = self.shot_memory.log_probs(patches, self.config.shots.get("temperature"))
        return predict_from_maps(logits, embedding, maps, self.config.terms, shots)


def anomaly_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(B, H, W) log(a / (1 - a)) with a = 1 - p(normal)."""
    return logits[:, 1:].logsumexp(1) - logits[:, 0]


def predict_from_maps(logits: torch.Tensor, embedding: torch.Tensor, maps: dict[str, torch.Tensor] | None = None,
                      terms: tuple[Term, ...] = DISCRIMINATOR_ONLY, shots: torch.Tensor | None = None) -> Prediction:
    """The prediction of the scorers' ``maps`` (None: the discriminator's log-odds of ``logits`` alone) fused by
    ``terms``. Scores stay in log-odds (or z-units of them): unlike probabilities they do not saturate on very
    clean classes, so each class's normal scores keep a spread that CADA can measure and align.

    Each pixel's defect-type distribution is the type head's, or with ``shots`` ((B, K, h, w) type log-probabilities
    from the shot memory) the shots', upsampled: on MTD the head, trained on synthetic defects, added nothing to the
    real shots' evidence (benchmarks/results/type_probe.md). The image's distribution is the one at
    its most anomalous pixel: the peak of its highest-scoring region, whose type the region takes too
    (``decision.decide``), so an image and its strongest region are named alike."""
    maps = maps or {"discriminator": anomaly_log_odds(logits)}
    amap = fuse(maps, terms)  # (B, H, W)
    if shots is None:
        type_pix = logits[:, 1:].softmax(1)  # (B, K, H, W) type distribution given anomalous
    else:
        type_pix = F.interpolate(shots, size=tuple(amap.shape[-2:]), mode="bilinear", align_corners=False).softmax(1)
    peak = amap.flatten(1).max(1).indices  # (B,)
    type_probs = type_pix.flatten(2)[torch.arange(len(peak), device=peak.device), :, peak]  # (B, K)
    best, pixel_types = type_pix.max(1)  # max().indices: argmax over dim 1 is 20x slower here
    pixel_prob = (best * 255).round().to(torch.uint8)
    return Prediction(image_score(amap), amap, type_probs, pixel_types + 1, embedding, pixel_prob)


# ---------------------------------------------------------------------------- losses


def discriminator_loss(logits: torch.Tensor, target: torch.Tensor, focal_gamma: float = 2.0, type_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Focal + dice on the anomaly map, cross-entropy over defect types on anomalous pixels.

    logits (B, K+1, H, W); target (B, H, W) long, 0 = normal, 1..K = defect index.
    """
    log_all = logits.logsumexp(1)  # (B, H, W)
    log_p_anom = logits[:, 1:].logsumexp(1) - log_all  # log a
    log_p_norm = logits[:, 0] - log_all  # log (1 - a)
    y = (target > 0).float()
    a = log_p_anom.exp()
    pt = torch.where(y > 0, a, 1 - a)
    bce = -(y * log_p_anom + (1 - y) * log_p_norm)
    focal = ((1 - pt).clamp(min=0) ** focal_gamma * bce).mean()
    inter = (a * y).sum((1, 2))
    dice = (1 - (2 * inter + 1) / (a.sum((1, 2)) + y.sum((1, 2)) + 1)).mean()  # on a normal image: 1 - 1/(false alarm + 1)
    anomalous = target > 0
    if anomalous.any():
        type_logits = logits[:, 1:].permute(0, 2, 3, 1)[anomalous]  # (N, K)
        ce = F.cross_entropy(type_logits, target[anomalous] - 1)
    else:
        ce = logits.sum() * 0.0
    total = focal * 10.0 + dice + type_weight * ce
    return {"loss": total, "focal": focal, "dice": dice, "type_ce": ce}


# ---------------------------------------------------------------------------- save / load


def save_model(model: Discriminator, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` atomically (the directory appears whole or not at all)."""
    memory = model.memory
    tensors = None if memory is None else {MEMORY_FILE: {"bank": memory.bank, **({"sources": memory.sources} if memory.sources is not None else {})}}
    if model.shot_memory is not None:
        tensors[SHOTS_FILE] = model.shot_memory.tensors()
    return save_weights_dir(directory, model.state_dict(), dataclasses.asdict(model.config), extra, tensors)


def load_model(directory: str | Path, device: str = "auto") -> Discriminator:
    """The saved discriminator, on ``device`` (auto: cuda when available)."""
    device = resolve_device(device)
    raw, state = read_weights_dir(directory, "train")
    cfg_path, weights = Path(directory) / "config.json", Path(directory) / "model.safetensors"
    if raw.get("format_version") != FORMAT_VERSION:
        msg = f"{cfg_path}: model format {raw.get('format_version')} but this uniadc reads format {FORMAT_VERSION}; retrain the model"
        raise ValueError(msg)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        msg = f"{cfg_path}: unknown config keys {unknown}; the model was saved by another uniadc version"
        raise ValueError(msg)
    model = Discriminator(ModelConfig(**raw), load_backbone_weights=False)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        msg = (f"{weights}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]}, "
               f"other shape {sorted(wrong)[:5]}); save the model and its config together")
        raise ValueError(msg)
    model.load_state_dict(state)
    if any(t.name == "memory" for t in model.config.terms):
        bank = Path(directory) / MEMORY_FILE
        if not bank.is_file():
            msg = f"{bank}: not found, but {cfg_path} says the model has a normal-feature memory; save the model folder whole"
            raise FileNotFoundError(msg)
        from safetensors.torch import load_file

        saved = load_file(str(bank))
        model.memory = NormalMemory(saved["bank"], saved.get("sources"))
    if model.config.shots:
        shots = Path(directory) / SHOTS_FILE
        if not shots.is_file():
            msg = f"{shots}: not found, but {cfg_path} says the model has a shot memory; save the model folder whole"
            raise FileNotFoundError(msg)
        from safetensors.torch import load_file

        saved = load_file(str(shots))
        model.shot_memory = ShotMemory(saved["bank"], saved["labels"], model.config.num_types, model.config.shots["temperature"])
    return model.to(device, memory_format=model.memory_format).eval()
