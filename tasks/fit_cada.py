from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.cada.fit import fit
from uniadc_core.config import FitCadaConfig
from uniadc_core.data.manifest import read_manifest
from uniadc_core.data.shards import read_samples
from uniadc_core.model.discriminator import load_model


@task(name="fit-cada")
def fit_cada(manifest_path: str, synthetic_dir: str, model_dir: str, cfg: FitCadaConfig, out_dir: str, root: str = ".") -> str:
    """Measure per-class normal statistics, fit the CADA regressor, save it with the decision threshold."""
    path = fit(load_model(model_dir), read_manifest(manifest_path, root), read_samples(synthetic_dir), cfg, out_dir)
    get_run_logger().info("fit_cada read %s, wrote %s", model_dir, path)
    return str(path)
