"""The detector's score terms: one anomaly map from the maps of several scorers, and one image score from it.

    amap = fuse(maps, terms)          # (B, H, W): sum of weight * (map - mean) / std over the terms
    score = image_score(amap)         # (B,): the map's maximum after SCORE_POOL x SCORE_POOL averaging

A term is a scorer's map (``discriminator``: the type head's anomaly log-odds; ``memory``: the distance of each
patch to the nearest normal patch) with a standardiser fitted on held-out normal pixels and a weight. A model
with one term keeps it in its own units (the identity standardiser: the discriminator's log-odds, whose 0 is
even odds); with several, ``fit_terms`` measures each map's mean and spread over the same held-out normal
pixels, so no term wins the sum by its scale. The image score is pooled from the fused map, so the map and
the score always agree, and each standardiser is applied to the map it was measured on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TERMS = ("discriminator", "memory")  # the scorers a term can name
SCORE_POOL = 7  # the image score is the fused map's maximum after averaging over SCORE_POOL x SCORE_POOL windows
EVEN_ODDS_Z = 3.0  # in a standardised map, a value this far above the held-out normal pixels' mean counts as even odds


@dataclass(frozen=True)
class Term:
    """One score term: which scorer's map, its share of the anomaly map, and its standardiser."""

    name: str  # one of TERMS
    weight: float  # share of the fused map (the weights of a model sum to 1)
    mean: float = 0.0  # of the scorer's map over held-out normal pixels (identity: 0)
    std: float = 1.0  # (identity: 1)
    pixels: int = 0  # held-out normal pixels the standardiser was fitted on (0: not fitted, the identity)

    def __post_init__(self):
        if self.name not in TERMS:
            msg = f"unknown score term '{self.name}'; valid: {', '.join(TERMS)}"
            raise ValueError(msg)
        if not self.std > 0:
            msg = f"score term '{self.name}': std must be positive, got {self.std}"
            raise ValueError(msg)


DISCRIMINATOR_ONLY = (Term("discriminator", 1.0),)


def memory_terms(weight: float) -> tuple[Term, Term]:
    """The two terms of a model with a normal memory of share ``weight`` (not yet fitted)."""
    return Term("discriminator", 1.0 - weight), Term("memory", weight)


def as_terms(records: Iterable[Term | dict]) -> tuple[Term, ...]:
    """Terms from their config.json records (dicts) or as they are; at least one, each named once."""
    terms = tuple(r if isinstance(r, Term) else Term(**r) for r in records)
    names = [t.name for t in terms]
    if not terms or len(set(names)) != len(names):
        msg = f"score terms {names}: expected at least one, each named once"
        raise ValueError(msg)
    return terms


def standardised(terms: Iterable[Term]) -> bool:
    """True when the fused map is in z-units (standardisers fitted), False when it is a lone term's own units."""
    return any(t.pixels for t in terms)


def even_odds(terms: Iterable[Term]) -> float:
    """The fused map's value that counts as even odds of a defect: 0 in log-odds units, ``EVEN_ODDS_Z`` in z-units."""
    return EVEN_ODDS_Z if standardised(terms) else 0.0


def fuse(maps: dict[str, torch.Tensor], terms: Iterable[Term]) -> torch.Tensor:
    """(B, H, W) anomaly map: the weighted sum of the terms' standardised maps (``maps``: name -> (B, H, W))."""
    terms = list(terms)
    if len(terms) == 1 and not terms[0].pixels and terms[0].weight == 1.0:
        return maps[terms[0].name]  # the identity: a lone term in its own units
    missing = [t.name for t in terms if t.name not in maps]
    if missing:
        msg = f"score terms {missing} have no map (maps given: {sorted(maps)}); save the model folder whole"
        raise ValueError(msg)
    parts = [t.weight * (maps[t.name] - t.mean) / t.std for t in terms]
    return sum(parts[1:], parts[0])


def image_score(amap: torch.Tensor) -> torch.Tensor:
    """(B,) image scores of (B, H, W) anomaly maps: the maximum after ``SCORE_POOL`` window averaging (one
    confident pixel alone is noise)."""
    pooled = F.avg_pool2d(amap[:, None], SCORE_POOL, stride=1, padding=SCORE_POOL // 2, count_include_pad=False)
    return pooled.flatten(1).max(1).values


def fit_terms(terms: Iterable[Term], batches: Iterable[dict[str, torch.Tensor]]) -> tuple[Term, ...]:
    """``terms`` with their standardisers fitted: each scorer's mean and standard deviation (at least 1e-6) over
    every pixel of ``batches`` (held-out normals' maps: name -> (B, H, W)), in one pass, summed in float64.
    A lone term keeps the identity (``fuse`` returns its map as it is)."""
    terms = tuple(terms)
    if len(terms) < 2:
        return terms
    sums = {t.name: [0, 0.0, 0.0] for t in terms}  # count, sum, sum of squares
    for maps in batches:
        for t in terms:
            m = maps[t.name].double()
            s = sums[t.name]
            s[0] += m.numel()
            s[1] += float(m.sum())
            s[2] += float((m * m).sum())
    fitted = []
    for t in terms:
        n, total, total_sq = sums[t.name]
        if n == 0:
            msg = "score terms: no held-out normal pixels to fit the standardisers on"
            raise ValueError(msg)
        mean = total / n
        std = max(math.sqrt(max(total_sq / n - mean * mean, 0.0)), 1e-6)
        fitted.append(Term(t.name, t.weight, mean, std, n))
    return tuple(fitted)
