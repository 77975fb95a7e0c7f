"""Scheduled retraining: ingest again (new images), `dvc repro` (or `dvc exp run -S ...`), then gated promotion,
then `dvc push` when a DVC remote is configured. One retraining runs at a time per project (a lock in `.uniadc/`); a `dvc repro`
already running holds DVC's own lock, and the retraining then stops with a message saying so (retried once).

    python -m flows.retrain                  # once, here
    uniadc serve --cron "0 2 * * *"          # a long-running process that runs it on a schedule
    prefect deploy --all                     # the deployment declared in prefect.yaml (a work pool + worker)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.promote import promote_flow
from tasks import retry_on_io
from uniadc_core.io import exclusive

LOCK = ".uniadc/retrain.lock"


class CommandError(RuntimeError):
    """A command that failed; its output says why. Not retried: a training that failed fails again."""


class DvcBusy(OSError):
    """Another DVC command holds this repository's lock: an I/O-style wait, retried once after a pause."""


def _run(args: list[str], cwd: str) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "Unable to acquire lock" in proc.stdout + proc.stderr:
        msg = (f"`{' '.join(args)}`: another DVC command (a `dvc repro`?) is running in {cwd} and holds its lock "
               f"({Path(cwd) / '.dvc/tmp/lock'}); nothing was changed: run the retraining again when it has finished")
        raise DvcBusy(msg)
    if proc.returncode != 0:
        msg = f"`{' '.join(args)}` failed in {cwd} (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        raise CommandError(msg)
    return proc.stdout + proc.stderr


def reread_images(repo: str) -> str:
    """Run ingest again whatever DVC thinks: DVC does not watch image folders outside the repository (``ingest.root``),
    so images added on the line since the last run would otherwise never be trained on. Ingest only reads and hashes;
    unchanged images give a byte-identical manifest, and then no later stage runs again."""
    return _run(["dvc", "repro", "--force", "--single-item", "ingest"], repo)


@task(name="dvc-repro", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_on_io)
def reproduce(repo: str, set_params: list[str]) -> str:
    """Ingest again (new images), then `dvc repro`, or `dvc exp run -S ...` when params are overridden (the workspace
    gets the results)."""
    reread_images(repo)
    args = ["dvc", "exp", "run", *[a for p in set_params for a in ("-S", p)]] if set_params else ["dvc", "repro"]
    out = _run(args, repo)
    get_run_logger().info("%s: %s", " ".join(args), out.strip().splitlines()[-1] if out.strip() else "done")
    return out


@task(name="dvc-push", retries=2, retry_delay_seconds=[5, 30])  # any failure: a remote's hiccup passes
def push(repo: str) -> bool:
    """`dvc push` when a remote is configured; False (nothing pushed) otherwise."""
    if not _run(["dvc", "remote", "list"], repo).strip():
        get_run_logger().info("no DVC remote configured; nothing pushed")
        return False
    _run(["dvc", "push"], repo)
    return True


@flow(name="retrain")
def retrain_flow(repo: str = ".", params_path: str = "params.yaml", set_params: list[str] | None = None) -> dict:
    """Retrain what changed, promote the challenger if it passes the gates, push data and models.

    ``params_path`` is relative to ``repo`` (it is the file `dvc repro` reads there)."""
    repo = str(Path(repo).resolve())
    with exclusive(Path(repo) / LOCK, "a retraining of this project"):
        reproduce(repo, list(set_params or []))
        decision = promote_flow(repo, str(Path(repo) / params_path))
        pushed = push(repo)
    return {**decision, "pushed": pushed}


def serve(cron: str = "0 2 * * *", repo: str = ".", name: str = "uniadc-retrain") -> None:
    """Run the retraining flow on a cron schedule from this process (Ctrl-C stops it)."""
    retrain_flow.serve(name=name, cron=cron, parameters={"repo": str(Path(repo).resolve())})


if __name__ == "__main__":
    retrain_flow()
