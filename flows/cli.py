"""The `uniadc` command.

    uniadc run                 # dvc repro: the whole pipeline, only what changed
    uniadc stage train         # one stage's flow, without DVC
    uniadc check-params        # validate params.yaml and print the parsed config
    uniadc report              # data/reports/metrics.json as a table: one row per variant
    uniadc promote [--rollback]                      # gated promotion of @challenger to @champion
    uniadc predict IMAGES_OR_FOLDERS [--model M] [--out predictions.csv] [--overlays DIR] [--masks DIR]
                   [--threshold T | --false-alarm-rate R]   # the line's own operating point
    uniadc export [--model data/models] [--out exported]   # ONNX + JSON: `uniadc predict --model exported` needs no torch
    uniadc serve-api [--model M] [--host 127.0.0.1] [--port 8000]  # HTTP: POST image bytes to /predict
    uniadc retrain                                   # dvc repro, promotion, dvc push: once
    uniadc serve [--cron "0 2 * * *"]                # the same on a schedule (Prefect flow.serve)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

STAGES = ("ingest", "synthesize", "train", "fit_cada", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniadc", description="Anomaly detection and classification pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the pipeline with DVC (dvc repro)")
    stage = sub.add_parser("stage", help="run one stage's Prefect flow")
    stage.add_argument("name", choices=STAGES)
    check = sub.add_parser("check-params", help="validate params.yaml")
    report = sub.add_parser("report", help="print metrics.json as a table (one row per variant)")
    report.add_argument("--metrics", default="data/reports/metrics.json")
    promote = sub.add_parser("promote", help="promote @challenger to @champion if it passes the gates (params: promote)")
    promote.add_argument("--rollback", action="store_true", help="move @champion back to the previous champion")
    predict = sub.add_parser("predict", help="score image files or folders with a model")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--model", default="", help="models:/NAME@ALIAS, runs:/..., or a local models directory "
                         "(with discriminator/ and cada/, e.g. data/models); default models:/<registered model>@champion")
    predict.add_argument("--out", default="predictions.csv", help="a .csv or .json file")
    predict.add_argument("--overlays", default="", help="write an overlay PNG per image into this folder")
    predict.add_argument("--masks", default="", help="write a label PNG per image, at its own size, into this folder "
                         "(0 normal, k the k-th defect type)")
    api = sub.add_parser("serve-api", help="serve a model over HTTP: POST image bytes to /predict, GET /health")
    api.add_argument("--model", default="", help="as for predict; default models:/<registered model>@champion")
    api.add_argument("--host", default="127.0.0.1", help="the address to bind (0.0.0.0: every interface; mind the network)")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--max-mb", type=float, default=20.0, help="largest request body accepted, in MB")
    for p in (predict, api):
        point = p.add_mutually_exclusive_group()
        point.add_argument("--threshold", type=float, default=None, help="decide at this aligned score instead of the model's")
        point.add_argument("--false-alarm-rate", type=float, default=None, metavar="R",
                           help="decide at the threshold expected to flag this fraction of new normals (e.g. 0.01), from "
                           "the held-out normal scores saved with the model")
        p.add_argument("--abstain-below", type=float, default=0.0, metavar="P",
                       help="report a defect type whose probability is below P as 'unknown' instead of guessing (e.g. 0.5)")
    predict.add_argument("--batch-size", type=int, default=32)
    export = sub.add_parser("export", help="export a model to ONNX for the slim runtime (model.onnx + runtime.json)")
    export.add_argument("--model", default="data/models", help="a local models directory (with discriminator/ and cada/) "
                        "or models:/NAME@ALIAS")
    export.add_argument("--out", default="exported", help="the folder to write")
    sub.add_parser("retrain", help="dvc repro, then gated promotion, then dvc push (once)")
    serve = sub.add_parser("serve", help="run the retraining flow on a cron schedule (flow.serve)")
    serve.add_argument("--cron", default="0 2 * * *")
    for p in (stage, check, promote, predict, api, export):
        p.add_argument("--params", default="params.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "run":
        return subprocess.call(["dvc", "repro"])
    if args.command == "report":
        from uniadc_core.evaluation.report import metrics_table
        from uniadc_core.io import read_json

        try:
            print(metrics_table(read_json(args.metrics)))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("retrain", "serve"):
        from flows.retrain import retrain_flow, serve

        if args.command == "serve":
            serve(args.cron)
            return 0
        print(json.dumps(retrain_flow(), indent=2, default=str))
        return 0
    if args.command == "predict":  # an exported model needs no params (nor torch)
        return _predict(args)
    if args.command == "serve-api":
        return _serve_api(args)
    if args.command == "export":
        return _export(args)
    from uniadc_core.config import ConfigError, load_params

    try:
        params = load_params(args.params)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-params":
        print(json.dumps(dataclasses.asdict(params), indent=2))
        return 0
    if args.command == "promote":
        from flows.promote import promote_flow

        print(json.dumps(promote_flow(".", args.params, rollback_champion=args.rollback), indent=2, default=str))
        return 0
    import importlib

    module = importlib.import_module(f"flows.{args.name}")
    runner = getattr(module, "run", None) or getattr(module, f"{args.name}_flow")
    runner(".", args.params)
    return 0


def load_detector(model: str, params_path: str = "params.yaml"):
    """A detector from an exported folder (``uniadc export``: onnxruntime, no torch), an MLflow model URI (the tracking
    server from ``params_path`` or MLFLOW_TRACKING_URI) or a local models folder; its threshold is the one saved with it."""
    from uniadc_core.runtime import OnnxDetector, is_exported

    if is_exported(model):
        return OnnxDetector.load(model)
    if model.startswith(("models:/", "runs:/")):
        from uniadc_core.config import load_params
        from uniadc_core.tracking import load_pyfunc, tracking_uri

        params = load_params(params_path)
        return load_pyfunc(model, tracking_uri(params.evaluate.mlflow.tracking_uri)).unwrap_python_model().detector
    from uniadc_core.serving.detector import Detector

    return Detector.load(model)


def _model_uri(args) -> str:
    """``--model``, or the registered model's @champion named in the params."""
    if args.model:
        return args.model
    from uniadc_core.config import load_params

    return f"models:/{load_params(args.params).evaluate.mlflow.registered_model}@champion"


