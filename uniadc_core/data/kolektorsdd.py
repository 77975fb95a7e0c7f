"""The KolektorSDD layout (commutator surfaces, cracks) as image records.

    <root>/kosNN/PartK.jpg          surface image K of item (commutator) NN
    <root>/kosNN/PartK_label.bmp    its mask, same size: all 0 = a normal image, else a crack

The publishers' masks are palette BMPs whose raw values are 0/1 (read with ``mask_values: auto``,
which is ``nonzero`` for this layout). A normal image is one whose mask marks no defect pixel; an
image without a mask file is normal too. One defect type, ``crack``.

The split is by item, never by image: the items are dealt at random (``split_seed``) into
``folds`` folds and fold ``test_fold`` is the test side, as in the publishers' 3-fold
cross-validation. Byte-identical images are kept once (the first in path order), and items that
share an image are one unit of the split, so a copy of a test image is never trained on. A
defective image of a training item is a training anomaly: a candidate anomaly shot, never a test
image. Each record names its item (``group``), so the normals held out for calibration are whole items too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from uniadc_core.data.records import ImageRecord, list_files
from uniadc_core.decoding import DecodeOptions, defect_pixels, load
from uniadc_core.io import sha256_file

log = logging.getLogger(__name__)

DEFECT = "crack"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MASK_SUFFIX = "_label"


def _items(root: Path) -> dict[str, list[Path]]:
    items = {}
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        images = [p for p in list_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(MASK_SUFFIX)]
        if images:
            items[folder.name] = images
    return items


def _mask_of(image: Path) -> Path | None:
    for suffix in (".bmp", ".png", ".tif", ".tiff"):
        candidate = image.with_name(f"{image.stem}{MASK_SUFFIX}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _groups(items: dict[str, list[Path]]) -> tuple[list[list[str]], set[Path]]:
    """(items grouped where they share an image, duplicate images to leave out)."""
    parent = {name: name for name in items}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[str, tuple[str, Path]] = {}
    duplicates: set[Path] = set()
    for name, images in items.items():
        for img in images:
            digest = sha256_file(img)
            if digest in first:
                other, kept = first[digest]
                duplicates.add(img)
                parent[find(name)] = find(other)
                log.info("kolektorsdd: %s is byte-identical to %s: kept once, %s and %s on one side of the split", img, kept, name, other)
            else:
                first[digest] = (name, img)
    groups: dict[str, list[str]] = {}
    for name in items:
        groups.setdefault(find(name), []).append(name)
    return sorted(groups.values()), duplicates


def make_kolektorsdd_records(root: str | Path, object_class: str = "commutator", folds: int = 3, test_fold: int = 0,
                             split_seed: int = 0, options: DecodeOptions | None = None) -> list[ImageRecord]:
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: dataset root not found; set ingest.root in params.yaml to a KolektorSDD folder (kosNN/ item folders)"
        raise FileNotFoundError(msg)
    if not 0 <= test_fold < folds:
        msg = f"ingest.kolektorsdd.test_fold is {test_fold}; it must be in 0..{folds - 1} (ingest.kolektorsdd.folds: {folds})"
        raise ValueError(msg)
    items = _items(root)
    if not items:
        msg = f"{root}: no item folders with images; a KolektorSDD tree has kosNN/PartK.jpg + PartK_label.bmp"
        raise ValueError(msg)
    groups, duplicates = _groups(items)
    if len(groups) < folds:
        msg = f"{root}: {len(groups)} independent item(s), too few for ingest.kolektorsdd.folds: {folds}; lower folds"
        raise ValueError(msg)
    order = np.random.default_rng(split_seed).permutation(len(groups))
    test_items = {name for rank, g in enumerate(order) if rank % folds == test_fold for name in groups[g]}
    group_of = {name: "+".join(g) for g in groups for name in g}  # kos01 and kos26 (shared images) are one item
    options = options or DecodeOptions(mask_values="nonzero")
    records = []
    for name, images in items.items():
        split = "test" if name in test_items else "train"
        for img in images:
            if img in duplicates:
                continue
            mask = _mask_of(img)
            defective = False
            if mask is not None:
                try:
                    defective = bool(defect_pixels(load(mask, "mask", options), options.mask_values).any())
                except ValueError:  # an unreadable mask: kept as an anomaly so validation names the file
                    defective = True
            records.append(ImageRecord(img, split, object_class, DEFECT if defective else None, mask if defective else None,
                                       group=group_of[name]))
    return records
