"""MLflow tracking and registry: the one module of uniadc_core that touches MLflow.

Every call takes the tracking URI and reaches MLflow through an ``MlflowClient`` built from it;
nothing sets MLflow's process-wide tracking URI. The logged model is a pyfunc built from code
(``uniadc_core/tracking/entry.py``), not a pickle: its artifacts are the models folder's
``discriminator/`` and ``cada/`` (safetensors + JSON, the threshold included), so a registered
version decides exactly as the folder it was logged from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from uniadc_core.io import read_json, sha256_file, timings_path  # noqa: E402

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("entry.py")
HISTORY_TAG = "uniadc.champion_history"  # registered-model tag: champion versions, oldest first
INPUT_KEY_TAG = "uniadc.input_key"  # run tag: input_key() of what the run was made from
PIP_REQUIREMENTS = ["uniadc", "torch", "safetensors", "numpy", "pandas", "pillow"]


def tracking_uri(default: str, root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` wins over the params default; a relative SQLite file is taken from ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute() and Path(root) != Path("."):
        uri = prefix + str((Path(root) / uri[len(prefix):]).resolve())
    return uri


OUTPUT_COLUMNS = ["score", "raw_score", "is_anomaly", "defect_type", "defect_prob", "threshold", "regions", "error"]


def signature():
    """What the pyfunc takes and gives: a ``path`` or an ``image`` (base64 of the file's bytes) per row; one row out per
    row in, the regions as a JSON list, an unreadable image as a row with its ``error``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", "path", required=False), ColSpec("string", "image", required=False)])
    types = {"score": "double", "raw_score": "double", "is_anomaly": "boolean", "defect_prob": "double", "threshold": "double"}
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(types.get(c, "string"), c) for c in OUTPUT_COLUMNS]))


