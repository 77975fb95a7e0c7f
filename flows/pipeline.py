"""The whole pipeline as one Prefect flow (what `dvc repro` runs stage by stage): `python -m flows.pipeline`."""

from __future__ import annotations

from prefect import flow

from flows import synthesize
from flows.evaluate import evaluate_flow
from flows.fit_cada import fit_cada_flow
from flows.ingest import ingest_flow
from flows.train import train_flow


@flow(name="uniadc-pipeline")
def pipeline_flow(root: str = ".", params_path: str = "") -> dict:
    ingest_flow(root, params_path)
    synthesize.run(root, params_path)  # with the task runner synthesize.runner asks for
    train_flow(root, params_path)
    fit_cada_flow(root, params_path)
    return evaluate_flow(root, params_path)


if __name__ == "__main__":
    pipeline_flow()
