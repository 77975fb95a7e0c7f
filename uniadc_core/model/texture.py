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
