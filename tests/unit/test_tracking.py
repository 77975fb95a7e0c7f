"""MLflow tracking without duplicates: a retried or repeated evaluation leaves one run and one version."""

import subprocess

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from uniadc_core.tracking import log_run, provenance_tags  # noqa: E402

pytestmark = pytest.mark.slow  # MLflow in the loop


def _inputs(tmp_path, auroc=0.9):
    models = tmp_path / "models"
    for part in ("discriminator", "cada"):
        (models / part).mkdir(parents=True, exist_ok=True)
        (models / part / "config.json").write_text(f'{{"part": "{part}"}}\n')
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "metrics.json").write_text("{}\n")
    return dict(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", params={"train.seed": 0},
                metrics={"image_auroc_cada": auroc}, artifact_dirs=[reports], models_dir=models, registered_model="m")


def _fail_once(monkeypatch, method: str, error: Exception) -> None:
    """``MlflowClient.<method>`` raises ``error`` on its first call, then works (a dropped connection, a full disk)."""
    real, calls = getattr(MlflowClient, method), []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, flaky)


def test_a_tracking_retry_after_the_version_was_created_leaves_one_version(tmp_path, monkeypatch):
    kw = _inputs(tmp_path)
    _fail_once(monkeypatch, "set_registered_model_alias", MlflowException("connection reset by peer"))  # after the version
    with pytest.raises(MlflowException):
        log_run(**kw)
    client = MlflowClient(kw["uri"])
    assert len(client.search_model_versions("name = 'm'")) == 1  # created before the failure
    retried = log_run(**kw)  # what the task's retry does
    again = log_run(**kw)  # evaluate re-run on the same inputs
    versions = client.search_model_versions("name = 'm'")
    assert len(versions) == 1 and retried["version"] == again["version"] == str(versions[0].version)
    assert retried["run_id"] == again["run_id"]
    assert str(client.get_model_version_by_alias("m", "challenger").version) == retried["version"]
    experiment = client.get_experiment_by_name("e").experiment_id
    assert len(client.search_runs([experiment])) == 1
    other = log_run(**{**kw, "metrics": {"image_auroc_cada": 0.8}})  # other inputs: a run and a version of their own
    assert other["version"] != retried["version"] and len(client.search_model_versions("name = 'm'")) == 2


def test_a_run_failed_before_it_finished_is_not_reused(tmp_path, monkeypatch):
    kw = _inputs(tmp_path)
    _fail_once(monkeypatch, "log_artifacts", OSError("disk full"))
    with pytest.raises(OSError):
        log_run(**kw)
    done = log_run(**kw)
    client = MlflowClient(kw["uri"])
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert [v.run_id for v in client.search_model_versions("name = 'm'")] == [done["run_id"]]


def test_a_run_left_running_by_a_killed_evaluation_is_closed_not_reused(tmp_path):
    from uniadc_core.tracking.registry import INPUT_KEY_TAG, input_key

    kw = _inputs(tmp_path)
    client = MlflowClient(kw["uri"])
    experiment = client.create_experiment("e")
    key = input_key(kw["models_dir"], kw["params"], kw["metrics"])
    left = client.create_run(experiment, tags={INPUT_KEY_TAG: key}).info.run_id  # what a SIGKILL mid-logging leaves
    other = client.create_run(experiment, tags={INPUT_KEY_TAG: "other inputs"}).info.run_id
    done = log_run(**kw)
    assert done["run_id"] not in (left, other)
    assert client.get_run(left).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"  # another evaluation's run is not touched
    assert client.get_run(done["run_id"]).info.status == "FINISHED"
    assert [v.run_id for v in client.search_model_versions("name = 'm'")] == [done["run_id"]]


def test_runs_are_tagged_with_the_git_commit_and_the_dvc_hashes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python -m flows.train\n    outs:\n"
                                   "    - path: data/models/discriminator\n      hash: md5\n      md5: 0123abcd.dir\n"
                                   "  evaluate:\n    cmd: python -m flows.evaluate\n    outs:\n"
                                   "    - path: data/reports/per_class.csv\n      hash: md5\n      md5: 99ff\n")
    subprocess.run([*git, "add", "dvc.lock"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "lock"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    tags = provenance_tags(repo)
    assert tags["uniadc.git_commit"] == head and tags["uniadc.git_dirty"] == "false"
    assert tags["uniadc.dvc.data/models/discriminator"] == "0123abcd.dir"
    assert "uniadc.dvc.data/reports/per_class.csv" not in tags  # the running stage's lock entry is the last run's
    kw = _inputs(tmp_path)
    run = MlflowClient(kw["uri"]).get_run(log_run(**kw, tags=tags)["run_id"])
    assert run.data.tags["uniadc.git_commit"] == head and "uniadc.input_key" in run.data.tags
    assert provenance_tags(tmp_path / "not-a-repo") == {}
