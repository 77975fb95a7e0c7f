"""Ingest: `python -m flows.ingest` (DVC stage `ingest`)."""

from __future__ import annotations

import dataclasses

from prefect import flow

from flows.layout import Layout
from tasks.ingest import ingest_dataset
from uniadc_core.config import load_params


@flow(name="ingest")
def ingest_flow(root: str = ".", params_path: str = "") -> tuple[str, str]:
    layout = Layout.at(root)
    cfg = load_params(params_path or layout.params).ingest
    sources = [dataclasses.replace(s, root=str(layout.resolve(s.root))) for s in cfg.sources]
    cfg = dataclasses.replace(cfg, root=str(layout.resolve(cfg.root)), sources=sources)  # relative dataset roots are under the repository
    return ingest_dataset(cfg, str(layout.prepared), str(layout.raw))


if __name__ == "__main__":
    ingest_flow()
