"""A generated demo dataset in the MVTec AD folder layout, deterministic from a seed.

Three surfaces whose normal appearance differs in texture strength (a smooth tile, a woven
fabric, a veined marble), so a detector's normal scores sit at different levels per class: the
situation CADA fixes. Each class has three defect types, some names shared across classes.
The defect rendering here is independent of the synthesizer (``uniadc_core.synthesis``), which never
calls it: demo figures are a smoke check, not a quality claim.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from uniadc_core.io import atomic_dir, png_bytes

log = logging.getLogger(__name__)

DEFECTS: dict[str, list[str]] = {
    "tile": ["crack", "scratch", "stain"],
    "fabric": ["hole", "scratch", "stain"],
    "marble": ["chip", "crack", "hole"],
}


# ---------------------------------------------------------------------------- normal surfaces


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)  # (S, S), unit variance


def _tile(rng: np.random.Generator, s: int) -> np.ndarray:
    base = np.array([196.0, 184.0, 160.0]) + rng.uniform(-8, 8, 3)
    yy, xx = np.mgrid[0:s, 0:s] / s
    grad = rng.uniform(-10, 10) * xx + rng.uniform(-10, 10) * yy
    shade = 5.0 * _smooth_noise(rng, s, s / 6)
    img = base[None, None] + (grad + shade)[..., None] + rng.normal(0, 2.5, (s, s, 3))
    return img


def _fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    base = np.array([70.0, 92.0, 140.0]) + rng.uniform(-10, 10, 3)
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    period = rng.uniform(5.5, 6.5)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * xx / period + px)
    weft = np.sin(2 * np.pi * yy / period + py)
    weave = 22.0 * np.where((np.floor(xx / period) + np.floor(yy / period)) % 2 == 0, warp, weft)
    fuzz = 8.0 * _smooth_noise(rng, s, 1.0)
    img = base[None, None] + (weave + fuzz)[..., None] + rng.normal(0, 7.0, (s, s, 3))
    return img


def _marble(rng: np.random.Generator, s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(float) / s
    turb = 3.0 * _smooth_noise(rng, s, s / 10) + 1.2 * _smooth_noise(rng, s, s / 30)
    angle = rng.uniform(0, np.pi)
    veins = np.abs(np.sin(6.0 * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi + turb))
    lum = 215.0 - 120.0 * (1.0 - veins) ** 6 + 10.0 * _smooth_noise(rng, s, 3.0)
    tint = np.array([1.0, 0.97, 0.93])
    img = lum[..., None] * tint[None, None] + rng.normal(0, 5.0, (s, s, 3))
    return img


SURFACES = {"tile": _tile, "fabric": _fabric, "marble": _marble}


# ---------------------------------------------------------------------------- defects


def _draw_polyline(mask: np.ndarray, pts: np.ndarray, width: float) -> None:
    s = mask.shape[0]
    yy, xx = np.mgrid[0:s, 0:s]
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        dy, dx = y1 - y0, x1 - x0
        length2 = dy * dy + dx * dx + 1e-9
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0, 1)
        d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
        mask |= d2 <= (width / 2) ** 2


def _walk(rng: np.random.Generator, s: int, steps: int, step: float, turn: float) -> np.ndarray:
    pos = rng.uniform(0.25 * s, 0.75 * s, 2)
    heading = rng.uniform(0, 2 * np.pi)
    pts = [pos.copy()]
    for _ in range(steps):
        heading += rng.normal(0, turn)
        pos = pos + step * np.array([np.sin(heading), np.cos(heading)])
        pts.append(np.clip(pos, 2, s - 3))
    return np.array(pts)


def _defect(name: str, rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render one defect into ``img`` (float, H x W x 3); returns (image, bool mask)."""
    s = img.shape[0]
    mask = np.zeros((s, s), bool)
    out = img.copy()
    if name == "crack":
        main = _walk(rng, s, int(rng.integers(10, 18)), s / 24, 0.45)
        _draw_polyline(mask, main, rng.uniform(1.5, 2.5))
        for _ in range(int(rng.integers(1, 3))):  # side branches
            start = main[int(rng.integers(2, len(main) - 2))]
            branch = _walk(rng, s, int(rng.integers(3, 7)), s / 30, 0.6)
            branch = branch - branch[0] + start
            _draw_polyline(mask, np.clip(branch, 2, s - 3), rng.uniform(1.0, 1.8))
        out[mask] = out[mask] * rng.uniform(0.45, 0.7)  # faint: the marble's veins look alike
    elif name == "scratch":
        p0 = rng.uniform(0.15 * s, 0.85 * s, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.6) * s
        p1 = np.clip(p0 + length * np.array([np.sin(angle), np.cos(angle)]), 2, s - 3)
        mid = (p0 + p1) / 2 + rng.normal(0, s / 40, 2)
        _draw_polyline(mask, np.array([p0, mid, p1]), rng.uniform(1.0, 1.8))
        out[mask] = out[mask] + (255.0 - out[mask]) * rng.uniform(0.3, 0.55)  # a faint bright line
    elif name == "stain":
        cy, cx = rng.uniform(0.25 * s, 0.75 * s, 2)
        yy, xx = np.mgrid[0:s, 0:s]
        r = rng.uniform(0.07, 0.13) * s
        wobble = 0.35 * r * _smooth_noise(rng, s, s / 16)
        dist = np.sqrt((yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.7, 1.3)) ** 2) + wobble
        mask = dist < r
        alpha = np.clip((r - dist) / (0.4 * r), 0, 1)[..., None] * rng.uniform(0.3, 0.55)
        colour = np.array([120.0, 85.0, 45.0]) + rng.uniform(-15, 15, 3)
        out = out * (1 - alpha) + colour[None, None] * alpha
    elif name == "hole":
        cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
        yy, xx = np.mgrid[0:s, 0:s]
        ry, rx = rng.uniform(0.025, 0.055, 2) * s
        dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        mask = dist < 1.0
        rim = (dist >= 1.0) & (dist < 1.35)
        out[rim] = out[rim] * 0.75
        out[mask] = out[mask] * rng.uniform(0.15, 0.35) + rng.normal(0, 4, (int(mask.sum()), 3))
    elif name == "chip":
        # a piece broken off at the border: a polygon touching one edge, flat grey fracture face
        edge = int(rng.integers(0, 4))
        centre = rng.uniform(0.3 * s, 0.7 * s)
        depth = rng.uniform(0.12, 0.22) * s
        half = rng.uniform(0.12, 0.2) * s
        yy, xx = np.mgrid[0:s, 0:s].astype(float)
        along, across = [(xx, yy), (yy, s - 1 - xx), (xx, s - 1 - yy), (yy, xx)][edge]
        rough = 0.25 * depth * _smooth_noise(rng, s, s / 20)
        profile = depth * np.clip(1 - ((along - centre) / half) ** 2, 0, 1)
        mask = across < profile + rough * (profile > 0)
        out[mask] = 150.0 + 25.0 * _smooth_noise(rng, s, 2.0)[mask][:, None] + rng.normal(0, 3, (int(mask.sum()), 3))
    else:
        msg = f"demo dataset: no renderer for defect type '{name}'; known: chip, crack, hole, scratch, stain"
        raise ValueError(msg)
    return out, mask


