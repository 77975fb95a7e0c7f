"""Kill `dvc repro` with SIGKILL inside training and inside the MLflow registration, run it again, and end where an
uninterrupted run ends: the same dvc.lock output hashes, the same metrics, one registered version.

The kill points are the two whose recovery is our code's (the others re-run a stage DVC never recorded):
- training, once its first epoch checkpoint exists: the re-run resumes from it instead of starting over;
- evaluation, once its MLflow run exists: the run's logging (params, metrics, artifacts, the model) is then under way,
  before the registration; the re-run must neither reuse the half-logged run (it is marked KILLED) nor register a
  second version.
`benchmarks/faults.py` kills at more points (every stage, several moments) and prints the table.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from tests.flows.test_dvc_exp import _run, tiny_repo

pytestmark = pytest.mark.slow  # three tiny `dvc repro` runs, two of them killed

RECORD = "data/registration.json"  # the MLflow run id it names differs from run to run: compared by its version


def outcome(repo: Path, uri: str) -> dict:
    """What a finished run leaves: dvc.lock's output md5s per stage, the metrics, the registry."""
    from mlflow import MlflowClient

    model = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["mlflow"]["registered_model"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = {stage: {o["path"]: o.get("md5") for o in spec.get("outs", []) if o["path"] != RECORD} for stage, spec in lock.items()}
    metrics = json.loads((repo / "data/reports/metrics.json").read_text())
    client = MlflowClient(uri)
    versions = client.search_model_versions(f"name = '{model}'")
    challenger = client.get_model_version_by_alias(model, "challenger").version if versions else None
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    recorded = json.loads((repo / RECORD).read_text())["version"]
    return {"outs": outs, "metrics": metrics, "versions": len(versions), "challenger": challenger, "recorded": recorded,
            "finished_runs": sum(r.info.status == "FINISHED" for r in runs), "statuses": sorted(r.info.status for r in runs)}


def mlflow_run_exists(uri: str) -> Callable[[], bool]:
    """Whether the tracking database (``sqlite:///path``) holds a run yet; read-only, never blocking the writer."""
    db = Path(uri.removeprefix("sqlite:///"))

    def ready() -> bool:
        if not db.is_file():
            return False
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as con:
                return con.execute("select count(*) from runs").fetchone()[0] > 0
        except sqlite3.Error:  # not created yet, or locked this instant
            return False

    return ready


def repro_killed_when(repo: Path, env: dict, ready: Callable[[], bool], timeout: float = 600) -> tuple[int, str]:
    """Start `dvc repro`, SIGKILL its whole process group as soon as ``ready()`` holds; (exit status, output)."""
    log = repo.parent / f"repro-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        else:
            if proc.poll() is None:  # a hung run must not hang the suite
                os.killpg(proc.pid, signal.SIGKILL)
        status = proc.wait()
    return status, log.read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, dict]:
    """An uninterrupted `dvc repro` of the tiny pipeline: (repo, environment, its outcome)."""
    base = tmp_path_factory.mktemp("reference")
    repo, env = tiny_repo(base)
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    want = outcome(repo, env["MLFLOW_TRACKING_URI"])
    assert (want["versions"], want["finished_runs"], want["statuses"], want["recorded"]) == (1, 1, ["FINISHED"], "1")
    return repo, env, want


def test_repro_killed_in_training_and_in_the_registration_ends_as_an_uninterrupted_run(reference, tmp_path):
    want = reference[2]
    repo, env = tiny_repo(tmp_path)
    checkpoint = repo / "data/models/.discriminator.checkpoint/progress.json"
    status, log = repro_killed_when(repo, env, checkpoint.is_file)
    assert status == -signal.SIGKILL, f"training ended before the kill:\n{log[-2000:]}"
    assert json.loads(checkpoint.read_text())["epoch"] == 1  # of 2: killed inside the second epoch or right after it
    assert not (repo / "data/models/discriminator/config.json").exists()  # no model folder half written

    status, log = repro_killed_when(repo, env, mlflow_run_exists(env["MLFLOW_TRACKING_URI"]))
    assert "resuming from" in log and "after epoch 1" in log, log[-3000:]  # the epoch done before the kill is kept
    assert status == -signal.SIGKILL, f"the registration ended before the kill:\n{log[-2000:]}"

    log = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "Running stage 'evaluate'" in log and "Running stage 'train'" not in log  # only the killed stage ran again
    got = outcome(repo, env["MLFLOW_TRACKING_URI"])
    assert got["outs"] == want["outs"]
    assert got["metrics"] == want["metrics"]
    assert (got["versions"], got["challenger"], got["finished_runs"], got["recorded"]) == (1, 1, 1, "1")
    assert got["statuses"] == ["FINISHED", "KILLED"]  # the killed run is closed, not reused
    assert not checkpoint.parent.exists()  # the checkpoint goes once the model is saved


def test_params_changed_and_changed_back_point_the_challenger_at_the_first_model_again(reference):
    """Evaluate runs again for params it has seen (A, B, then A: never restored from DVC's run cache, which would skip
    the MLflow registration) and points @challenger back at A's version, registering nothing new."""
    repo, env, _ = reference
    params = yaml.safe_load((repo / "params.yaml").read_text())
    first = params["evaluate"]["overlays"]
    for overlays in (first + 1, first):
        params["evaluate"]["overlays"] = overlays
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        log = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
        assert "Running stage 'evaluate'" in log and "is cached" not in log, log[-2000:]
    got = outcome(repo, env["MLFLOW_TRACKING_URI"])
    assert (got["versions"], got["challenger"], got["recorded"]) == (2, 1, "1")  # B registered v2; A's v1 is back
