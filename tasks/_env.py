"""Defaults for running Prefect offline on a small machine; the caller's environment wins."""

import logging
import os

# the temporary local server needs more than Prefect's 20 s default to start on 2 cores (17-23 s seen on a fresh PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# library logs (uniadc_core uses plain logging) show up in flow-run logs
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "uniadc_core")
# ... and the library used outside a flow run (a notebook, a test) logs locally without a warning
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# at INFO: what a stage kept and resumed (shards, checkpoint epoch), the memory and threshold it fitted, per-class tables
if logging.getLogger("uniadc_core").level == logging.NOTSET:
    logging.getLogger("uniadc_core").setLevel(logging.INFO)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
