"""Anomaly priors: what a defect type looks like before any image of it is seen.

A prior is a mask-shape family with a size bin (``uniadc_core.masks``), the appearance changes
that suit it, text prompts and a negative prompt (for the diffusion synthesizer and CLIP
selection), and whether it stays on the object's foreground. Defaults come from the defect name
(``crack`` -> crack family, ``stain`` -> Perlin blob, ...); a priors file (YAML, one per dataset,
``synthesize.priors``) overrides them per object class and defect type:

    defaults:                 # optional: every type without its own value
      foreground_only: true
    classes:
      tile:                   # an object class of the dataset ("*" = every class)
        crack:
          prompts: ["a ceramic tile with a thin dark crack"]
          negative_prompt: "blurry, text, watermark"
          shape: crack        # a family of uniadc_core.masks.SHAPE_FAMILIES
          size: small         # tiny | small | medium | large
          appearances: [darken]
          foreground_only: true
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from uniadc_core.masks import SHAPE_FAMILIES, SIZE_BINS, canonical_family, estimate_foreground, sample_shape

__all__ = ["APPEARANCES", "SHAPE_FAMILIES", "SIZE_BINS", "DefectPrior", "Vocabulary", "apply_priors_file", "default_prior",
           "estimate_foreground", "sample_mask"]

APPEARANCES = ("darken", "lighten", "texture", "blur", "noise", "colour")

# defect-name keywords -> (shape family, size bin, appearances); first match wins
_KEYWORDS: list[tuple[tuple[str, ...], str, str, tuple[str, ...]]] = [
    (("crack", "fissure", "break", "fracture"), "crack", "small", ("darken",)),
    (("scratch", "scrape", "abrasion"), "scratch", "small", ("lighten", "darken")),
    (("hole", "pit", "blowhole", "pore", "puncture"), "hole", "small", ("darken",)),
    (("thread", "fray", "line", "fiber", "hair"), "line", "small", ("lighten", "darken", "colour")),
    (("fold", "wrinkle", "smear", "stroke"), "brush", "small", ("darken", "texture", "blur")),
    # "uneven" as a polygon, not a Perlin blob: 81.7 against 74.7 image AUROC on MTD (benchmarks/results/mtd_quality_ablation.md)
    (("chip", "missing", "broken", "cut", "bent", "squeeze", "dent", "uneven"), "polygon", "medium", ("texture", "blur", "darken")),
    (("rough", "texture"), "perlin", "medium", ("texture", "blur", "darken")),
    (("stain", "spot", "contamination", "dirt", "color", "colour", "oil", "glue", "liquid", "print"), "perlin", "small", ("colour", "darken", "texture")),
]
PRIOR_KEYS = ("shape", "size", "appearances", "prompts", "negative_prompt", "foreground_only")


@dataclass(frozen=True)
class DefectPrior:
    shape: str = "perlin"
    size: str = "small"
    appearances: tuple[str, ...] = ("darken", "lighten", "texture", "colour")
    prompts: tuple[str, ...] = ()
    foreground_only: bool = True
    negative_prompt: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["appearances"] = list(self.appearances)
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "vocabulary") -> DefectPrior:
        prior = cls(
            shape=d["shape"],
            size=d["size"],
            appearances=tuple(d["appearances"]),
            prompts=tuple(d.get("prompts", ())),
            foreground_only=bool(d.get("foreground_only", True)),
            negative_prompt=str(d.get("negative_prompt", "")),
        )
        prior.validate(where)
        return prior

    def validate(self, where: str) -> None:
        canonical_family(self.shape, where)
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
    shape, size, looks = "perlin", "small", ("darken", "lighten", "texture", "colour")
    for keys, fam, sz, app in _KEYWORDS:
        if any(k in w for w in words for k in keys):
            shape, size, looks = fam, sz, app
            break
    pretty = defect_type.replace("_", " ")
    obj = object_class.replace("_", " ")
    prompts = (f"a photo of a {obj} with a {pretty}", f"a close-up of {pretty} on the {obj} surface")
    return DefectPrior(shape=shape, size=size, appearances=looks, prompts=prompts,
                       negative_prompt="blurry, cartoon, text, watermark")


def sample_mask(
    prior: DefectPrior, rng: np.random.Generator, shape: tuple[int, int], foreground: np.ndarray | None = None
) -> np.ndarray:
    """A bool (H, W) mask drawn from a prior: the family's shape, an area in the size bin, kept on
    the foreground when the prior asks for it."""
    return sample_shape(prior.shape, prior.size, rng, shape, foreground if prior.foreground_only else None)


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
    def from_dict(cls, d: dict) -> Vocabulary:
        try:
            classes = {c: {t: DefectPrior.from_dict(p) for t, p in types.items()} for c, types in d["classes"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            msg = f"vocabulary: malformed ({exc!r}); re-run the ingest stage to rewrite it"
            raise ValueError(msg) from None
        return cls(classes=classes, resize=d.get("resize", "stretch"))


# ---------------------------------------------------------------------------- priors file


def _entry(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        msg = f"{where}: expected a mapping of prior keys ({', '.join(PRIOR_KEYS)}), got {type(raw).__name__}"
        raise ValueError(msg)
    out = {}
    for key, value in raw.items():
        if key not in PRIOR_KEYS:
            close = difflib.get_close_matches(str(key), PRIOR_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msg = f"{where}: unknown key '{key}'.{hint} Allowed: {', '.join(PRIOR_KEYS)}"
            raise ValueError(msg)
        if key in ("prompts", "appearances"):
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                msg = f"{where}.{key}: expected a list of strings, got {value!r}"
                raise ValueError(msg)
            value = tuple(value)
        elif key == "foreground_only" and not isinstance(value, bool):
            msg = f"{where}.foreground_only: expected true or false, got {value!r}"
            raise ValueError(msg)
        elif key in ("shape", "size", "negative_prompt") and not isinstance(value, str):
            msg = f"{where}.{key}: expected a string, got {value!r}"
            raise ValueError(msg)
        out[key] = value
    return out


def apply_priors_file(vocab: Vocabulary, path: str | Path) -> Vocabulary:
    """The vocabulary with a priors file laid over its name-based defaults, validated against it."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: priors file not found; fix synthesize.priors (or set it to '' for priors from the defect names)"
        raise FileNotFoundError(msg)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML ({exc})"
        raise ValueError(msg) from None
    if not isinstance(data, dict) or set(data) - {"defaults", "classes"}:
        msg = f"{path}: expected top-level keys 'defaults' and/or 'classes', got {sorted(data) if isinstance(data, dict) else data!r}"
        raise ValueError(msg)
    defaults = _entry(data.get("defaults") or {}, f"{path}: defaults")
    classes = data.get("classes") or {}
    if not isinstance(classes, dict):
        msg = f"{path}: 'classes' must map object classes to defect types"
        raise ValueError(msg)
    for cls, types in classes.items():
        if cls != "*" and cls not in vocab.classes:
            msg = f"{path}: unknown object class '{cls}'; the dataset has: {', '.join(sorted(vocab.classes))} (or '*' for all)"
            raise ValueError(msg)
        if not isinstance(types, dict):
            msg = f"{path}: classes.{cls} must map defect types to priors"
            raise ValueError(msg)
        known = set(vocab.defect_types) if cls == "*" else set(vocab.classes[cls])
        for dt in types:
            if dt not in known:
                msg = f"{path}: unknown defect type '{dt}' for class '{cls}'; known: {', '.join(sorted(known))}"
                raise ValueError(msg)
    out: dict[str, dict[str, DefectPrior]] = {}
    for cls, types in vocab.classes.items():
        out[cls] = {}
        for dt, prior in types.items():
            merged = {**defaults}
            merged.update(_entry((classes.get("*") or {}).get(dt) or {}, f"{path}: classes.*.{dt}"))
            merged.update(_entry((classes.get(cls) or {}).get(dt) or {}, f"{path}: classes.{cls}.{dt}"))
            new = replace(prior, **merged)
            new.validate(f"{path}: classes.{cls}.{dt}")
            out[cls][dt] = new
    return Vocabulary(classes=out, resize=vocab.resize)
