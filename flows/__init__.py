"""Prefect flows: one per DVC stage (``python -m flows.<stage>``), plus the whole pipeline."""

from tasks import _env  # noqa: F401  (environment defaults before Prefect is imported)
