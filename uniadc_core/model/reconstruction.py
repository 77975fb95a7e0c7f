"""The reconstruction branch (DRAEM, ICCV 2021): an autoencoder that repaints what should be there.

It is trained on normal images and on synthetic anomalies with their clean normal image as the
target (L2 + structural dissimilarity), so it learns to undo defects rather than to copy its
input; the discriminator then sees the image and its reconstruction side by side (6 channels)
and learns where they disagree. DRAEM found this pairing, not the image alone, is what kept its
discriminator from overfitting the simulated anomalies (98.0 against 93.9 image AUROC on MVTec AD).

The encoder and decoder have no skip connections: a skip would let the input through unchanged,
defects included. Unlike DRAEM, the discriminator reads the reconstruction detached, so the
autoencoder learns from its own loss only (in a first test the discriminator's much larger loss,
flowing back through it, kept its reconstruction loss from falling at all). Both live in the
discriminator's state dict, so the model folder holds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Reconstructor(nn.Module):
    """Standardised images (B, 3, H, W) -> their reconstruction, standardised (B, 3, H, W); H, W multiples of 16."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(_conv(3, w, 2), _conv(w, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
                                     _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # (B, 4w, H/16, W/16)
        self.decoder = nn.ModuleList([_conv(4 * w, 4 * w), _conv(4 * w, 2 * w), _conv(2 * w, w), _conv(w, w)])
        self.out = nn.Conv2d(w, 3, 3, 1, 1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's patch features at stride 8 (B, 8w, H/8, W/8): its H/8 and H/16 levels, each averaged over
        3 x 3 neighbourhoods (as PatchCore aggregates), the coarser one upsampled; for the normal memory."""
        levels, h = [], x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i in (4, 6):  # after the third and the fourth stride-2 convolution
                levels.append(F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False))
        fine, coarse = levels
        return torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for layer in self.decoder:
            h = layer(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        return self.out(h)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Per-image structural similarity (B,) of images on 0..1, averaged over channels and pixels."""
    c = a.shape[1]
    kernel = _gaussian_window(window, device=a.device).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def reconstruction_loss(recon: torch.Tensor, clean: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the weighted samples of L2 + (1 - SSIM), both on 0..1 images (B, 3, H, W); ``weight`` (B,)
    is 0 where no clean target is known (a real anomaly shot)."""
    if weight.sum() <= 0:
        return recon.sum() * 0.0
    per = ((recon - clean) ** 2).flatten(1).mean(1) + (1.0 - ssim(recon.clamp(0, 1), clean))
    return (per * weight).sum() / weight.sum()
