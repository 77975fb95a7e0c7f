"""Texture features for the normal memory that need no weights and no training: a fixed filter bank.

    patches = texture_patches(images)           # (B, C, h, w) of uint8 images (B, 3, H, W), one row per STRIDE pixels

Each pixel is described by what a surface inspector looks at, at four scales (sigma 1, 2, 4 and 8 pixels):
the band-pass brightness (a difference of Gaussians: a hole, a bump, a line of that width) and the log
energy of that band around it (the finish: rough, smooth, streaked); and at the two finest scales the
log energy of the horizontal and of the vertical gradient (streaks have a direction). The memory keeps
these descriptors of the normal images and a patch far from all of them has a finish or a mark no normal
has. The descriptors' scales differ (a brightness step against a log energy), so the memory standardises
each channel by its mean and spread over the normal patches (``standardise``, ``config.memory['norm']``).

It is the classic texture-inspection descriptor, not learned, so it carries no ImageNet prior and needs no
training. On the MTD dev half it ranks the pixels of uneven surfaces above what the from-scratch discriminator
does, and ranks whole images worse: off by default, measured in benchmarks/results/budget_quality_notes.md.
"""

from __future__ import annotations

import numpy as np
import torch

from uniadc_core.model.memory import gaussian_blur

SCALES = (1, 2, 4, 8)  # sigma (pixels) of each band
ORIENTED = (1, 2)  # scales whose gradient energy is kept per direction
STRIDE = 4  # one descriptor every STRIDE pixels
CHANNELS = 2 * len(SCALES) + 2 * len(ORIENTED)
_FLOOR = 1e-6  # log of a band's energy: the floor keeps a flat region finite
_GRADIENT_FLOOR = 1e-7  # the same for a gradient's energy (the value the benchmark ran with)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float in [0, 1] of uint8 (B, 3, H, W) images."""
    return images.float().mean(1) / 255.0


@torch.no_grad()
def texture_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, CHANNELS, h, w) raw descriptors of uint8 images (B, 3, H, W), one every STRIDE pixels
    (h = ceil((H - STRIDE // 2) / STRIDE))."""
    if min(images.shape[-2:]) < STRIDE:
        msg = f"texture descriptors: an input of {tuple(images.shape[-2:])} px is smaller than one {STRIDE} px cell; use a larger train.image_size"
        raise ValueError(msg)
    x = _gray(images)
    blurred = {s: gaussian_blur(x, s) for s in sorted({*SCALES, *(2 * s for s in SCALES), *ORIENTED})}
    out = []
    for s in SCALES:
        band = blurred[s] - blurred[2 * s]
        out += [band * 10.0, torch.log(gaussian_blur(band * band, 2 * s) + _FLOOR)]
    for s in ORIENTED:
        gy, gx = torch.gradient(blurred[s], dim=(1, 2))
        out += [torch.log(gaussian_blur(g * g, 4 * s) + _GRADIENT_FLOOR) for g in (gx, gy)]
    # the descriptor at the middle of each STRIDE x STRIDE cell, where an upsampling without aligned corners puts it
    return torch.stack(out, 1)[:, :, STRIDE // 2::STRIDE, STRIDE // 2::STRIDE].contiguous()


def standardise(patches: torch.Tensor, norm: list[list[float]]) -> torch.Tensor:
    """(B, C, h, w) descriptors minus the normal patches' channel means, over their spreads (``norm``: [means, sds])."""
    mean = torch.tensor(norm[0], dtype=patches.dtype, device=patches.device).view(1, -1, 1, 1)
    sd = torch.tensor(norm[1], dtype=patches.dtype, device=patches.device).view(1, -1, 1, 1)
    return (patches - mean) / sd


# ---------------------------------------------------------------------------- image-level statistics

IMAGE_MARGIN = 4  # cells (of STRIDE px) left out at an image's border, where the coarse filters reach past the edge
IMAGE_QUANTILES = (0.01, 0.99)
IMAGE_STATISTICS = CHANNELS * (2 + len(IMAGE_QUANTILES))
MIN_NORMALS = 3  # one normal has no spread, two have one direction of it (their Ledoit-Wolf shrinkage is 0): no Gaussian


@torch.no_grad()
def image_statistics(image: np.ndarray) -> torch.Tensor:
    """(IMAGE_STATISTICS,) float64 of one (H, W, 3) uint8 image: each descriptor channel's mean, spread and 1st and 99th
    percentile over the image's interior. A defect that changes the finish of a large area (an uneven surface) moves
    these where no single patch stands out."""
    f = texture_patches(torch.tensor(image).permute(2, 0, 1)[None])[0].double()  # a copy: decoded arrays may be read-only
    m = min(IMAGE_MARGIN, (min(f.shape[1:]) - 1) // 2)
    f = f[:, m:f.shape[1] - m, m:f.shape[2] - m].reshape(CHANNELS, -1)
    q = torch.quantile(f, torch.tensor(IMAGE_QUANTILES, dtype=f.dtype), dim=1)  # (Q, C)
    return torch.cat([f.mean(1), f.std(1, correction=0), *q])


def fit_gaussian(vectors: torch.Tensor) -> dict:
    """A Gaussian of (N, D) normal statistics, N >= ``MIN_NORMALS``: each standardised, the correlation shrunk towards
    the identity by Ledoit and Wolf's rule (more shrinkage the noisier the sample correlation), inverted.
    ``{'mean', 'sd', 'precision', 'shrinkage'}`` as lists and a float, for a model's config.json."""
    if len(vectors) < MIN_NORMALS:
        raise ValueError(f"image texture: {len(vectors)} normal image(s); a Gaussian needs at least {MIN_NORMALS}")
    x = vectors.double()
    mean, sd = x.mean(0), x.std(0, correction=0).clamp(min=1e-6)
    z = (x - mean) / sd
    n, d = z.shape
    s = z.T @ z / n
    mu = torch.trace(s) / d
    target = mu * torch.eye(d, dtype=s.dtype)
    spread = ((s - target) ** 2).sum()
    # mean squared distance of each sample's outer product to s: ||z z^T||^2 - 2 z^T s z + ||s||^2
    norms = (z * z).sum(1)
    noise = (norms**2 - 2 * ((z @ s) * z).sum(1) + (s * s).sum()).mean() / n
    shrink = float(torch.clamp(noise / spread, 0.0, 1.0)) if spread > 0 else 1.0
    precision = torch.linalg.inv(shrink * target + (1 - shrink) * s)
    return {"mean": mean.tolist(), "sd": sd.tolist(), "precision": precision.tolist(), "shrinkage": shrink}


def log_mahalanobis(vectors: torch.Tensor, gaussian: dict) -> torch.Tensor:
    """(N,) log of each (N, D) vector's squared Mahalanobis distance to ``fit_gaussian``'s Gaussian (the log: a
    distance spans orders of magnitude, its log is closer to normal, so a z-score of it means something)."""
    mean, sd, precision = (torch.tensor(gaussian[k], dtype=torch.float64) for k in ("mean", "sd", "precision"))
    z = (vectors.double() - mean) / sd
    return torch.log(((z @ precision) * z).sum(1).clamp(min=1e-12))
