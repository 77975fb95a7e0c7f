from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from uniadc_core.cada import load_cada
from uniadc_core.config import EvaluateConfig, Params, flatten
from uniadc_core.datasets.manifest import read_manifest
from uniadc_core.evaluate import evaluate
from uniadc_core.model import load_model


@task(name="evaluate")
def evaluate_models(manifest_path: str, model_dir: str, cada_dir: str, cfg: EvaluateConfig, out_dir: str) -> dict:
    """Test-set metrics, per-class table and plots."""
    metrics = evaluate(load_model(model_dir), load_cada(cada_dir), read_manifest(manifest_path), cfg, out_dir)
    get_run_logger().info("evaluate wrote %s/metrics.json: %s", out_dir, metrics)
    return metrics


@task(name="track-mlflow", retries=2, retry_delay_seconds=[2, 5])
def track(params: Params, metrics: dict, report_dir: str, model_dir: str, cada_dir: str) -> dict:
    """Log params, metrics, plots and the model to MLflow; register it as the challenger."""
    from uniadc_core.tracking import log_run, tracking_uri

    cfg = params.evaluate.mlflow
    uri = tracking_uri(cfg.tracking_uri)
    result = log_run(
        uri=uri,
        experiment=cfg.experiment,
        params=flatten(dataclasses.asdict(params)),
        metrics=metrics,
        artifact_dirs=[Path(report_dir)],
        model_dir=Path(model_dir),
        cada_dir=Path(cada_dir),
        threshold=metrics["threshold"],
        registered_model=cfg.registered_model if cfg.register else None,
    )
    get_run_logger().info("MLflow %s: run %s, model version %s", uri, result["run_id"], result["version"])
    return result
