"""Tracking: MLflow runs and the model registry (``registry``, the only module that imports MLflow),
and the promotion rules (``promotion``, plain Python)."""

from uniadc_core.tracking.registry import (
    UniadcModel,
    alias_version,
    input_key,
    load_detector,
    load_pyfunc,
    log_run,
    predict_paths,
    provenance_tags,
    record_decision,
    rollback_champion,
    tracking_uri,
)

__all__ = ["UniadcModel", "alias_version", "input_key", "load_detector", "load_pyfunc", "log_run", "predict_paths",
           "provenance_tags", "record_decision", "rollback_champion", "tracking_uri"]
