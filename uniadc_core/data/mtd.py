"""The Magnetic Tile Defect (MTD) layout as image records.

    <root>/MT_Free/Imgs/*.jpg (+ same-stem .png mask)   defect-free tiles
    <root>/MT_<Type>/Imgs/*.jpg + <stem>.png             defect type <type> (lower case)
    <root>/train_normals.txt                             optional: the standard train split (file names)

Masks are soft-edged 8-bit images, binarised at >= 128 when read. Without ``train_normals.txt``
a seeded ``test_normal_fraction`` of the normals becomes test data. A root whose sub-folders are
themselves MTD trees gives one object class per sub-folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniadc_core.data.records import ImageRecord, list_files

NORMAL = "MT_Free"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}  # .png is the mask beside each image


def _is_mtd(root: Path) -> bool:
    return (root / NORMAL).is_dir()


def _images(folder: Path) -> list[Path]:
    sub = folder / "Imgs" if (folder / "Imgs").is_dir() else folder
    return [p for p in list_files(sub) if p.suffix.lower() in IMAGE_SUFFIXES]


def _one_class(root: Path, object_class: str, train_list: str, test_normal_fraction: float, seed: int) -> list[ImageRecord]:
    normals = _images(root / NORMAL)
    listed = root / train_list
    if listed.is_file():
        names = {line.strip() for line in listed.read_text().splitlines() if line.strip()}
        unknown = sorted(names - {p.name for p in normals})
        if unknown:
            msg = f"{listed}: lists {len(unknown)} file(s) not in {root / NORMAL}/Imgs, e.g. {unknown[:3]}; fix the list or the folder"
            raise ValueError(msg)
        train = {p for p in normals if p.name in names}
    else:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(normals))
        n_test = int(round(test_normal_fraction * len(normals)))
        train = {normals[i] for i in order[n_test:]}
    records = [ImageRecord(p, "train" if p in train else "test", object_class, None, None) for p in normals]
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("MT_") and d.name != NORMAL):
        defect = folder.name[3:].lower()
        for img in _images(folder):
            mask = img.with_suffix(".png")
            records.append(ImageRecord(img, "test", object_class, defect, mask if mask.is_file() else None))
    return records


def make_mtd_records(root: str | Path, object_class: str = "magnetic_tile", train_list: str = "train_normals.txt",
                     test_normal_fraction: float = 0.1, seed: int = 0) -> list[ImageRecord]:
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: dataset root not found; set ingest.root in params.yaml to an MTD folder (with MT_Free/)"
        raise FileNotFoundError(msg)
    if _is_mtd(root):
        return _one_class(root, object_class, train_list, test_normal_fraction, seed)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and _is_mtd(d))
    if not classes:
        msg = f"{root}: no {NORMAL}/ folder here or in its sub-folders; an MTD tree has MT_Free/ and MT_<Type>/ folders"
        raise ValueError(msg)
    return [r for d in classes for r in _one_class(d, d.name, train_list, test_normal_fraction, seed)]
