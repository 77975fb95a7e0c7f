"""The synthesizer registry: a backend name -> a function from sample specs to shard rows.

    rows = get_synthesizer("procedural")(specs, vocab, cfg)

A new backend is one function with that signature, registered with ``register_synthesizer``.
"""

from __future__ import annotations

from collections.abc import Callable

from uniadc_core.synthesis import diffusion, procedural

MakeRows = Callable[..., list[dict]]  # (specs, vocab, SynthesizeConfig, progress=False, label="") -> rows

SYNTHESIZERS: dict[str, MakeRows] = {"procedural": procedural.make_rows, "diffusion": diffusion.make_rows}


def register_synthesizer(name: str, make_rows: MakeRows) -> None:
    SYNTHESIZERS[name] = make_rows


def get_synthesizer(name: str) -> MakeRows:
    if name not in SYNTHESIZERS:
        msg = f"unknown synthesizer '{name}'; valid: {', '.join(SYNTHESIZERS)} (synthesize.backend)"
        raise ValueError(msg)
    return SYNTHESIZERS[name]
