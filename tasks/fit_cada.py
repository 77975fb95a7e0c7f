from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.calibrate import fit
from uniadc_core.config import FitCadaConfig
from uniadc_core.datasets.manifest import read_manifest
from uniadc_core.model import load_model
from uniadc_core.synth.shards import read_samples


@task(name="fit-cada")
def fit_cada(manifest_path: str, synthetic_dir: str, model_dir: str, cfg: FitCadaConfig, out_dir: str) -> str:
    """Measure per-class normal statistics and fit the CADA regressor."""
    path = fit(load_model(model_dir), read_manifest(manifest_path), read_samples(synthetic_dir), cfg, out_dir)
    get_run_logger().info("fit_cada read %s, wrote %s", model_dir, path)
    return str(path)
