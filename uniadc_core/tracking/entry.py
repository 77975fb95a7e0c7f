"""MLflow models-from-code entry: MLflow runs this file to build the pyfunc (no pickle involved)."""

import mlflow

from uniadc_core.tracking.registry import UniadcModel

mlflow.models.set_model(UniadcModel())
