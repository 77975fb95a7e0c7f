"""Mask-shape priors shared by every synthesizer: shape families, size bins, foreground estimators.

Every family is a *score field* over the image whose upper level sets are shapes of that family
(an ellipse: minus the elliptical radius; a line: minus the distance to a polyline; a Perlin blob:
smooth noise minus a radial fall-off). A mask is the ``k`` highest-scoring pixels inside the
allowed region (the estimated foreground), with ``k`` drawn from the size bin. So a mask has the
bin's area exactly, whatever the clipping, and the family's look.

    mask = sample_shape("ellipse", "small", rng, (256, 256), foreground)

Size bins bound the area fraction and, for compact families, the elongation (the ratio of the
principal axes of the mask's pixel cloud). Thin families (line, scratch, crack, brush) are
elongated by nature and only bounded in area. ``foreground`` ignores the size bin and returns the
whole estimated foreground.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from uniadc_core.data.vocabulary import COMPACT_FAMILIES, SIZE_BINS, canonical_family

# ---------------------------------------------------------------------------- foreground estimators


def border_foreground(image: np.ndarray) -> np.ndarray:
    """A bool (H, W) foreground estimate: pixels far from the border colour.

    Textured surfaces fill the frame, so their border looks like their centre and the whole image
    is returned; an object on a plain background gets a mask of the object.
    """
    h, w = image.shape[:2]
    f = max(1, min(h, w) // FOREGROUND_SIDE)  # estimated at about FOREGROUND_SIDE px a side, then scaled back up
    if f > 1:
        coarse = border_foreground(_box_mean(image[: h // f * f, : w // f * f], f))
        full = np.ones((h, w), bool)
        full[: h // f * f, : w // f * f] = coarse.repeat(f, 0).repeat(f, 1)
        if h % f:
            full[h // f * f:] = full[h // f * f - 1]
        if w % f:
            full[:, w // f * f:] = full[:, w // f * f - 1: w // f * f]
        return full
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    b = max(2, min(h, w) // 32)
    border = np.concatenate([img[:b].reshape(-1, img.shape[2]), img[-b:].reshape(-1, img.shape[2]),
                             img[:, :b].reshape(-1, img.shape[2]), img[:, -b:].reshape(-1, img.shape[2])])
    mu, sd = border.mean(0), border.std(0).mean() + 1.0
    dist = np.sqrt(((ndimage.uniform_filter(img, (5, 5, 1)) - mu) ** 2).sum(-1))
    fg = dist > 3.0 * sd + 10.0
    fg = ndimage.binary_opening(fg, iterations=2)
    fg = ndimage.binary_fill_holes(fg)
    frac = fg.mean()
    if frac < 0.05 or frac > 0.95:
        return np.ones((h, w), bool)
    return fg


def _box_mean(image: np.ndarray, f: int) -> np.ndarray:
    """The mean of every f x f block of an (H, W[, C]) image (H, W multiples of f), float64: for an integer image
    exactly ``reshape(H/f, f, W/f, f, C).mean((1, 3))`` (integer sums are exact), 5x faster as two contiguous sums."""
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    rows = image.reshape(h // f, f, w * c).sum(1, dtype=np.int64 if image.dtype.kind in "iub" else np.float64)
    return rows.reshape(h // f, w // f, f, c).sum(2) / (f * f)


FOREGROUND_SIDE = 64  # border_foreground works on an image about this small: a coarse estimate, 16x cheaper at 256 px


def whole_image(image: np.ndarray) -> np.ndarray:
    return np.ones(image.shape[:2], bool)


FOREGROUND_ESTIMATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"border": border_foreground, "none": whole_image}


def register_foreground_estimator(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Plug in another estimator: ``fn(image (H, W, 3) uint8) -> bool (H, W)``; select it by name."""
    FOREGROUND_ESTIMATORS[name] = fn


def foreground_estimator(method: str) -> Callable[[np.ndarray], np.ndarray]:
    """The registered estimator called ``method``, or a clear error."""
    if method not in FOREGROUND_ESTIMATORS:
        msg = f"unknown foreground estimator '{method}'; registered: {', '.join(FOREGROUND_ESTIMATORS)}"
        raise ValueError(msg)
    return FOREGROUND_ESTIMATORS[method]


def estimate_foreground(image: np.ndarray, method: str = "border") -> np.ndarray:
    return foreground_estimator(method)(image)


# ---------------------------------------------------------------------------- score fields


def _frame(rng: np.random.Generator, h: int, w: int, centre: np.ndarray, aspect: float):
    """Rotated coordinates (u along the major axis, v across) scaled so u and v have equal weight at ``aspect``."""
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]  # broadcast, not a grid
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return u / np.sqrt(aspect), v * np.sqrt(aspect)


def _segment_distance(yy: np.ndarray, xx: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a polyline of (y, x) points (``yy`` a column, ``xx`` a row: they broadcast)."""
    best = np.full(np.broadcast_shapes(yy.shape, xx.shape), np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-9), 0, 1)
        best = np.minimum(best, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return best


def _axes(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a window as a float32 column (y) and row (x), which broadcast to the window's grid."""
    return np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]


