"""The ``torchvision`` backbone: a frozen ImageNet CNN's intermediate features and a trainable neck.

    x (B, 3, S, S) -> frozen CNN -> layers L1..Ln (strides 4..32) -> 3x3 neighbourhood mean each
      -> resized to one grid (stride ``grid``) and concatenated: patch features (B, C, S/grid, S/grid)
      -> trainable neck (1x1 convolutions) -> dense features (B, D, S/grid, S/grid) for the type head

The patch features are what the normal-feature memory keeps (``uniadc_core.model.memory``); they
come from the frozen part only, so training may cache them per sample. Any torchvision
classification architecture works by name; its weights come from a local file
(``uniadc_core.weights.load_torchvision``), never from the internet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the layers tapped when train.torchvision.layers is empty: mid-level features, as PatchCore taps layer2 + layer3.
# MobileNetV2: blocks 6/10/13 (strides 8/16/16) score MTD better than the default 3/6/10 (memory only, 3 seeds: image
# AUROC 95.7 vs 94.8 with all normals, 77.4 vs 70.9 with 2 shots; pixel AUROC +2, AUPRO -2) but cost 72.5 ms/image
# against 36.1 at the default memory size (benchmarks/results/mtd_quality_seeds.md, memory_speed*.md): over the 50 ms
# budget, so they are a train.torchvision.layers choice, not the default
DEFAULT_LAYERS = {
    "resnet": ["layer2", "layer3"],
    "wide_resnet": ["layer2", "layer3"],
    "resnext": ["layer2", "layer3"],
    "mobilenet_v2": ["features.3", "features.6", "features.10"],
    "mobilenet_v3": ["features.3", "features.6", "features.9"],
    "efficientnet": ["features.2", "features.3", "features.4"],
    "convnext": ["features.3", "features.5"],
    "regnet": ["trunk_output.block2", "trunk_output.block3"],
    "densenet": ["features.denseblock1", "features.denseblock2"],
}


def fold_batchnorm(module: nn.Module, keep: list[str] = ()) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution in a ``Sequential`` into that convolution
    (eval statistics), in place: the same outputs of a frozen network, one pass over memory fewer per layer.
    Patterns outside a ``Sequential`` (ResNet's conv1/bn1 attributes) are left as they are, and so are
    convolutions named in ``keep`` (tapped layers: their own output is what is read)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for prefix, child in module.named_modules():
        if not isinstance(child, nn.Sequential):
            continue
        names = list(child._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = child._modules[a], child._modules[b]
            if f"{prefix}.{a}".lstrip(".") in keep:
                continue
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                child._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                child._modules[b] = nn.Identity()
    return module


def default_layers(arch: str) -> list[str]:
    for prefix in sorted(DEFAULT_LAYERS, key=len, reverse=True):
        if arch.startswith(prefix):
            return list(DEFAULT_LAYERS[prefix])
    msg = (f"no default layers for torchvision architecture '{arch}'; set train.torchvision.layers to the module names "
           f"to tap (see dict(model.named_modules()))")
    raise ValueError(msg)


class TorchvisionBackbone(nn.Module):
    """Frozen CNN features at one grid, aggregated over 3x3 neighbourhoods, and a trainable 1x1 neck."""

    def __init__(self, cnn: nn.Module, layers: list[str], embed_dim: int, grid: int = 8, hidden: int = 256):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        modules = dict(cnn.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            near = [n for n in modules if n and n.count(".") <= 1][:30]
            msg = f"train.torchvision.layers: {unknown} are not modules of this network; some that are: {', '.join(near)}"
            raise ValueError(msg)
        self.layers, self.grid = list(layers), grid
        cnn = fold_batchnorm(cnn.eval(), keep=layers)
        self.cnn = create_feature_extractor(cnn, return_nodes={name: name for name in layers}).requires_grad_(False).eval()
        with torch.no_grad():
            probe = self.cnn(torch.zeros(1, 3, 64, 64))
        self.patch_channels = sum(probe[name].shape[1] for name in layers)
        self.neck = nn.Sequential(nn.Conv2d(self.patch_channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, embed_dim, 1))
        self.embed_channels = 2 * self.patch_channels
        self.embed_dim = embed_dim

    def train(self, mode: bool = True):
        super().train(mode)
        self.cnn.eval()  # frozen: BatchNorm keeps its statistics
        return self

    @torch.no_grad()
    def encode_frozen(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """Patch features (B, C, S/grid, S/grid) of the frozen CNN: each layer averaged over 3x3
        neighbourhoods, then resized to the grid (area-averaged when finer, bilinear when coarser)."""
        out = self.cnn(x)
        size = (x.shape[-2] // self.grid, x.shape[-1] // self.grid)
        maps = []
        for name in self.layers:
            f = F.avg_pool2d(out[name], 3, stride=1, padding=1, count_include_pad=False)
            if f.shape[-2] > size[0]:
                f = F.adaptive_avg_pool2d(f, size)
            elif f.shape[-2] < size[0]:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            maps.append(f)
        return (torch.cat(maps, 1),)

    def decode_frozen(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable part: dense features (B, D, h, w) and a global embedding (B, 2C) for CADA."""
        patches = patches.to(self.neck[0].weight.dtype)
        embedding = torch.cat([patches.mean((2, 3)), patches.std((2, 3))], 1)
        return self.neck(patches), embedding.float()

    def forward_with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense features, embedding, and the frozen patch features the normal memory compares (B, C, h, w)."""
        (patches,) = self.encode_frozen(x)
        feats, embedding = self.decode_frozen(patches)
        return feats, embedding, patches.float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_frozen(*self.encode_frozen(x))