# ---------------------------------------------------------------------------- the tree


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def generate_demo(
    root: str | Path,
    seed: int = 0,
    classes: list[str] | None = None,
    image_size: int = 128,
    train_normals: int = 48,
    test_normals: int = 15,
    test_per_defect: int = 10,
) -> Path:
    """Write the demo tree to ``root`` (atomically replacing it) and return ``root``."""
    root = Path(root)
    classes = classes or list(DEFECTS)
    unknown = [c for c in classes if c not in DEFECTS]
    if unknown:
        msg = f"demo dataset: unknown class(es) {unknown}; known: {', '.join(DEFECTS)}"
        raise ValueError(msg)
    total = len(classes) * (train_normals + test_normals) + sum(len(DEFECTS[c]) for c in classes) * test_per_defect
    with atomic_dir(root) as tmp, tqdm(total=total, desc="demo dataset", unit="img", leave=False) as bar:
        for ci, cls in enumerate(classes):
            surface = SURFACES[cls]
            jobs = [("train/good", None, train_normals), ("test/good", None, test_normals)]
            jobs += [(f"test/{d}", d, test_per_defect) for d in DEFECTS[cls]]
            for ji, (sub, defect, count) in enumerate(jobs):
                folder = tmp / cls / sub
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, ci, ji, i])
                    img = surface(rng, image_size)
                    if defect is not None:
                        img, mask = _defect(defect, rng, img)
                        gt = tmp / cls / "ground_truth" / defect
                        gt.mkdir(parents=True, exist_ok=True)
                        (gt / f"{i:03d}_mask.png").write_bytes(png_bytes(mask.astype(np.uint8) * 255))
                    (folder / f"{i:03d}.png").write_bytes(png_bytes(_to_uint8(img)))
                    bar.update()
        info = {
            "generator": "uniadc demo",
            "seed": seed,
            "classes": {c: DEFECTS[c] for c in classes},
            "image_size": image_size,
        }
        (tmp / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("demo dataset: wrote %d images to %s", total, root)
    return root
