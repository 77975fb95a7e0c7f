"""Evaluation and MLflow registration: `python -m flows.evaluate` (DVC stage `evaluate`)."""

from __future__ import annotations

from prefect import flow

from flows.layout import Layout
from tasks.evaluate import evaluate_models, track
from uniadc_core.config import load_params


@flow(name="evaluate")
def evaluate_flow(root: str = ".", params_path: str = "") -> dict:
    layout = Layout.at(root)
    params = load_params(params_path or layout.params)
    metrics = evaluate_models(str(layout.manifest), str(layout.models), params.evaluate, str(layout.reports), root)
    track(params, metrics, str(layout.reports), str(layout.models), str(layout.registration), root)
    return metrics


if __name__ == "__main__":
    evaluate_flow()
