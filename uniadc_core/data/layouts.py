"""Dataset layouts: each a pure function from the ingest config to image records (nothing read but names)."""

from __future__ import annotations

from typing import Callable

from uniadc_core.config import IngestConfig
from uniadc_core.data.deeppcb import make_deeppcb_records
from uniadc_core.data.folder import make_folder_records
from uniadc_core.data.kolektorsdd import make_kolektorsdd_records
from uniadc_core.data.mtd import make_mtd_records
from uniadc_core.data.mvtec import make_mvtec_records
from uniadc_core.data.records import ImageRecord
from uniadc_core.decoding import DecodeOptions

# mask_values: auto means this for the layout: MTD's publishers binarise >= 128; KolektorSDD's palette masks hold 0/1
LAYOUT_MASK_VALUES = {"mtd": "threshold", "kolektorsdd": "nonzero"}


def decode_options(cfg: IngestConfig) -> DecodeOptions:
    """How every stage decodes this dataset's files (recorded in the vocabulary, then in the model)."""
    rule = LAYOUT_MASK_VALUES.get(cfg.kind, "auto") if cfg.mask_values == "auto" else cfg.mask_values
    return DecodeOptions(cfg.bit_depth, cfg.max_pixels, rule)


LAYOUTS: dict[str, Callable[[IngestConfig], list[ImageRecord]]] = {
    "demo": lambda cfg: make_mvtec_records(cfg.root),  # the demo tree is written in the MVTec layout
    "mvtec": lambda cfg: make_mvtec_records(cfg.root),
    "mtd": lambda cfg: make_mtd_records(cfg.root, cfg.mtd.object_class, cfg.mtd.train_list, cfg.mtd.test_normal_fraction, cfg.seed),
    "kolektorsdd": lambda cfg: make_kolektorsdd_records(cfg.root, cfg.kolektorsdd.object_class, cfg.kolektorsdd.folds,
                                                        cfg.kolektorsdd.test_fold, cfg.kolektorsdd.split_seed, decode_options(cfg)),
    "deeppcb": lambda cfg: make_deeppcb_records(cfg.root, cfg.deeppcb.object_class),
    "folder": lambda cfg: make_folder_records(cfg.root, cfg.folder.classes, cfg.folder.test_normal_fraction, cfg.seed),
}


def list_records(cfg: IngestConfig) -> list[ImageRecord]:
    if cfg.kind not in LAYOUTS:
        msg = f"unknown dataset layout '{cfg.kind}'; valid: {', '.join(sorted(LAYOUTS))}"
        raise ValueError(msg)
    return LAYOUTS[cfg.kind](cfg)
