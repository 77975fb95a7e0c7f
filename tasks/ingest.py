from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.config import IngestConfig
from uniadc_core.data.ingest import ingest


@task(name="ingest")
def ingest_dataset(cfg: IngestConfig, out_dir: str, raw_dir: str) -> tuple[str, str]:
    """Build the manifest and vocabulary; return their paths."""
    result = ingest(cfg, out_dir, raw_dir)
    get_run_logger().info("ingest read %s (%s layout), wrote %s and %s", cfg.root, cfg.kind, result.manifest_path, result.vocabulary_path)
    return str(result.manifest_path), str(result.vocabulary_path)
