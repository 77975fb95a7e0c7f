"""uniadc core library: anomaly synthesis, the multi-task discriminator, CADA and metrics.

A plain library: no Prefect, no DVC; MLflow is touched only in ``uniadc_core.tracking``.
"""

__version__ = "0.1.0"
