"""Prefect tasks: thin wrappers over uniadc_core with retries on I/O edges and logging."""

from tasks import _env  # noqa: F401  (environment defaults before Prefect is imported)
