"""Dataset layouts: each a pure function from the ingest config to image records (nothing read but names)."""

from __future__ import annotations

from typing import Callable

from uniadc_core.config import IngestConfig
from uniadc_core.data.folder import make_folder_records
from uniadc_core.data.mtd import make_mtd_records
from uniadc_core.data.mvtec import make_mvtec_records
from uniadc_core.data.records import ImageRecord

LAYOUTS: dict[str, Callable[[IngestConfig], list[ImageRecord]]] = {
    "demo": lambda cfg: make_mvtec_records(cfg.root),  # the demo tree is written in the MVTec layout
    "mvtec": lambda cfg: make_mvtec_records(cfg.root),
    "mtd": lambda cfg: make_mtd_records(cfg.root, cfg.mtd.object_class, cfg.mtd.train_list, cfg.mtd.test_normal_fraction, cfg.seed),
    "folder": lambda cfg: make_folder_records(cfg.root, cfg.folder.classes, cfg.folder.test_normal_fraction, cfg.seed),
}


def list_records(cfg: IngestConfig) -> list[ImageRecord]:
    if cfg.kind not in LAYOUTS:
        msg = f"unknown dataset layout '{cfg.kind}'; valid: {', '.join(sorted(LAYOUTS))}"
        raise ValueError(msg)
    return LAYOUTS[cfg.kind](cfg)