def input_example() -> pd.DataFrame:
    """What a request looks like, saved with the model (``input_example.json``): one 8 x 8 gray PNG in base64."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")]})


class UniadcModel(mlflow.pyfunc.PythonModel):
    """Scores images with no class label: input a DataFrame with a ``path`` column of image files, or an ``image``
    column of their bytes in base64 (what ``mlflow models serve`` receives over HTTP)."""

    def load_context(self, context) -> None:
        from uniadc_core.cada.regressor import load_cada
        from uniadc_core.model.discriminator import load_model
        from uniadc_core.serving.detector import Detector

        self.detector = Detector(load_model(context.artifacts["discriminator"]), load_cada(context.artifacts["cada"]))

    def _decode(self, n: int, record: dict):
        pre = self.detector.preprocess
        image = record.get("image")
        if isinstance(image, str) and image:
            try:
                data = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                msg = f"row {n}: 'image' is not base64; send base64.b64encode(file bytes).decode()"
                raise ValueError(msg) from None
            return pre.decode_bytes(data, f"row {n} image")
        path = record.get("path")
        if not isinstance(path, str) or not path:
            msg = f"row {n}: neither an 'image' (base64 bytes) nor a 'path'"
            raise ValueError(msg)
        return pre.decode_image(path)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from uniadc_core.serving.predict import result

        if not {"path", "image"} & set(model_input.columns):
            msg = f"input needs a 'path' column of image files or an 'image' column of base64 bytes; got columns {list(model_input.columns)}"
            raise ValueError(msg)
        rows: list[dict] = [{} for _ in range(len(model_input))]
        images, ok = [], []
        for n, record in enumerate(model_input.to_dict("records")):
            try:
                images.append(self._decode(n, record))
                ok.append(n)
            except (ValueError, OSError) as exc:
                rows[n] = {"error": str(exc), "regions": "[]"}
        if images:
            d = self.detector.detect(images)
            for i, n in enumerate(ok):
                row, _ = result(self.detector, d, i, images[i].shape[:2])
                rows[n] = {**row, "regions": json.dumps(row["regions"]), "error": ""}
        return pd.DataFrame([{c: r.get(c) for c in OUTPUT_COLUMNS} for r in rows], columns=OUTPUT_COLUMNS)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def input_key(models_dir: Path, params: dict, metrics: dict) -> str:
    """A key of what a run is made from: the model folders' bytes, the params and the metrics. A retried or
    repeated evaluation of the same inputs has the same key, and finds the run (and version) already made."""
    h = hashlib.sha256()
    for part in ("discriminator", "cada"):
        for f in sorted(p for p in (models_dir / part).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(models_dir).as_posix()}\0{sha256_file(f)}\0".encode())
    h.update(json.dumps({"params": params, "metrics": metrics}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def provenance_tags(root: str | Path = ".", skip_stages: tuple[str, ...] = ("evaluate",)) -> dict[str, str]:
    """``uniadc.git_commit`` (and ``uniadc.git_dirty``) of the repository at ``root``, and ``uniadc.dvc.<out>``: the
    hash DVC recorded in ``dvc.lock`` for each stage output, but those of ``skip_stages`` (the stage running now:
    its lock entry is the previous run's until it finishes); whatever cannot be read is left out."""
    root = Path(root)
    tags: dict[str, str] = {}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            tags["uniadc.git_commit"] = head.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
            tags["uniadc.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    lock = root / "dvc.lock"
    if lock.is_file():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except yaml.YAMLError:
            stages = {}
        for name, spec in stages.items():
            if name in skip_stages:
                continue
            for out in spec.get("outs", []) or []:
                if out.get("path") and out.get("md5"):
                    tags[f"uniadc.dvc.{out['path']}"] = str(out["md5"])
    return tags


def _finished_run(client: MlflowClient, experiment_id: str, key: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{INPUT_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                              max_results=1)
    return runs[0] if runs else None


def _close_abandoned(client: MlflowClient, experiment_id: str, key: str) -> None:
    """Runs of these inputs still RUNNING were left by a killed process (a finished one would be reused): mark them
    KILLED so the MLflow UI stops showing them as in progress. One of them still alive (the same inputs evaluated
    elsewhere at this moment) loses nothing: its own end sets its status again."""
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{INPUT_KEY_TAG}` = '{key}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("MLflow: run %s of these inputs was left RUNNING by an interrupted evaluation; marked KILLED", run.info.run_id)


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in versions)) if versions else None


def log_run(
    uri: str,
    experiment: str,
    params: dict,
    metrics: dict[str, float],
    artifact_dirs: list[Path],
    models_dir: Path,
    registered_model: str | None,
    alias: str = "challenger",
    tags: dict[str, str] | None = None,
) -> dict:
    """Log one evaluation run with its model; register the model and point ``alias`` at its version.

    Idempotent: a finished run with the same ``input_key`` is reused, and so is its registered version, so a
    retry after a failure part-way (or evaluate re-run on the same inputs) leaves one run and one version."""
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, experiment)
    key = input_key(models_dir, params, metrics)
    existing = _finished_run(client, experiment_id, key)
    if existing is not None:
        run_id, artifact_uri = existing.info.run_id, existing.info.artifact_uri
        log.info("MLflow: run %s already holds these inputs (key %s); not logged again", run_id, key)
    else:
        _close_abandoned(client, experiment_id, key)
        run_id, artifact_uri = _new_run(client, experiment_id, key, params, metrics, artifact_dirs, models_dir, tags)
    result = {"run_id": run_id, "model_uri": f"runs:/{run_id}/model", "version": None}
    if registered_model:
        try:
            client.get_registered_model(registered_model)
        except MlflowException:
            client.create_registered_model(registered_model)
        version = _version_of_run(client, registered_model, run_id)
        if version is None:
            version = str(client.create_model_version(registered_model, f"{artifact_uri}/model", run_id).version)
        client.set_registered_model_alias(registered_model, alias, version)
        for k in ("image_auroc_cada", "type_accuracy_cada", "pixel_auroc_cada"):
            if metrics.get(k) is not None:
                client.set_model_version_tag(registered_model, version, k, f"{metrics[k]:.4f}")
        result["version"] = version
        log.info("MLflow: registered %s version %s as @%s (run %s, %s)", registered_model, version, alias, run_id, uri)
    return result


def _new_run(client: MlflowClient, experiment_id: str, key: str, params: dict, metrics: dict, artifact_dirs: list[Path],
             models_dir: Path, tags: dict[str, str] | None) -> tuple[str, str]:
    """Create and fill one run; a failure marks it FAILED (a retry then makes a new one: only finished runs are reused)."""
    run = client.create_run(experiment_id, tags={**(tags or {}), INPUT_KEY_TAG: key})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()],
                         metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None])
        history = models_dir / "discriminator" / "history.json"
        steps = [Metric(k, float(v), 0, rec["epoch"]) for rec in (read_json(history) if history.is_file() else []) for k, v in rec.items()
                 if k not in ("epoch", "best") and isinstance(v, (int, float))]
        timings = timings_path(models_dir / "discriminator")  # wall times: kept out of the model folder, logged here
        if timings.is_file():
            steps += [Metric("train_epoch_seconds", float(rec["seconds"]), 0, rec["epoch"]) for rec in read_json(timings)]
        for i in range(0, len(steps), 500):  # MLflow takes up to 1000 metrics a batch
            client.log_batch(run_id, metrics=steps[i:i + 500])
        for d in artifact_dirs:
            client.log_artifacts(run_id, str(d), artifact_path=d.name)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(str(local), python_model=str(ENTRY), pip_requirements=PIP_REQUIREMENTS, signature=signature(),
                                     input_example=input_example(),
                                     artifacts={"discriminator": str(models_dir / "discriminator"), "cada": str(models_dir / "cada")})
            client.log_artifacts(run_id, str(local), artifact_path="model")
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id, run.info.artifact_uri


def alias_version(uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    return _alias(MlflowClient(uri), name, alias)


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _artifact_uri(client: MlflowClient, model_uri: str) -> str:
    """Where the files of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN/PATH`` are."""
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        return f"{client.get_run(run_id).info.artifact_uri}/{path}"
    if not model_uri.startswith("models:/"):
        msg = f"'{model_uri}': expected models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
        raise ValueError(msg)
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = ref.partition("/")
    return client.get_model_version_download_uri(name, str(version))


def load_pyfunc(model_uri: str, uri: str):
    """Load a logged or registered model, e.g. ``models:/uniadc-discriminator@champion``, from the tracking server ``uri``."""
    client = MlflowClient(uri)
    source = _artifact_uri(client, model_uri)
    with tempfile.TemporaryDirectory() as tmp:  # the weights are read into memory on load
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        return mlflow.pyfunc.load_model(local)


def load_detector(uri: str, name: str, version: str):
    """The ``Detector`` (discriminator + CADA + threshold) of a registered version."""
    return load_pyfunc(f"models:/{name}/{version}", uri).unwrap_python_model().detector


def record_decision(uri: str, name: str, challenger: str, champion: str | None, promote: bool, tags: dict[str, str]) -> None:
    """Tag both versions with the decision and its figures; on promotion move ``@champion`` and extend the history."""
    client = MlflowClient(uri)
    challenger, champion = str(challenger), (str(champion) if champion is not None else None)
    now = _alias(client, name, "champion")
    if now != champion and not (promote and now == challenger):  # moved by another promotion while this one scored (a
        # retry of this very promotion finds it on the challenger already: that is the same outcome)
        msg = f"{name}: @champion moved from version {champion or 'none'} to {now} while this promotion ran; run promote again"
        raise RuntimeError(msg)
    for version in filter(None, (challenger, champion)):
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_model_version_tag(name, version, "promotion.challenger_version", challenger)
        client.set_model_version_tag(name, version, "promotion.champion_version", champion or "none")
    if promote:  # the history first, then the alias: a crash between them is repaired by the next read
        history = _champion_history(client, name)
        if history[-1:] != [challenger]:  # a retried record: not twice
            client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*history, challenger]))
        client.set_registered_model_alias(name, "champion", challenger)
        log.info("MLflow: %s version %s is now @champion (was %s)", name, challenger, champion or "none")


def _champion_history(client: MlflowClient, name: str) -> list[str]:
    """The champion history, made to end at the live ``@champion`` (the alias is the truth). Each change writes the
    history, then moves the alias; a crash between the two leaves either versions after the champion (a promotion
    that never went live: dropped) or a champion missing from the end (a rollback whose alias never moved: put back)."""
    history = [v for v in (client.get_registered_model(name).tags.get(HISTORY_TAG) or "").split(",") if v]
    live = _alias(client, name, "champion")
    if live is None:
        return history
    repaired = history[:len(history) - history[::-1].index(live)] if live in history else [*history, live]
    if repaired != history:
        log.warning("MLflow: %s champion history %s did not end at @champion %s (an interrupted promotion or rollback); "
                    "repaired to %s", name, history, live, repaired)
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(repaired))
    return repaired


def rollback_champion(uri: str, name: str) -> str:
    """Point ``@champion`` back at the previous champion; returns that version."""
    client = MlflowClient(uri)
    history = _champion_history(client, name)
    if len(history) < 2:
        msg = f"{name}: no earlier champion to roll back to (champion history: {history or 'empty'})"
        raise ValueError(msg)
    current, previous = history[-1], history[-2]
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))  # as in a promotion: history, then alias
    client.set_registered_model_alias(name, "champion", previous)
    client.set_model_version_tag(name, current, "promotion.decision", f"rolled back to version {previous}")
    log.info("MLflow: %s @champion rolled back from version %s to %s", name, current, previous)
    return previous


def predict_paths(model, paths: list[str]) -> pd.DataFrame:
    return model.predict(pd.DataFrame({"path": [str(p) for p in paths]}))