def _detector_or_error(args):
    """(model, detector at the asked threshold), or (model, None) after printing why it cannot be loaded."""
    model = args.model or "models:/...@champion"
    try:
        model = _model_uri(args)
        return model, load_detector(model, args.params).with_threshold(args.threshold, args.false_alarm_rate).with_abstain(args.abstain_below)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001  (MLflow: unknown model or alias; a bad params file)
        print(f"error: could not load {model}: {exc}", file=sys.stderr)
    return model, None


def _export(args) -> int:
    from uniadc_core.export import export_model
    from uniadc_core.serving.detector import Detector

    try:
        detector = load_detector(args.model, args.params)
        if not isinstance(detector, Detector):
            raise ValueError(f"{args.model}: already an exported model; export a models folder or models:/NAME@ALIAS")
        out = export_model(detector, args.out, source=args.model)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {out} (model.onnx + runtime.json); score with: uniadc predict IMAGES --model {out}")
    return 0


def _serve_api(args) -> int:
    from uniadc_core.serving.api import serve

    model, detector = _detector_or_error(args)
    if detector is None:
        return 2
    def again():  # POST /reload: the same source, resolved anew (models:/NAME@champion moves on promotion)
        return load_detector(model, args.params).with_threshold(args.threshold, args.false_alarm_rate).with_abstain(args.abstain_below)

    serve(detector, model, args.host, args.port, int(args.max_mb * 1024 * 1024), again)
    return 0


def _predict(args) -> int:
    from uniadc_core.serving.predict import list_images, predict_files, write_rows

    try:
        files = list_images(args.inputs)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, detector = _detector_or_error(args)
    if detector is None:
        return 2
    t0 = time.perf_counter()
    rows = predict_files(detector, files, args.batch_size, args.overlays or None, mask_dir=args.masks or None)
    seconds = time.perf_counter() - t0
    out = write_rows(rows, args.out)
    bad = sum(1 for r in rows if r.get("error"))
    flagged = sum(1 for r in rows if r.get("is_anomaly"))
    print(f"{len(rows)} images ({flagged} anomalous, {bad} unreadable) scored with {model} at threshold {detector.threshold:.4g} -> {out} "
          f"in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
