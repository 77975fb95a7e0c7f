"""Backbones: dense image features and a global embedding, built by one factory with their preprocessing.

- ``scratch``: a small U-Net trained end to end; needs no weights (the CPU default).
- ``open_clip``: a frozen open_clip ViT; patch tokens of chosen layers, each projected into the
  joint image-text space and summed into a dense map; defect-type embeddings come from the text
  tower (prompt templates, averaged, L2-normalised). Offline by default: a pretrained tag is read
  from the local Hugging Face cache only, and a missing file is a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

TEMPLATES = ("a photo of a {} with {}.", "a close-up photo of {} on a {}.", "an industrial photo of a {} showing {}.")
NORMAL_TEMPLATES = ("a photo of a flawless {}.", "a close-up photo of a normal {} without defect.")


class Preprocess(NamedTuple):
    """What a backbone expects: square input size and per-channel normalisation (0..1 pixels)."""

    image_size: int
    mean: list[float] | None  # None: computed from the training normals
    std: list[float] | None


# ---------------------------------------------------------------------------- scratch


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout), _conv(cout, cout))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ScratchBackbone(nn.Module):
    """A small U-Net trained end to end: dense features at 1/2 resolution and a global embedding.

    The first convolution has stride 2: full-resolution layers cost most on a CPU and add little.
    """

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w, stride=2), _conv(w, w))  # (B, w, H/2, W/2)
        self.down1 = _block(w, 2 * w)  # (B, 2w, H/4, W/4)
        self.down2 = _block(2 * w, 4 * w)  # (B, 4w, H/8, W/8)
        self.down3 = _block(4 * w, 8 * w)  # (B, 8w, H/16, W/16)
        self.up2 = _conv(8 * w + 4 * w, 4 * w)  # (B, 4w, H/8, W/8)
        self.up1 = _conv(4 * w + 2 * w, 2 * w)  # (B, 2w, H/4, W/4)
        self.up0 = _conv(2 * w + w, 2 * w)  # (B, 2w, H/2, W/2)
        self.proj = nn.Conv2d(2 * w, embed_dim, 1)
        self.embed_channels = 8 * w + 4 * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem(x)
        s1 = self.down1(F.max_pool2d(s0, 2))
        s2 = self.down2(F.max_pool2d(s1, 2))
        s3 = self.down3(F.max_pool2d(s2, 2))
        u2 = self.up2(torch.cat([_up(s3), s2], 1))
        u1 = self.up1(torch.cat([_up(u2), s1], 1))
        u0 = self.up0(torch.cat([_up(u1), s0], 1))
        feats = self.proj(u0)  # (B, D, H/2, W/2)
        embedding = torch.cat([s3.mean((2, 3)), s2.std((2, 3))], 1)  # (B, 12w): content and texture statistics
        return feats, embedding


# ---------------------------------------------------------------------------- open_clip


def resolve_pretrained(model_name: str, pretrained: str, offline: bool = True) -> str | None:
    """A tag, a local ``.pt``/``.safetensors`` file, ``local-dir:PATH`` or '' (random init) -> what open_clip loads.

    Offline, a tag is looked up in the local Hugging Face cache only.
    """
    import open_clip

    if not pretrained:
        return None
    if pretrained.startswith("local-dir:") or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        path = Path(pretrained.removeprefix("local-dir:"))
        if not path.exists():
            msg = f"open_clip weights {path} not found; put the file there or fix train.clip.pretrained"
            raise FileNotFoundError(msg)
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        msg = f"unknown pretrained tag '{pretrained}' for open_clip model '{model_name}'; valid: {', '.join(tags) or 'none'}"
        raise ValueError(msg)
    if not offline:
        return pretrained
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    repo = cfg.get("hf_hub", "").strip("/")
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            return hf_hub_download(repo, filename, local_files_only=True) if repo else None
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
            continue
    msg = (f"open_clip weights '{model_name}/{pretrained}' are not in the local cache and train.clip.offline is true. "
           f"Provide them: download {repo or cfg.get('url')} on a connected machine and set train.clip.pretrained to the "
           f"local .safetensors/.pt path (or local-dir:DIR), or set train.clip.offline: false where the hub is reachable")
    raise FileNotFoundError(msg)


def create_clip(model_name: str, pretrained: str, offline: bool = True, config_dir: str = ""):
    """(open_clip model, Preprocess) with weights resolved as above."""
    import open_clip

    if config_dir:
        open_clip.add_model_config(config_dir)
    if model_name not in open_clip.list_models():
        msg = f"unknown open_clip model '{model_name}'; see open_clip.list_models(), or add a JSON config via train.clip.config_dir"
        raise ValueError(msg)
    weights = resolve_pretrained(model_name, pretrained, offline)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    norm = preprocess.transforms[-1]
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.eval(), Preprocess(int(size), list(norm.mean), list(norm.std))


class OpenClipBackbone(nn.Module):
    """Frozen open_clip ViT: patch tokens of ``layers`` projected into the joint space and summed."""

    def __init__(self, model_name: str, pretrained: str, layers: list[int], offline: bool = True, config_dir: str = "",
                 loaded=None):
        """``loaded``: the (model, Preprocess) ``create_clip`` already returned, so the weights are read once."""
        super().__init__()
        clip, self.preprocess = loaded or create_clip(model_name, pretrained, offline, config_dir)
        self.visual = clip.visual.requires_grad_(False)
        width, joint = self.visual.transformer.width, self.visual.output_dim
        self.layers = list(layers)
        self.proj = nn.ModuleList(nn.Linear(width, joint, bias=False) for _ in self.layers)
        if getattr(self.visual, "proj", None) is not None:  # start from CLIP's own token projection
            for p in self.proj:
                p.weight.data.copy_(self.visual.proj.data.t())
        self.embed_channels = joint
        self.embed_dim = joint

    def train(self, mode: bool = True):
        super().train(mode)
        self.visual.eval()  # frozen: no dropout, no statistics updates
        return self

    @torch.no_grad()
    def encode_frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen ViT's part: (patch tokens of ``layers`` (B, L, width, h, w), pooled image features (B, joint)).

        Nothing after this is frozen, so training may cache these per sample."""
        out = self.visual.forward_intermediates(x.contiguous(), indices=self.layers, intermediates_only=False)
        return torch.stack(out["image_intermediates"], 1), out["image_features"]

    def decode_frozen(self, tokens: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable part: per-layer projections summed into a dense map (B, joint, h, w)."""
        tokens = tokens.to(self.proj[0].weight.dtype)
        feats = sum(p(tokens[:, i].permute(0, 2, 3, 1)) for i, p in enumerate(self.proj)).permute(0, 3, 1, 2)
        return feats, pooled.float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_frozen(*self.encode_frozen(x))


@torch.no_grad()
def text_type_embeddings(clip, model_name: str, object_name: str, defect_types: list[str]) -> torch.Tensor:
    """(K+1, joint) L2-normalised prompt-ensemble embeddings of an open_clip model: row 0 normal, then each type."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(model_name)
    rows = []
    for prompts in ([t.format(object_name) for t in NORMAL_TEMPLATES],
                    *[[t.format(object_name, d.replace("_", " ")) for t in TEMPLATES] for d in defect_types]):
        emb = F.normalize(clip.encode_text(tokenizer(prompts)), dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows)


# ---------------------------------------------------------------------------- registry


def create_backbone(name: str, width: int, embed_dim: int, options: dict, loaded_clip=None) -> tuple[nn.Module, Preprocess | None]:
    """The backbone and its preprocessing (None: normalise with training statistics, any size).

    ``loaded_clip``: an open_clip (model, Preprocess) from ``create_clip`` to use instead of loading it again."""
    if name == "scratch":
        return ScratchBackbone(width, embed_dim), None
    if name == "open_clip":
        backbone = OpenClipBackbone(options["model_name"], options.get("pretrained", ""), options["layers"],
                                    options.get("offline", True), options.get("config_dir", ""), loaded_clip)
        return backbone, backbone.preprocess
    msg = f"unknown backbone '{name}'; valid: {', '.join(BACKBONES)}"
    raise ValueError(msg)


BACKBONES = ("scratch", "open_clip")
