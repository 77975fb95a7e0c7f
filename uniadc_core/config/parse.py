"""Parsing and validating params: types, ranges, moved keys, overrides (``KEY=VALUE``, as ``dvc exp run -S``)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from uniadc_core.config.schema import ConfigError, Params


def _int_min(n: int) -> tuple[typing.Callable[[Any], bool], str]:
    return (lambda v: v >= n, f"an integer >= {n}")


_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_POSITIVE = (lambda v: v > 0, "a number > 0")
_FRACTION = (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_UNIT = (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")

# value checks that the type system does not express: key -> (predicate, what is allowed)
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "ingest.anomaly_shots": _int_min(0),
    "ingest.normal_shots": (lambda v: v == "all" or v >= 1, "'all' or an integer >= 1"),
    "ingest.holdout_fraction": _FRACTION,
    "ingest.holdout_min": _int_min(0),
    "ingest.mtd.test_normal_fraction": _FRACTION,
    "ingest.folder.test_normal_fraction": _FRACTION,
    "ingest.kolektorsdd.folds": _int_min(2),
    "ingest.kolektorsdd.test_fold": _int_min(0),
    "ingest.demo.image_size": (lambda v: 128 <= v <= 256, "an integer in [128, 256]"),
    "ingest.demo.train_normals": _int_min(4),
    "ingest.demo.test_normals": _int_min(1),
    "ingest.demo.test_per_defect": _int_min(1),
    "synthesize.image_size": (lambda v: 32 <= v <= 1024, "an integer in [32, 1024]"),
    "synthesize.samples_per_type": _int_min(1),
    "synthesize.repaint_fraction": _UNIT,
    "synthesize.shard_size": _int_min(1),
    "synthesize.row_group_size": _int_min(1),
    "synthesize.workers": _int_min(1),
    "synthesize.diffusion.resolution": (lambda v: v >= 32 and v % 8 == 0, "a multiple of 8, >= 32"),
    "synthesize.diffusion.steps": _int_min(1),
    "synthesize.diffusion.guidance": _NON_NEGATIVE,
    "synthesize.diffusion.strengths": (lambda v: len(v) > 0 and all(0 < x <= 1 for x in v), "a non-empty list of numbers in (0, 1]"),
    "synthesize.diffusion.repaint_strength": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "synthesize.diffusion.batch_size": _int_min(1),
    "synthesize.diffusion.candidates": _int_min(1),
    "train.image_size": (lambda v: v >= 32 and v % 16 == 0, "a multiple of 16, >= 32"),
    "train.width": _int_min(4),
    "train.embed_dim": _int_min(4),
    "train.epochs": _int_min(1),
    "train.batch_size": _int_min(1),
    "train.lr": _POSITIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.ema_decay": _FRACTION,
    "train.synthetic_fraction": _FRACTION,
    "train.shot_fraction": _FRACTION,
    "train.loader_workers": (lambda v: 0 <= v <= 64, "an integer in [0, 64]"),
    "train.shuffle_buffer": _int_min(1),
    "train.feature_cache_gb": _NON_NEGATIVE,
    "train.min_epoch_samples": _int_min(0),
    "train.focal_gamma": _NON_NEGATIVE,
    "train.type_loss_weight": _NON_NEGATIVE,
    "train.threads": _int_min(0),
    **{f"train.{family}.{key}": rule for family in ("torchvision", "timm") for key, rule in {  # the two CNN families
        "grid": (lambda v: v in (4, 8, 16, 32), "one of 4, 8, 16, 32"),
        "mean": (lambda v: len(v) == 3, "three numbers (R, G, B)"),
        "std": (lambda v: len(v) == 3 and all(x > 0 for x in v), "three numbers > 0 (R, G, B)"),
    }.items()},
    "train.timm.levels": (lambda v: len(v) > 0 and all(x >= 0 for x in v), "a non-empty list of feature level indices (0 = finest)"),
    "train.memory.weight": _UNIT,
    "train.memory.size": _int_min(1),
    "train.memory.k": _int_min(1),
    "train.memory.max_patches": _int_min(1),
    "train.memory.smooth": _NON_NEGATIVE,
    "fit_cada.hidden": _int_min(1),
    "fit_cada.steps": _int_min(1),
    "fit_cada.lr": _POSITIVE,
    "fit_cada.weight_decay": _NON_NEGATIVE,
    "fit_cada.synthetic_per_class": _int_min(0),
    "fit_cada.min_spread": _POSITIVE,
    "fit_cada.threshold_percentile": (lambda v: 0.0 < v <= 100.0, "a number in (0, 100]"),
    "evaluate.max_fpr": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "promote.min_image_auroc": _UNIT,
    "promote.min_type_accuracy": _UNIT,
    "promote.max_drop": _NON_NEGATIVE,
    "promote.tracked": (lambda v: len(v) > 0, "a non-empty list of metric names (keys of metrics.json)"),
    "evaluate.overlays": _int_min(0),
}


# keys that moved to another section: a params file still using the old place is told where
MOVED = {"evaluate.threshold": "fit_cada.threshold"}  # the threshold is saved with the model, not chosen at evaluation
# options measured as not paying and removed; their figures stay in docs/results.md ("Options tried and removed")
REMOVED = ("train.test_views", "train.image_texture", "train.tile_context", "train.memory.route", "train.memory.features",
           "train.reconstruction")


# ---------------------------------------------------------------------------- parsing


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (inner,) = typing.get_args(tp)
            return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, inner = typing.get_args(tp)
            return {str(k): _convert(v, inner, f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    msg = f"params key '{key}': got {value!r}, expected {_describe(tp)}"
    raise ConfigError(msg)


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"params key '{where}': expected a mapping, got {type(data).__name__}"
        raise ConfigError(msg)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            if full in MOVED:
                msg = f"params key '{full}' has moved to '{MOVED[full]}'; set it there"
                raise ConfigError(msg)
            if full in REMOVED:
                msg = f"params key '{full}' was removed: it was measured as not paying (docs/results.md); delete it from params.yaml"
                raise ConfigError(msg)
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            msg = f"params key '{full}' is not known.{hint} Allowed keys in '{where}': {', '.join(sorted(fields))}"
            raise ConfigError(msg)
    kwargs = {}
    for name in fields:
        if name not in data:
            continue
        full = f"{prefix}.{name}" if prefix else name
        value = _convert(data[name], hints[name], full)
        if full in _RANGES:
            ok, allowed = _RANGES[full]
            if not ok(value):
                msg = f"params key '{full}': got {value!r}, expected {allowed}"
                raise ConfigError(msg)
        kwargs[name] = value
    return cls(**kwargs)


def parse_params(data: Any) -> Params:
    """Validate a params mapping (as read from YAML) into ``Params``."""
    return _build(Params, data, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: params file not found (run from the repository root, or pass its path)"
        raise FileNotFoundError(msg)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML ({exc})"
        raise ConfigError(msg) from exc
    try:
        return parse_params(data)
    except ConfigError as exc:
        msg = f"{path}: {exc}"
        raise ConfigError(msg) from None


def to_dict(cfg: Any) -> dict:
    """A config dataclass as a plain dict (for logging and saving)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def set_key(data: dict, key: str, value: Any, create: bool = False) -> None:
    """Set a dotted ``key`` (``train.clip.layers``) of a raw params mapping, as ``dvc exp run -S`` does.

    A missing section or key is an error naming it, unless ``create``."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            if not create:
                msg = f"params key '{key}': '{'.'.join(parents[:i + 1])}' is not a params section"
                raise ConfigError(msg)
            node[part] = {}
        node = node[part]
    if leaf not in node and not create:
        msg = f"params key '{key}' is not in the params file"
        raise ConfigError(msg)
    node[leaf] = value


def apply_overrides(data: dict, assignments: list[str], create: bool = False) -> dict:
    """``KEY=VALUE`` assignments (values parsed as YAML) applied to a raw params mapping, in place."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            msg = f"override '{assignment}': expected KEY=VALUE, e.g. train.epochs=40"
            raise ConfigError(msg)
        set_key(data, key, yaml.safe_load(raw), create)
    return data


def merge_params(base: dict, over: dict) -> dict:
    """``over`` laid over ``base`` section by section (a new dict; neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_params(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out
