"""Both backbones through the real DVC pipeline: `dvc repro` (scratch), then `dvc exp run -S` to open_clip
with a tiny random model (JSON config, nothing downloaded)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.flows.test_pipeline_flow import TINY_PARAMS
from tests.tiny_models import TINY_CLIP
from uniadc_core.config import merge_params

pytestmark = pytest.mark.slow  # end to end: Prefect, DVC or MLflow in the loop

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def tiny_repo(tmp_path: Path, extra_params: dict | None = None) -> tuple[Path, dict]:
    """A git + DVC repository with this project's pipeline and tiny params; (repo, environment to run in it)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "prefect.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for package in ("flows", "tasks", "uniadc_core", "priors"):  # the stage deps: DVC hashes them
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_PARAMS)  # every key present, as users have it
    params = merge_params(params, extra_params or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/data/\nmlflow.db\n__pycache__/\n")
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` in dvc.yaml is this one
           "PYTHONPATH": str(repo),
           "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "DVC_NO_ANALYTICS": "1",
           "PREFECT_HOME": str(tmp_path / "prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], repo, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # compiled Python is no code dep
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo, env)
    return repo, env


def _stale_stages(repo: Path, env: dict, dvc: list[str]) -> set[str]:
    """Stages `dvc status` reports as changed (a stage's own deps: the downstream ones follow once it re-runs)."""
    status = json.loads(_run([*dvc, "status", "--json"], repo, env).strip().splitlines()[-1])
    return {name.split(":")[-1] for name in status}


def test_dvc_repro_then_exp_run_with_open_clip(tmp_path):
    repo, env = tiny_repo(tmp_path, {"evaluate": {"mlflow": {"register": False}}})
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "uniadc-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    dvc = [sys.executable, "-m", "dvc"]

    _run([*dvc, "repro"], repo, env)
    scratch = json.loads((repo / "data/models/discriminator/config.json").read_text())
    assert scratch["backbone"] == "scratch"
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "lock"], repo, env)
    assert _stale_stages(repo, env, dvc) == set()
    # editing a core file makes every stage that imports it stale, and only those
    for edited, stale in (("uniadc_core/cada/regressor.py", {"fit_cada", "evaluate"}),
                          ("uniadc_core/serving/detector.py", {"evaluate"}),
                          ("uniadc_core/model/loader.py", {"train", "fit_cada", "evaluate"}),
                          ("uniadc_core/io.py", {"ingest", "synthesize", "train", "fit_cada", "evaluate"})):
        original = (repo / edited).read_text()
        (repo / edited).write_text(original + "\n# an edit\n")
        assert _stale_stages(repo, env, dvc) == stale, edited
        (repo / edited).write_text(original)
    assert _stale_stages(repo, env, dvc) == set()

    out = _run([*dvc, "exp", "run", "-S", "train.backbone=open_clip", "-S", "train.clip.model_name=uniadc-tiny-clip",
                "-S", "train.clip.pretrained=''", "-S", "train.clip.layers=[0,1]", "-S", f"train.clip.config_dir={clip_dir}"],
               repo, env)
    assert "'ingest' didn't change" in out and "'synthesize' didn't change" in out  # only train and later stages ran
    config = json.loads((repo / "data/models/discriminator/config.json").read_text())
    assert config["backbone"] == "open_clip" and config["backbone_options"]["model_name"] == "uniadc-tiny-clip"
    assert config["embed_dim"] == TINY_CLIP["embed_dim"]
    metrics = json.loads((repo / "data/reports/metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc_cada"] <= 1.0 and metrics["test_images"] > 0
    shown = _run([*dvc, "exp", "show", "--json"], repo, env)
    assert "open_clip" in shown and "image_auroc_cada" in shown
