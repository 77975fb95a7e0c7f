"""Prefect tasks: thin wrappers over uniadc_core with retries on I/O edges and logging."""

from tasks import _env  # noqa: F401  (environment defaults before Prefect is imported)


def retry_on_io(task, task_run, state) -> bool:
    """Prefect retry condition: retry I/O failures (files, network, the tracking server), not bad input."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001  (a ValueError and the like: retrying cannot help)
        return False
    return False
