"""Dataset layouts: each a pure function from a root folder to image records."""

from __future__ import annotations

from typing import Callable

from uniadc_core.datasets.manifest import ImageRecord
from uniadc_core.datasets.mvtec import make_mvtec_records

LAYOUTS: dict[str, Callable[..., list[ImageRecord]]] = {
    "demo": make_mvtec_records,  # the demo tree is written in the MVTec layout
    "mvtec": make_mvtec_records,
}


def get_layout(kind: str) -> Callable[..., list[ImageRecord]]:
    if kind not in LAYOUTS:
        msg = f"unknown dataset layout '{kind}'; valid: {', '.join(sorted(LAYOUTS))}"
        raise ValueError(msg)
    return LAYOUTS[kind]
