"""Anomaly priors: what a defect type looks like before any image of it is seen.

A prior is a mask-shape family with a size bin, the appearance changes that suit it, and text
prompts (used by the diffusion synthesizer and the open_clip backbone). Defaults come from the
defect name (``crack`` -> crack family, ``stain`` -> blob, ...). The mask sampler lives here so
every synthesizer shares it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

SHAPE_FAMILIES = ("line", "crack", "blob", "hole", "scratch", "region")
APPEARANCES = ("darken", "lighten", "texture", "blur", "noise", "colour")

# area fraction of the image, (low, high), per size bin
SIZE_BINS: dict[str, tuple[float, float]] = {
    "tiny": (0.0005, 0.004),
    "small": (0.004, 0.015),
    "medium": (0.015, 0.06),
    "large": (0.06, 0.2),
}

# defect-name keywords -> (shape family, size bin, appearances); first match wins
_KEYWORDS: list[tuple[tuple[str, ...], str, str, tuple[str, ...]]] = [
    (("crack", "fissure", "break", "fracture"), "crack", "small", ("darken",)),
    (("scratch", "scrape", "abrasion"), "scratch", "small", ("lighten", "darken")),
    (("hole", "pit", "blowhole", "pore", "puncture"), "hole", "small", ("darken",)),
    (("thread", "fray", "line", "fiber", "hair"), "line", "small", ("lighten", "darken", "colour")),
    (("chip", "missing", "broken", "cut", "uneven", "bent", "squeeze"), "region", "medium", ("texture", "blur", "darken")),
    (("stain", "spot", "contamination", "dirt", "color", "colour", "oil", "glue", "liquid", "print"), "blob", "small", ("colour", "darken", "texture")),
]


@dataclass(frozen=True)
class DefectPrior:
    shape: str = "blob"
    size: str = "small"
    appearances: tuple[str, ...] = ("darken", "lighten", "texture", "colour")
    prompts: tuple[str, ...] = ()
    foreground_only: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["appearances"] = list(self.appearances)
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DefectPrior":
        prior = cls(
            shape=d["shape"],
            size=d["size"],
            appearances=tuple(d["appearances"]),
            prompts=tuple(d.get("prompts", ())),
            foreground_only=bool(d.get("foreground_only", True)),
        )
        prior.validate("vocabulary")
        return prior

    def validate(self, where: str) -> None:
        if self.shape not in SHAPE_FAMILIES:
            msg = f"{where}: unknown shape family '{self.shape}'; allowed: {', '.join(SHAPE_FAMILIES)}"
            raise ValueError(msg)
        if self.size not in SIZE_BINS:
            msg = f"{where}: unknown size bin '{self.size}'; allowed: {', '.join(SIZE_BINS)}"
            raise ValueError(msg)
        bad = [a for a in self.appearances if a not in APPEARANCES]
        if bad or not self.appearances:
            msg = f"{where}: unknown appearance(s) {bad}; allowed: {', '.join(APPEARANCES)}"
            raise ValueError(msg)


def default_prior(defect_type: str, object_class: str) -> DefectPrior:
    """The prior implied by a defect's name, with prompts naming the defect and the object."""
    words = defect_type.lower().replace("-", "_").split("_")
    shape, size, looks = "blob", "small", ("darken", "lighten", "texture", "colour")
    for keys, fam, sz, app in _KEYWORDS:
        if any(k in w for w in words for k in keys):
            shape, size, looks = fam, sz, app
            break
    pretty = defect_type.replace("_", " ")
    obj = object_class.replace("_", " ")
    prompts = (f"a photo of a {obj} with a {pretty}", f"a close-up of {pretty} on the {obj} surface")
    return DefectPrior(shape=shape, size=size, appearances=looks, prompts=prompts)


# ---------------------------------------------------------------------------- foreground


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """A bool (H, W) foreground estimate: pixels far from the border colour.

    Textured surfaces fill the frame, so their border looks like their centre and the whole
    image is returned; an object on a plain background gets a mask of the object.
    """
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]
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


# ---------------------------------------------------------------------------- masks


def _polyline(h: int, w: int, pts: np.ndarray, width: float) -> np.ndarray:
    """Rasterise a polyline of (y, x) points with a given width; (H, W) bool."""
    mask = np.zeros((h, w), bool)
    r = max(width / 2, 0.5)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        y_lo, y_hi = int(max(0, min(y0, y1) - r - 1)), int(min(h, max(y0, y1) + r + 2))
        x_lo, x_hi = int(max(0, min(x0, x1) - r - 1)), int(min(w, max(x0, x1) + r + 2))
        if y_lo >= y_hi or x_lo >= x_hi:
            continue
        yy, xx = np.mgrid[y_lo:y_hi, x_lo:x_hi]
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-9), 0, 1)
        d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
        mask[y_lo:y_hi, x_lo:x_hi] |= d2 <= r * r
    return mask


