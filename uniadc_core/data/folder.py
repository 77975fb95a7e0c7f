"""A generic folder layout (like anomalib's Folder datamodule), per object class:

    normal:       folders of normal images (a seeded ``test_normal_fraction`` goes to test)
    normal_test:  optional folders of normal test images (then no normal is moved)
    defects:      defect type -> folder of anomalous (test) images
    masks:        defect type -> folder of masks, matched by stem (``<stem>.*`` or ``<stem>_mask.*``)

Paths are relative to the dataset root unless absolute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniadc_core.data.records import ImageRecord, list_files


def _dir(root: Path, sub: str, what: str) -> Path:
    path = Path(sub) if Path(sub).is_absolute() else root / sub
    if not path.is_dir():
        msg = f"{path}: {what} folder not found; fix ingest.folder in params.yaml"
        raise FileNotFoundError(msg)
    return path


def _mask_for(image: Path, folder: Path) -> Path | None:
    for name in (image.stem, f"{image.stem}_mask"):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def make_folder_records(root: str | Path, classes: dict, test_normal_fraction: float = 0.2, seed: int = 0) -> list[ImageRecord]:
    """``classes``: object class -> FolderClass config (normal, normal_test, defects, masks)."""
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: dataset root not found; set ingest.root in params.yaml"
        raise FileNotFoundError(msg)
    if not classes:
        msg = "ingest.folder.classes is empty; give each object class its normal and defect folders"
        raise ValueError(msg)
    records: list[ImageRecord] = []
    for ci, (cls, spec) in enumerate(sorted(classes.items())):
        unknown = sorted(set(spec.masks) - set(spec.defects))
        if unknown:
            msg = (f"ingest.folder.classes.{cls}.masks: unknown defect type(s) {unknown}; "
                   f"defect types come from 'defects': {', '.join(sorted(spec.defects)) or 'none'}")
            raise ValueError(msg)
        normals = [p for d in spec.normal for p in list_files(_dir(root, d, f"class '{cls}' normal"))]
        if spec.normal_test:
            test_normals = {p for d in spec.normal_test for p in list_files(_dir(root, d, f"class '{cls}' normal_test"))}
            normals += sorted(test_normals)
        else:
            order = np.random.default_rng([seed, ci]).permutation(len(normals))
            test_normals = {normals[i] for i in order[: int(round(test_normal_fraction * len(normals)))]}
        records += [ImageRecord(p, "test" if p in test_normals else "train", cls, None, None) for p in normals]
        for defect, sub in sorted(spec.defects.items()):
            mask_dir = _dir(root, spec.masks[defect], f"class '{cls}' mask") if defect in spec.masks else None
            for img in list_files(_dir(root, sub, f"class '{cls}' defect '{defect}'")):
                mask = _mask_for(img, mask_dir) if mask_dir else None
                records.append(ImageRecord(img, "test", cls, defect, mask))
    return records
