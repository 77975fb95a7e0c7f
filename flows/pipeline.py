"""The whole pipeline as one Prefect flow (what `dvc repro` runs stage by stage): `python -m flows.pipeline`."""

from __future__ import annotations

from prefect import flow

from flows import paths
from flows.evaluate import evaluate_flow
from flows.fit_cada import fit_cada_flow
from flows.ingest import ingest_flow
from flows.synthesize import synthesize_flow
from flows.train import train_flow


@flow(name="uniadc-pipeline")
def pipeline_flow(params_path: str = paths.PARAMS) -> dict:
    ingest_flow(params_path)
    synthesize_flow(params_path)
    train_flow(params_path)
    fit_cada_flow(params_path)
    return evaluate_flow(params_path)


if __name__ == "__main__":
    pipeline_flow()
