"""The vocabulary: object classes -> defect types -> anomaly priors, shared by every stage.

Defect index 0 is normal; ``defect_types`` (sorted) gives indices 1..K, the discriminator's class
order. A prior is what a defect type looks like before any image of it is seen: a mask-shape
family with a size bin, the appearance changes that suit it, text prompts and a negative prompt
(diffusion synthesis, CLIP selection), and whether it stays on the object's foreground. Ingest
writes the priors implied by the defect names (``crack`` -> crack family, ``stain`` -> Perlin
blob, ...); ``uniadc_core.synthesis.priors`` lays a priors file over them. The mask library that
draws the shapes is ``uniadc_core.synthesis.masks``; the names and size bins it draws live here,
so a vocabulary can be validated without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decoding import DecodeOptions
from uniadc_core.io import read_json


@dataclass(frozen=True)
class SizeBin:
    area: tuple[float, float]  # fraction of the image
    aspect: tuple[float, float]  # elongation of compact shapes: major / minor axis


SIZE_BINS: dict[str, SizeBin] = {
    "tiny": SizeBin((0.0005, 0.004), (1.0, 2.5)),
    "small": SizeBin((0.004, 0.015), (1.0, 3.0)),
    "medium": SizeBin((0.015, 0.06), (1.0, 3.0)),
    "large": SizeBin((0.06, 0.2), (1.0, 2.5)),
    "huge": SizeBin((0.2, 0.5), (1.0, 2.5)),  # a region of the part: a surface finish gone wrong over a side of it
}
COMPACT_FAMILIES = ("rectangle", "ellipse", "hollow_ellipse", "polygon", "perlin", "hole")
THIN_FAMILIES = ("line", "scratch", "crack", "brush")
SHAPE_FAMILIES = (*COMPACT_FAMILIES, *THIN_FAMILIES, "foreground")
ALIASES = {"blob": "perlin", "region": "polygon", "stroke": "brush", "rect": "rectangle", "whole": "foreground"}


def canonical_family(name: str, where: str = "prior") -> str:
    """The family a name stands for (aliases of older vocabularies included), or a clear error."""
    family = ALIASES.get(name, name)
    if family not in SHAPE_FAMILIES:
        msg = f"{where}: unknown shape family '{name}'; allowed: {', '.join(SHAPE_FAMILIES)}"
        raise ValueError(msg)
    return family


# what the masked region becomes (uniadc_core/synthesis/procedural.py): a change of the image itself
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
    (("stain", "spot", "contamination", "dirt", "color", "colour", "oil", "glue", "liquid", "print"), "perlin", "small",
     ("colour", "darken", "texture")),
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


@dataclass
class Vocabulary:
    """Object classes -> defect types -> priors; defect index 0 is normal, 1.. follow ``defect_types``."""

    classes: dict[str, dict[str, DefectPrior]] = field(default_factory=dict)
    resize: str = "stretch"  # how every stage makes images square (ingest.resize)
    decode: dict = field(default_factory=dict)  # how every stage decodes a file (ingest.bit_depth, max_pixels); {} = defaults
    intensity: str = "none"  # per-image intensity rule of every stage (ingest.intensity)

    def preprocess(self, size: int) -> Preprocess:
        """How every stage before training makes a file a ``size`` px input: this dataset's resize, decoding, intensity."""
        return Preprocess(size, self.resize, decode=DecodeOptions.from_dict(self.decode), intensity=self.intensity)

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
            "decode": self.decode,
            **({"intensity": self.intensity} if self.intensity != "none" else {}),  # absent = none: older files read the same
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
        return cls(classes=classes, resize=d.get("resize", "stretch"), decode=dict(d.get("decode") or {}),
                   intensity=d.get("intensity", "none"))


def read_vocabulary(path: str | Path) -> Vocabulary:
    """The vocabulary ingest wrote (``vocabulary.json``)."""
    return Vocabulary.from_dict(read_json(path))
