"""The `uniadc` command.

    uniadc run                 # dvc repro: the whole pipeline, only what changed
    uniadc stage train         # one stage's flow, without DVC
    uniadc check-params        # validate params.yaml and print the parsed config
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

from flows import paths

STAGES = ("ingest", "synthesize", "train", "fit_cada", "evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uniadc", description="Anomaly detection and classification pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the pipeline with DVC (dvc repro)")
    stage = sub.add_parser("stage", help="run one stage's Prefect flow")
    stage.add_argument("name", choices=STAGES)
    check = sub.add_parser("check-params", help="validate params.yaml")
    for p in (stage, check):
        p.add_argument("--params", default=paths.PARAMS)
    args = parser.parse_args(argv)

    if args.command == "run":
        return subprocess.call(["dvc", "repro"])
    from uniadc_core.config import ConfigError, load_params

    try:
        params = load_params(args.params)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-params":
        print(json.dumps(dataclasses.asdict(params), indent=2))
        return 0
    import importlib

    module = importlib.import_module(f"flows.{args.name}")
    runner = getattr(module, "run", None) or getattr(module, f"{args.name}_flow")
    runner(args.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
