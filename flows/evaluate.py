"""Evaluation and MLflow registration: `python -m flows.evaluate` (DVC stage `evaluate`)."""

from __future__ import annotations

from prefect import flow

from flows import paths
from tasks.evaluate import evaluate_models, track
from uniadc_core.config import load_params


@flow(name="evaluate")
def evaluate_flow(params_path: str = paths.PARAMS) -> dict:
    params = load_params(params_path)
    metrics = evaluate_models(paths.MANIFEST, paths.DISCRIMINATOR, paths.CADA, params.evaluate, paths.REPORTS)
    track(params, metrics, paths.REPORTS, paths.DISCRIMINATOR, paths.CADA)
    return metrics


if __name__ == "__main__":
    evaluate_flow()
