"""What a dataset layout returns: one record per image file, before any validation."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class ImageRecord(NamedTuple):
    path: Path
    split: str  # train | test | validation (normals a layout sets aside: held out for calibration, never trained on)
    object_class: str
    defect_type: str | None  # None for normal
    mask_path: Path | None
    # typed boxes (x1, y1, x2, y2, defect type) in pixels, corners included, where a layout has boxes, not masks:
    # ingest draws them into a label map (one defect index per pixel); defect_type is then the type of most area
    boxes: tuple[tuple[int, int, int, int, str], ...] = ()
    # the physical item the image shows where a layout has several images of one (None: an item of its own):
    # the normals held out for calibration are drawn by whole items, so none shares an item with a training shot
    group: str | None = None


def list_files(folder: Path) -> list[Path]:
    """Every visible file of a folder, sorted (not only image suffixes: validation reports the ones that are not images)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def main_type(boxes) -> str:
    """The type covering most box area (ties: the first in name order)."""
    area: dict[str, int] = {}
    for x1, y1, x2, y2, t in boxes:
        area[t] = area.get(t, 0) + (x2 - x1 + 1) * (y2 - y1 + 1)
    return min(area, key=lambda t: (-area[t], t))