def _walk(rng: np.random.Generator, start: np.ndarray, n: int, step: float, turn: float) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi)
    pts = [np.asarray(start, float)]
    for _ in range(n):
        heading += rng.normal(0, turn)
        pts.append(pts[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    return np.array(pts)


def perlin(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise on a ``cells`` x ``cells`` lattice, about in [-1, 1]."""
    h, w = shape
    angles = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    grad_x, grad_y = np.cos(angles), np.sin(angles)
    y = np.linspace(0, cells, h, endpoint=False)[:, None]  # a column and a row: every per-axis term is computed once
    x = np.linspace(0, cells, w, endpoint=False)[None, :]
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    rows, cols = y0[:, 0], x0[0]

    def dot(oy, ox):  # the corner (oy, ox) gradients, gathered by rows then columns (8x faster than a 2-D gather)
        return grad_x[rows + oy][:, cols + ox] * (fx - ox) + grad_y[rows + oy][:, cols + ox] * (fy - oy)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    sy, sx = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - sx) + dot(0, 1) * sx
    bottom = dot(1, 0) * (1 - sx) + dot(1, 1) * sx
    return (top * (1 - sy) + bottom * sy) * np.sqrt(2)


def _score(family: str, rng: np.random.Generator, h: int, w: int, area: float, aspect: float, centre: np.ndarray,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """A field whose ``area`` highest pixels (inside ``allowed``) form a shape of ``family`` around ``centre``."""
    s = float(min(h, w))
    if family in COMPACT_FAMILIES:
        u, v = _frame(rng, h, w, centre, aspect)
        r = np.sqrt(area / np.pi)
        if family in ("ellipse", "hole"):
            return -np.hypot(u, v)
        if family == "rectangle":
            return -np.maximum(np.abs(u), np.abs(v))
        if family == "hollow_ellipse":  # a ring: thickness grows with the area, the radius is fixed
            radius = r * rng.uniform(1.1, 1.6)
            return -np.abs(np.hypot(u, v) - radius)
        if family == "polygon":
            k = int(rng.integers(5, 9))
            corners = np.sort(rng.uniform(0, 2 * np.pi, k))
            radii = rng.uniform(0.65, 1.35, k)
            theta = np.arctan2(v, u) % (2 * np.pi)
            bound = np.interp(theta, np.concatenate([corners - 2 * np.pi, corners, corners + 2 * np.pi]), np.tile(radii, 3))
            return -np.hypot(u, v) / bound
        # perlin: smooth noise over a radial fall-off gives an irregular, mostly single blob
        noise = perlin((h, w), int(rng.integers(3, 7)), rng) + 0.5 * perlin((h, w), int(rng.integers(8, 14)), rng)
        return -np.hypot(u, v) / max(r, 1.0) + 0.6 * noise
    width = {"line": rng.uniform(1.0, 3.0), "scratch": rng.uniform(1.0, 2.2), "crack": rng.uniform(1.2, 2.6),
             "brush": rng.uniform(0.05, 0.1) * s}[family]
    length = float(np.clip(area / width, 4, 1.5 * s))
    if family == "crack":
        n = max(4, int(length / (s / 24)))
        pts = _walk(rng, centre, n, length / n, 0.5)
        lines = [(pts, 1.0)]
        for _ in range(int(rng.integers(0, 3))):
            branch = _walk(rng, pts[int(rng.integers(0, len(pts)))], max(2, n // 3), length / n, 0.7)
            lines.append((branch, 1.4))  # branches are thinner
        return -_distance(h, w, lines, area, allowed)
    if family == "brush":
        n = max(3, int(length / (s / 10)))
        return -_distance(h, w, [(_walk(rng, centre - 0.3 * length * rng.uniform(-1, 1, 2), n, length / n, 0.35), 1.0)], area, allowed)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    bend = rng.normal(0, (0.08 if family == "scratch" else 0.15) * length, 2)
    return -_distance(h, w, [(np.array([centre - d, centre + bend, centre + d]), 1.0)], area, allowed)


def _distance(h: int, w: int, lines: list[tuple[np.ndarray, float]], k: float, allowed: np.ndarray | None) -> np.ndarray:
    """(H, W) scaled distance to the nearest of ``lines`` ((points, scale) pairs), computed only in a window
    around them (+inf outside) when the window holds the ``k`` nearest allowed pixels, so the ``k`` best are
    those over the whole image (up to ties at the k-th value); the margin is doubled twice while too few allowed
    pixels lie within it (those tries in float64, the whole-image field's values), then the whole image.
    Thin masks cost their size, not the image's."""
    def field(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:  # exact, over the whole window
        yy, xx = _axes(y0, y1, x0, x1)
        dist = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        for p, scale in lines:
            dist = np.minimum(dist, _segment_distance(yy, xx, p) * scale)
        return dist

    def near_field(y0: int, y1: int, x0: int, x1: int, dtype: type) -> np.ndarray:
        """Exact within ``margin`` of the lines, +inf beyond: each segment only over its own box."""
        dist = np.full((y1 - y0, x1 - x0), np.inf, dtype)
        for p, scale in lines:
            for a, b in zip(p[:-1], p[1:], strict=True):
                lo = np.clip(np.floor(np.minimum(a, b)).astype(int) - margin, [y0, x0], [y1, x1])
                hi = np.clip(np.ceil(np.maximum(a, b)).astype(int) + margin + 1, lo, [y1, x1])
                if (hi <= lo).any():
                    continue
                yy, xx = _axes(lo[0], hi[0], lo[1], hi[1])
                box = dist[lo[0] - y0:hi[0] - y0, lo[1] - x0:hi[1] - x0]
                np.minimum(box, _segment_distance(yy, xx, np.stack([a, b])) * scale, out=box)
        return dist

    pts = np.concatenate([p for p, _ in lines])
    length = sum(float(np.hypot(*np.diff(p, axis=0).T).sum()) for p, _ in lines)
    margin = int(k / max(length, 1.0)) + 6  # twice the half-width k pixels take along the lines, and a few more
    for attempt in range(3):  # the k nearest allowed pixels may lie beyond the margin (the allowed region clips): twice as far
        lo = np.clip(np.floor(pts.min(0)).astype(int) - margin, 0, [h, w])
        hi = np.clip(np.ceil(pts.max(0)).astype(int) + margin + 1, lo, [h, w])
        (y0, x0), (y1, x1) = lo, hi
        dtype = np.float32 if attempt == 0 else np.float64  # a retry stands in for the whole-image field: its dtype
        dist = near_field(y0, y1, x0, x1, dtype)
        near = dist <= margin if allowed is None else (dist <= margin) & allowed[y0:y1, x0:x1]
        if near.sum() >= k:
            out = np.full((h, w), np.inf, dtype)  # every pixel nearer than the margin is in the window
            out[y0:y1, x0:x1] = dist
            return out
        margin *= 2
    return field(0, h, 0, w)  # still too few: the whole image


# ---------------------------------------------------------------------------- sampling


def elongation(mask: np.ndarray) -> float:
    """Major / minor principal axis of a mask's pixel cloud (1 for a disc)."""
    pts = np.argwhere(mask).astype(np.float64)
    if len(pts) < 3:
        return 1.0
    evals = np.linalg.eigvalsh(np.cov(pts.T) + 1e-3 * np.eye(2))
    return float(np.sqrt(evals[1] / evals[0]))


def sample_shape(family: str, size: str, rng: np.random.Generator, shape: tuple[int, int],
                 foreground: np.ndarray | None = None) -> np.ndarray:
    """A bool (H, W) mask of ``family`` whose area fraction lies in the size bin, inside ``foreground``."""
    family = canonical_family(family, "mask")
    if size not in SIZE_BINS:
        msg = f"mask: unknown size bin '{size}'; allowed: {', '.join(SIZE_BINS)}"
        raise ValueError(msg)
    h, w = shape
    allowed = np.ones((h, w), bool) if foreground is None else foreground.astype(bool)
    if family == "foreground":
        return allowed.copy()
    size_bin = SIZE_BINS[size]
    lo, hi = size_bin.area
    k = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi))) * h * w))
    k = max(1, min(k, int(allowed.sum())))
    best, best_miss = None, np.inf
    for _ in range(10):  # compact shapes: redraw until the elongation is the bin's (clipping and noise can push it out)
        aspect = rng.uniform(*size_bin.aspect)
        if family == "hole":  # holes are round-ish whatever the bin allows
            aspect = min(aspect, 1.4)
        mask = _top_k(family, rng, allowed, k, aspect)
        if family not in COMPACT_FAMILIES:
            return mask
        e = elongation(mask)
        miss = max(size_bin.aspect[0] - e, e - size_bin.aspect[1], 0.0)
        if miss == 0.0:
            return mask
        if miss < best_miss:
            best, best_miss = mask, miss
    return best


def _top_k(family: str, rng: np.random.Generator, allowed: np.ndarray, k: int, aspect: float) -> np.ndarray:
    """The k best pixels of one drawn score field, inside ``allowed``."""
    h, w = allowed.shape
    # a centre well inside the allowed region, so the shape is not cut by its edge
    r = np.sqrt(k / np.pi) * np.sqrt(aspect)
    if allowed.all():
        margin = np.minimum([h / 2 - 1, w / 2 - 1], max(2.0, min(r, min(h, w) / 4)))
        centre = rng.uniform(margin, [h - margin[0], w - margin[1]])
    else:
        inner = ndimage.binary_erosion(allowed, iterations=max(1, int(min(r, min(h, w) / 4))))
        pool = np.argwhere(inner if inner.any() else allowed)
        centre = pool[int(rng.integers(len(pool)))].astype(float)
    score = _score(family, rng, h, w, k, aspect, centre, allowed).astype(np.float64)  # one selection routine for every family
    score = np.where(allowed, score, -np.inf).ravel()
    top = np.argpartition(-score, k - 1)[:k]  # exactly k pixels: the area is the bin's by construction
    mask = np.zeros(h * w, bool)
    mask[top] = True
    return mask.reshape(h, w)
