"""Kill anywhere, resume, same result: `dvc repro` of the tiny pipeline killed with SIGKILL at points spread over
every stage, then run again to the end, and compared with an uninterrupted run.

    .venv/bin/python benchmarks/faults.py [--fractions 0.3,0.8] [--registration 0.5,1.5,2.5,3.5] [--demo] [--out ...]

Each case is a fresh git + DVC repository with this project's pipeline and the tests' tiny params (two demo classes,
64 px, 2 epochs; ``tests/flows/test_dvc_exp.tiny_repo``) and its own MLflow database. The reference runs `dvc repro`
once, uninterrupted, and times each stage from DVC's "Running stage" lines. A case starts `dvc repro`, waits for the
stage's line, sleeps that fraction of the stage's reference time, kills the whole process group (SIGKILL: no
cleanup runs), then runs `dvc repro` again. It compares what DVC recorded for every stage output (dvc.lock's md5s),
`metrics.json`, and the registry (model versions, the @challenger alias, finished runs) with the reference. Timing
is only approximate (a kill lands near the point, not at an exact instruction); the evaluate stage's late points
fall in the MLflow logging and registration. With ``--demo`` the cases run the project's own params (the demo), whose
stages are long enough to time what a resume keeps: the killed stage's seconds in the second run beside its
uninterrupted seconds, and what it said it kept (complete shards, the epoch it resumed after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.flows.test_dvc_exp import tiny_repo  # noqa: E402
from tests.flows.test_kill_resume import outcome  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402

STAGES = ("ingest", "synthesize", "train", "fit_cada", "evaluate")


EVALUATED = "Task run 'evaluate-"  # with "Finished": the metrics are written; MLflow logging and registration follow


def case_repo(case: Path, demo: bool) -> tuple[Path, dict]:
    """A fresh repository of the pipeline: the tests' tiny params, or with ``demo`` the project's own."""
    repo, env = tiny_repo(case)
    if demo:
        shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    return repo, env


def repro(repo: Path, env: dict, kill_at: tuple[str, float] | None = None) -> tuple[int, dict[str, float], str]:
    """(exit status, each stage's start time in seconds from the start, output) of `dvc repro`; ``kill_at``: (a stage,
    or ``registration``: the line saying evaluation finished; seconds after it) to SIGKILL the process group."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    t0, starts, lines = time.perf_counter(), {}, []
    killer = None

    def kill_later(delay: float) -> None:
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    for line in proc.stdout:
        lines.append(line)
        stage = line.split("'")[1] if line.startswith("Running stage '") else None
        if stage is not None:
            starts[stage] = time.perf_counter() - t0
        if EVALUATED in line and "Finished" in line:
            stage = "registration"
        if kill_at is not None and stage == kill_at[0] and killer is None:
            killer = threading.Thread(target=kill_later, args=(kill_at[1],))
            killer.start()
    status = proc.wait()
    if killer is not None:
        killer.join()
    starts["end"] = time.perf_counter() - t0
    return status, starts, "".join(lines)


def stage_seconds(starts: dict[str, float]) -> dict[str, float]:
    """Each stage's seconds from `repro`'s start times (a stage ends where the next one, or the run, starts)."""
    order = [s for s in STAGES if s in starts]
    return {s: (starts[order[i + 1]] if i + 1 < len(order) else starts["end"]) - starts[s] for i, s in enumerate(order)}


def kept(log: str) -> str:
    """What the re-run said it kept: complete shards, the training epoch it resumed after."""
    said = [line.split(" - ", 1)[-1].strip() for line in log.splitlines()
            if "shard(s) planned" in line or "resuming from" in line]
    return "; ".join(said) or "-"


def differences(got: dict, want: dict) -> list[str]:
    out = [f"{stage} outputs" for stage in STAGES if got["outs"].get(stage) != want["outs"].get(stage)]
    if got["metrics"] != want["metrics"]:
        out.append("metrics.json")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", default="0.3,0.8", help="kill points in each stage, as fractions of its reference time")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--extra", default="", help="more kill points, stage:fraction, comma-separated")
    p.add_argument("--registration", default="0.5,1.5,2.5,3.5", help="kill points in the MLflow logging and registration: "
                   "seconds after the line saying evaluation finished")
    p.add_argument("--demo", action="store_true", help="the project's own params.yaml (the demo: three classes, 128 px, "
                   "40 epochs) instead of the tests' tiny ones: long enough stages to time what a resume keeps")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/faults.md"))
    a = p.parse_args()
    fractions = [float(f) for f in a.fractions.split(",")]
    with tempfile.TemporaryDirectory(prefix="uniadc-faults-") as tmp:
        base = Path(tmp)
        (base / "reference").mkdir()
        repo, env = case_repo(base / "reference", a.demo)
        status, starts, log = repro(repo, env)
        if status != 0:
            sys.exit(f"the reference run failed:\n{log[-3000:]}")
        want = outcome(repo, env["MLFLOW_TRACKING_URI"])
        want_log = [line.split(" - ", 1)[-1][:90] for line in log.splitlines() if "Task run 'evaluate-" in line or "track-mlflow" in line]
        seconds = stage_seconds(starts)
        print("reference:", {s: round(v, 1) for s, v in seconds.items()}, f"{want['versions']} version(s)", flush=True)
        rows = []
        points = [(stage, f) for stage in a.stages.split(",") for f in fractions]
        points += [(x.split(":")[0], float(x.split(":")[1])) for x in a.extra.split(",") if x]
        points += [("registration", float(x)) for x in a.registration.split(",") if x]
        for stage, f in points:
            case = base / f"{stage}-{f}"
            case.mkdir()
            repo, env = case_repo(case, a.demo)
            killed, _, _ = repro(repo, env, (stage, f if stage == "registration" else f * seconds[stage]))
            status, starts, log = repro(repo, env)
            reran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]
            if status != 0:
                rows.append((stage, f, killed, "re-run failed: " + log.strip().splitlines()[-1][:120], "", "", "", ""))
                continue
            got = outcome(repo, env["MLFLOW_TRACKING_URI"])
            diff = differences(got, want)
            registry = f"{got['versions']} version(s), @challenger v{got['challenger']}, {got['finished_runs']} finished run(s)"
            again = stage_seconds(starts)
            timing = f"{again[stage]:.1f} ({seconds[stage]:.1f})" if stage in again else "-"
            rows.append((stage, f, killed, ", ".join(reran) or "nothing", timing, kept(log),
                         "identical" if not diff else "differ: " + ", ".join(diff), registry))
            print(rows[-1], flush=True)
    what = "the demo pipeline (params.yaml)" if a.demo else "the tiny pipeline"
    lines = [f"# Kill anywhere, resume: {what} killed with SIGKILL, then `dvc repro` again\n",
             f"Command: `python benchmarks/faults.py {' '.join(sys.argv[1:])}`  ",
             f"Reference (uninterrupted): stage seconds {json.dumps({s: round(v, 1) for s, v in seconds.items()})}; "
             f"{want['versions']} registered version, {want['finished_runs']} finished run. Compared with it: every stage "
             "output's md5 in dvc.lock and metrics.json.\n",
             "| stage killed | at (share of its time; registration: seconds after evaluation finished) | exit of the killed run | "
             "stages the second `dvc repro` ran | killed stage's seconds in it (uninterrupted) | what it kept | outputs | registry |",
             "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join([row[0], f"{row[1]:.2f}", *map(str, row[2:])]) + " |" for row in rows]
    lines.append(f"\nReference output around the registration: {' / '.join(want_log)}")
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
