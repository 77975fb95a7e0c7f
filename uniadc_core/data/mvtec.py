"""The MVTec AD folder layout as a manifest (VisA converted to it reads the same way).

    <root>/<class>/train/good/*.png
    <root>/<class>/validation/good/*.png     (optional, MVTec 3D-AD / AD 2: normals held out for calibration)
    <root>/<class>/test/good/*.png
    <root>/<class>/test/<defect>/*.png
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

from pathlib import Path

from uniadc_core.data.records import ImageRecord, list_files


def make_mvtec_records(root: str | Path) -> list[ImageRecord]:
    """One record per image of an MVTec-layout tree; anomalies are paired with their masks."""
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: dataset root not found; set ingest.root in params.yaml to an MVTec-layout folder"
        raise FileNotFoundError(msg)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not classes:
        msg = f"{root}: no object class folders with a train/ subfolder (expected <root>/<class>/train/good/)"
        raise ValueError(msg)
    records: list[ImageRecord] = []
    for cls_dir in classes:
        cls = cls_dir.name
        good = cls_dir / "train" / "good"
        if not good.is_dir() or not list_files(good):
            msg = f"{good}: no normal training images; every class needs train/good/"
            raise ValueError(msg)
        records += [ImageRecord(p, "train", cls, None, None) for p in list_files(good)]
        validation = cls_dir / "validation" / "good"  # never trained on: extra held-out normals for the threshold
        if validation.is_dir():
            records += [ImageRecord(p, "validation", cls, None, None) for p in list_files(validation)]
        test = cls_dir / "test"
        if not test.is_dir():
            continue
        for sub in sorted(p for p in test.iterdir() if p.is_dir()):
            if sub.name == "good":
                records += [ImageRecord(p, "test", cls, None, None) for p in list_files(sub)]
                continue
            for img in list_files(sub):
                mask = cls_dir / "ground_truth" / sub.name / f"{img.stem}_mask.png"
                records.append(ImageRecord(img, "test", cls, sub.name, mask if mask.is_file() else None))
        gt = cls_dir / "ground_truth"
        if gt.is_dir():
            unknown = sorted(d.name for d in gt.iterdir() if d.is_dir() and not (test / d.name).is_dir())
            if unknown:
                msg = f"{gt}: mask folder(s) {unknown} have no test/<defect> image folder (unknown defect type); rename or remove them"
                raise ValueError(msg)
    return records
