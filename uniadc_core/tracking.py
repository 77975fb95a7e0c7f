"""MLflow tracking and registry: the one module of uniadc_core that touches MLflow.

The logged model is a pyfunc built from code (``uniadc_core/mlflow_entry.py``), not a pickle:
its artifacts are the discriminator and CADA directories (safetensors + JSON) and
``detector.json`` (the decision threshold). ``models:/<name>@challenger`` loads it back.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from uniadc_core.io import load_image, read_json, write_json  # noqa: E402

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("mlflow_entry.py")
OUTPUT_COLUMNS = ["score", "raw_score", "is_anomaly", "defect_type", "defect_prob"]


def tracking_uri(default: str) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the params default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default


class UniadcModel(mlflow.pyfunc.PythonModel):
    """Scores images with no class label: input a DataFrame with a ``path`` column."""

    def load_context(self, context) -> None:
        from uniadc_core.inference import Detector

        threshold = read_json(context.artifacts["detector"])["threshold"]
        self.detector = Detector.load(context.artifacts["discriminator"], context.artifacts["cada"], threshold)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "path" not in model_input.columns:
            msg = f"input needs a 'path' column of image files; got columns {list(model_input.columns)}"
            raise ValueError(msg)
        images = [load_image(p) for p in model_input["path"]]
        d = self.detector.detect(images)
        return pd.DataFrame({
            "score": d.score, "raw_score": d.raw_score, "is_anomaly": d.is_anomaly,
            "defect_type": d.defect_type, "defect_prob": d.defect_prob,
        })


def log_run(
    uri: str,
    experiment: str,
    params: dict,
    metrics: dict[str, float],
    artifact_dirs: list[Path],
    model_dir: Path,
    cada_dir: Path,
    threshold: float,
    registered_model: str | None,
    alias: str = "challenger",
    tags: dict[str, str] | None = None,
) -> dict:
    """Log one evaluation run; register the model and point ``alias`` at the new version."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        if tags:
            mlflow.set_tags(tags)
        history = model_dir / "history.json"
        if history.is_file():
            for rec in read_json(history):
                mlflow.log_metrics({k: float(v) for k, v in rec.items() if k not in ("epoch", "best") and isinstance(v, (int, float))}, step=rec["epoch"])
        for d in artifact_dirs:
            mlflow.log_artifacts(str(d), artifact_path=d.name)
        detector = Path(tmp) / "detector.json"
        write_json(detector, {"threshold": threshold})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"discriminator": str(model_dir), "cada": str(cada_dir), "detector": str(detector)},
            pip_requirements=["uniadc", "torch", "safetensors", "numpy", "pandas", "pillow"],
            registered_model_name=registered_model or None,
        )
        result = {"run_id": run.info.run_id, "model_uri": info.model_uri, "version": None}
    if registered_model:
        version = str(info.registered_model_version)
        client = MlflowClient(uri)
        client.set_registered_model_alias(registered_model, alias, version)
        for k in ("image_auroc_cada", "type_accuracy_cada", "pixel_auroc_cada"):
            if metrics.get(k) is not None:
                client.set_model_version_tag(registered_model, version, k, f"{metrics[k]:.4f}")
        result["version"] = version
        log.info("MLflow: registered %s version %s as @%s (run %s, %s)", registered_model, version, alias, run.info.run_id, uri)
    return result


HISTORY_TAG = "uniadc.champion_history"  # registered-model tag: champion versions, oldest first


def alias_version(uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_detector(uri: str, name: str, version: str):
    """The ``Detector`` (discriminator + CADA + threshold) of a registered version."""
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().detector


def record_decision(uri: str, name: str, challenger: str, champion: str | None, promote: bool, tags: dict[str, str]) -> None:
    """Tag both versions with the decision and its figures; on promotion move ``@champion`` and extend the history."""
    client = MlflowClient(uri)
    challenger, champion = str(challenger), (str(champion) if champion is not None else None)
    for version in filter(None, (challenger, champion)):
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_model_version_tag(name, version, "promotion.challenger_version", challenger)
        client.set_model_version_tag(name, version, "promotion.champion_version", champion or "none")
    if promote:
        client.set_registered_model_alias(name, "champion", challenger)
        history = [v for v in (client.get_registered_model(name).tags.get(HISTORY_TAG) or "").split(",") if v]
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*history, challenger]))
        log.info("MLflow: %s version %s is now @champion (was %s)", name, challenger, champion or "none")


def rollback_champion(uri: str, name: str) -> str:
    """Point ``@champion`` back at the previous champion; returns that version."""
    client = MlflowClient(uri)
    history = [v for v in (client.get_registered_model(name).tags.get(HISTORY_TAG) or "").split(",") if v]
    if len(history) < 2:
        msg = f"{name}: no earlier champion to roll back to (champion history: {history or 'empty'})"
        raise ValueError(msg)
    current, previous = history[-1], history[-2]
    client.set_registered_model_alias(name, "champion", previous)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))
    client.set_model_version_tag(name, current, "promotion.decision", f"rolled back to version {previous}")
    log.info("MLflow: %s @champion rolled back from version %s to %s", name, current, previous)
    return previous


def load_pyfunc(model_uri: str, uri: str | None = None):
    """Load a logged or registered model, e.g. ``models:/uniadc-discriminator@champion``."""
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def predict_paths(model, paths: list[str]) -> pd.DataFrame:
    return model.predict(pd.DataFrame({"path": [str(p) for p in paths]}))


__all__ = ["UniadcModel", "alias_version", "load_detector", "load_pyfunc", "log_run", "predict_paths", "record_decision",
           "rollback_champion", "tracking_uri"]
