"""Ingest: `python -m flows.ingest` (DVC stage `ingest`)."""

from __future__ import annotations

from prefect import flow

from flows import paths
from tasks.ingest import ingest_dataset
from uniadc_core.config import load_params


@flow(name="ingest")
def ingest_flow(params_path: str = paths.PARAMS) -> tuple[str, str]:
    cfg = load_params(params_path).ingest
    return ingest_dataset(cfg, paths.PREPARED, paths.RAW)


if __name__ == "__main__":
    ingest_flow()