def _random_walk(rng: np.random.Generator, start: np.ndarray, n: int, step: float, turn: float) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi)
    pts = [start]
    for _ in range(n):
        heading += rng.normal(0, turn)
        pts.append(pts[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    return np.array(pts)


def _shape(family: str, rng: np.random.Generator, h: int, w: int, area: float, centre: np.ndarray) -> np.ndarray:
    """One mask of a family aiming at ``area`` pixels around ``centre``."""
    s = float(min(h, w))
    if family in ("line", "scratch", "crack"):
        width = {"line": rng.uniform(1.0, 3.0), "scratch": rng.uniform(1.0, 2.2), "crack": rng.uniform(1.2, 2.6)}[family]
        length = float(np.clip(area / width, 4, 1.5 * s))
        if family == "crack":
            n = max(4, int(length / (s / 24)))
            pts = _random_walk(rng, centre, n, length / n, 0.5)
            mask = _polyline(h, w, pts, width)
            for _ in range(int(rng.integers(0, 3))):
                start = pts[int(rng.integers(0, len(pts)))]
                mask |= _polyline(h, w, _random_walk(rng, start, max(2, n // 3), length / n, 0.7), width * 0.7)
            return mask
        angle = rng.uniform(0, np.pi)
        d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
        bend = rng.normal(0, 0.08 * length, 2) if family == "scratch" else rng.normal(0, 0.2 * length, 2)
        pts = np.array([centre - d, centre + bend, centre + d])
        return _polyline(h, w, pts, width)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if family == "hole":
        r = np.sqrt(area / np.pi)
        aspect = rng.uniform(0.75, 1.33)
        return ((yy - centre[0]) / (r * aspect)) ** 2 + ((xx - centre[1]) / (r / aspect)) ** 2 <= 1.0
    if family == "blob":
        r = np.sqrt(area / np.pi)
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(1.0, r / 2))
        noise = noise / (noise.std() + 1e-8)
        aspect = rng.uniform(0.6, 1.6)
        dist = np.sqrt(((yy - centre[0]) * aspect) ** 2 + ((xx - centre[1]) / aspect) ** 2)
        return dist + 0.35 * r * noise <= r
    if family == "region":
        # an irregular polygon
        r = np.sqrt(area / np.pi)
        k = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = r * rng.uniform(0.6, 1.4, k)
        theta = np.arctan2(yy - centre[0], xx - centre[1]) % (2 * np.pi)
        dist = np.hypot(yy - centre[0], xx - centre[1])
        bound = np.interp(theta, np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi]), np.tile(radii, 3))
        return dist <= bound
    msg = f"unknown shape family '{family}'; allowed: {', '.join(SHAPE_FAMILIES)}"
    raise ValueError(msg)


def sample_mask(
    prior: DefectPrior, rng: np.random.Generator, shape: tuple[int, int], foreground: np.ndarray | None = None
) -> np.ndarray:
    """A bool (H, W) mask drawn from a prior, kept on the foreground when asked."""
    h, w = shape
    lo, hi = SIZE_BINS[prior.size]
    fg = foreground if (foreground is not None and prior.foreground_only) else np.ones((h, w), bool)
    inner = ndimage.binary_erosion(fg, iterations=max(1, min(h, w) // 16)) if fg.mean() < 1 else fg
    candidates = np.argwhere(inner if inner.any() else fg)
    margin = min(h, w) // 10
    mask = np.zeros((h, w), bool)
    for _ in range(20):  # retry until a mask of a usable size lands on the foreground
        area = np.exp(rng.uniform(np.log(lo), np.log(hi))) * h * w
        if fg.mean() == 1:
            centre = rng.uniform([margin, margin], [h - margin, w - margin])
        else:
            centre = candidates[int(rng.integers(len(candidates)))].astype(float)
        mask = _shape(prior.shape, rng, h, w, area, centre) & fg
        if mask.sum() >= max(4, 0.3 * lo * h * w):
            return mask
    return mask


@dataclass
class Vocabulary:
    """Object classes -> defect types -> priors; defect index 0 is normal, 1.. follow ``defect_types``."""

    classes: dict[str, dict[str, DefectPrior]] = field(default_factory=dict)
    resize: str = "stretch"  # how every stage makes images square (ingest.resize)

    @property
    def defect_types(self) -> list[str]:
        return sorted({d for types in self.classes.values() for d in types})

    def index(self, defect_type: str) -> int:
        types = self.defect_types
        if defect_type not in types:
            msg = f"unknown defect type '{defect_type}'; known: {', '.join(types)}"
            raise ValueError(msg)
        return types.index(defect_type) + 1

    def prior(self, object_class: str, defect_type: str) -> DefectPrior:
        if object_class not in self.classes:
            msg = f"unknown object class '{object_class}'; known: {', '.join(sorted(self.classes))}"
            raise ValueError(msg)
        types = self.classes[object_class]
        if defect_type not in types:
            msg = f"unknown defect type '{defect_type}' for class '{object_class}'; known: {', '.join(sorted(types))}"
            raise ValueError(msg)
        return types[defect_type]

    def to_dict(self) -> dict:
        return {
            "resize": self.resize,
            "defect_types": self.defect_types,
            "classes": {c: {d: p.to_dict() for d, p in sorted(t.items())} for c, t in sorted(self.classes.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        try:
            classes = {c: {t: DefectPrior.from_dict(p) for t, p in types.items()} for c, types in d["classes"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            msg = f"vocabulary: malformed ({exc!r}); re-run the ingest stage to rewrite it"
            raise ValueError(msg) from None
        return cls(classes=classes, resize=d.get("resize", "stretch"))
