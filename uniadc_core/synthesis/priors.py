"""Anomaly priors files and mask drawing from a prior.

A priors file (YAML, one per dataset, ``synthesize.priors``) overrides the name-based priors of
the vocabulary per object class and defect type:

    defaults:                 # optional: every type without its own value
      foreground_only: true
    classes:
      tile:                   # an object class of the dataset ("*" = every class)
        crack:
          prompts: ["a ceramic tile with a thin dark crack"]
          negative_prompt: "blurry, text, watermark"
          shape: crack        # a family of uniadc_core.data.vocabulary.SHAPE_FAMILIES
          size: small         # tiny | small | medium | large
          appearances: [darken]
          foreground_only: true
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from uniadc_core.data.vocabulary import PRIOR_KEYS, DefectPrior, Vocabulary
from uniadc_core.synthesis.masks import sample_shape


def sample_mask(
    prior: DefectPrior, rng: np.random.Generator, shape: tuple[int, int], foreground: np.ndarray | None = None
) -> np.ndarray:
    """A bool (H, W) mask drawn from a prior: the family's shape, an area in the size bin, kept on
    the foreground when the prior asks for it."""
    return sample_shape(prior.shape, prior.size, rng, shape, foreground if prior.foreground_only else None)




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
    return Vocabulary(classes=out, resize=vocab.resize, decode=vocab.decode, intensity=vocab.intensity)
