from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from uniadc_core.config import EvaluateConfig, Params, flatten
from uniadc_core.data.manifest import read_manifest
from uniadc_core.evaluation.evaluate import evaluate
from uniadc_core.io import write_json
from uniadc_core.serving.detector import Detector


@task(name="evaluate")
def evaluate_models(manifest_path: str, models_dir: str, cfg: EvaluateConfig, out_dir: str, root: str = ".") -> dict:
    """Test-set metrics, per-class table and plots, decided as `uniadc predict` decides."""
    metrics = evaluate(Detector.load(models_dir), read_manifest(manifest_path, root), cfg, out_dir)
    get_run_logger().info("evaluate wrote %s/metrics.json: %s", out_dir, metrics)
    return metrics


@task(name="track-mlflow", retries=2, retry_delay_seconds=[2, 5])
def track(params: Params, metrics: dict, report_dir: str, models_dir: str, record: str, root: str = ".") -> dict:
    """Log params, metrics, plots and the model to MLflow; register it as the challenger. ``record``: a JSON file that
    says which run and version (dvc.yaml: why it is a persistent output)."""
    from uniadc_core.tracking import log_run, provenance_tags, tracking_uri

    cfg = params.evaluate.mlflow
    uri = tracking_uri(cfg.tracking_uri, root)
    result = log_run(
        uri=uri,
        experiment=cfg.experiment,
        params=flatten(dataclasses.asdict(params)),
        metrics=metrics,
        artifact_dirs=[Path(report_dir)],
        models_dir=Path(models_dir),
        registered_model=cfg.registered_model if cfg.register else None,
        tags=provenance_tags(root),
    )
    get_run_logger().info("MLflow %s: run %s, model version %s", uri, result["run_id"], result["version"])
    write_json(record, {"tracking_uri": uri, "registered_model": cfg.registered_model if cfg.register else None,
                        "alias": "challenger", **result})
    return result
