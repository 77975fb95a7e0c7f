"""Checks every image record before anything is written: each problem names the file and the fix.

With ``on_error: fail`` (the default) any problem stops ingest; with ``skip`` the bad files are
left out and listed in a quarantine report.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from uniadc_core.data.records import ImageRecord, main_type
from uniadc_core.decoding import DEFAULT, DecodeOptions, ImageTooLarge, defect_pixels
from uniadc_core.io import load_image, sha256_file

MIN_SIDE = 16  # px: smaller images cannot hold a defect worth finding


class Problem(NamedTuple):
    path: str
    reason: str


class Checked(NamedTuple):
    record: ImageRecord  # its boxes clipped to the image
    image_id: str
    width: int
    height: int


def clip_boxes(boxes, width: int, height: int) -> tuple[tuple, str | None]:
    """(the boxes cut to the image, a problem naming the first box wholly outside it or empty, or None)."""
    kept = []
    for i, (x1, y1, x2, y2, t) in enumerate(boxes, 1):
        cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(width - 1, x2), min(height - 1, y2)
        if cx1 > cx2 or cy1 > cy2:
            return (), (f"box {i} ({x1} {y1} {x2} {y2}, {t}) lies outside the {width}x{height} image; "
                        f"fix its annotation line (x1 y1 x2 y2 in pixels, inside the image)")
        kept.append((cx1, cy1, cx2, cy2, t))
    return tuple(kept), None


class DatasetError(ValueError):
    """One or more bad inputs; the message lists each with its fix."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"  {p.path}: {p.reason}" for p in problems[:20]]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        msg = (f"{len(problems)} bad input file(s); fix or remove them, or set ingest.on_error: skip "
               f"to leave them out (they are then listed in data/prepared/quarantine.csv):\n" + "\n".join(lines) + more)
        super().__init__(msg)


def _open(path: Path, what: str, options: DecodeOptions) -> tuple[tuple[int, int], np.ndarray | None, str | None]:
    """((width, height), pixels for masks, problem) of a file fully decoded by the one decoder every stage uses
    (oriented by its EXIF tag, as a viewer shows it), so what passes here is what training reads."""
    if path.stat().st_size == 0:
        return (0, 0), None, f"empty {what} file (0 bytes); replace it or remove it"
    try:
        arr = load_image(path, mode="mask" if what == "mask" else "L", options=options)  # a full decode: truncated files fail here
    except ImageTooLarge as exc:
        return (0, 0), None, str(exc).removeprefix(f"{path}: ")
    except ValueError as exc:
        reason = str(exc).removeprefix(f"{path}: ").removesuffix("; replace or remove the file")
        return (0, 0), None, f"not a readable {what} ({reason}); replace it with a valid image or remove it"
    return (arr.shape[1], arr.shape[0]), arr if what == "mask" else None, None


def check_records(records: list[ImageRecord], allow_missing_masks: bool = False,
                  options: DecodeOptions = DEFAULT) -> tuple[list[Checked], list[Problem]]:
    """Decode every image and mask, pair them, find duplicates; returns (good records, problems)."""
    good: list[Checked] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for r in tqdm(records, desc="validate", unit="img", leave=False):
        (w, h), _, problem = _open(r.path, "image", options)
        if problem is None and min(w, h) < MIN_SIDE:
            problem = f"image is {w}x{h}; images need at least {MIN_SIDE} px a side"
        if problem is None and r.boxes:
            clipped, problem = clip_boxes(r.boxes, w, h)
            if problem is None:  # the type of most area, of what lies in the image
                r = r._replace(boxes=clipped, defect_type=main_type(clipped))
        elif problem is None and r.defect_type is not None:
            if r.mask_path is None:
                if not allow_missing_masks:
                    problem = ("anomaly image without a mask; add its mask, or set ingest.allow_missing_masks: true "
                               "(it is then left out of pixel metrics)")
            else:
                (mw, mh), mask, mask_problem = _open(r.mask_path, "mask", options)
                if mask_problem is not None:
                    problems.append(Problem(str(r.mask_path), mask_problem))
                    problem = f"its mask {r.mask_path} is unreadable"
                elif (mw, mh) != (w, h):
                    problem = f"mask {r.mask_path} is {mw}x{mh} but the image is {w}x{h}; masks must match their image"
                elif not defect_pixels(mask, options.mask_values).any():
                    if allow_missing_masks:  # kept as an anomaly whose pixels are unknown
                        r = r._replace(mask_path=None)
                    else:
                        present = np.unique(mask)
                        values = ", ".join(str(v) for v in present[:8]) + (", ..." if len(present) > 8 else "")
                        problem = (f"mask {r.mask_path} marks no defect pixel under ingest.mask_values: {options.mask_values} "
                                   f"(its values: {values}); fix the mask or choose the rule (threshold: >= 128, nonzero: > 0), "
                                   f"or set ingest.allow_missing_masks: true to keep the image without pixel truth")
        if problem is None:
            image_id = sha256_file(r.path)[:16]
            if image_id in seen:
                problem = f"same content as {seen[image_id]}; remove one of the duplicates"
            else:
                seen[image_id] = r.path
                good.append(Checked(r, image_id, w, h))
        if problem is not None:
            problems.append(Problem(str(r.path), problem))
    return good, problems


def check_classes(good: list[Checked]) -> None:
    """Every object class needs normal training images (fatal in any on_error mode)."""
    classes = {c.record.object_class for c in good}
    with_normals = {c.record.object_class for c in good if c.record.split == "train" and c.record.defect_type is None}
    empty = sorted(classes - with_normals)
    if empty:
        msg = f"object class(es) {empty} have no usable normal training images; add normal images for them or remove the class"
        raise ValueError(msg)
    if not good:
        msg = "no usable images found; check ingest.root and ingest.kind"
        raise ValueError(msg)
