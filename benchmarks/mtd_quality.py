"""MTD quality benchmark: the whole pipeline on the Magnetic Tile Defect dataset in UniADC's settings.

    .venv/bin/python benchmarks/mtd_quality.py [--root ../shared/datasets/mtd] [--settings all]
        [--epochs 12] [--image-size 128] [--set train.normal_class=implicit ...] [--label NAME]
        [--out benchmarks/results/mtd_quality]

``--set`` overrides any params key (as ``dvc exp run -S`` does) and ``--label`` names the run in the
ablation log: every run is appended to ``<out>_ablation.json`` and ``<out>_ablation.md`` lists them all,
each with the commit and the library tree (``git rev-parse HEAD:uniadc_core``) it ran with. ``--resume``
(with ``--seeds``) takes a seed's rows from the ablation log instead of running it again when rows of the
same label, setting, epochs, size, seed and overrides were run with the same clean library tree (a 3-seed
row split over several sittings, with the same code).

Settings: 2 normal shots or all 761 train normals, with 0 or 1 anomaly shot per defect type.
Each runs ingest -> synthesize -> train -> fit_cada -> evaluate with the library calls the Prefect
flows use (no Prefect server, no MLflow), in ``benchmarks/work/<setting>/``, and the script prints
one table beside UniADC's published MTD figures, with the wall time of every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.cada.fit import fit  # noqa: E402
from uniadc_core.config import apply_overrides, load_params, parse_params  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.data.shards import read_samples  # noqa: E402
from uniadc_core.evaluation.evaluate import evaluate  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.model.discriminator import load_model, save_model  # noqa: E402
from uniadc_core.model.terms import DISCRIMINATOR_ONLY  # noqa: E402
from uniadc_core.model.train import train  # noqa: E402
from uniadc_core.serving.detector import Detector  # noqa: E402
from uniadc_core.synthesis.synthesize import load_inputs, synthesize  # noqa: E402

# UniADC (arXiv 2511.06644), MTD, 2 normal shots: image AUROC, pixel AUROC, PRO, type accuracy, mIoU
PAPER = {
    "2shot_0anom": (92.30, 83.52, 81.22, 64.15, 31.85),
    "2shot_1anom": (92.57, 86.79, 83.17, 65.10, 34.33),
}
SETTINGS = {
    "2shot_0anom": {"normal_shots": 2, "anomaly_shots": 0},
    "2shot_1anom": {"normal_shots": 2, "anomaly_shots": 1},
    "full_0anom": {"normal_shots": "all", "anomaly_shots": 0},
    "full_1anom": {"normal_shots": "all", "anomaly_shots": 1},
}
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "type_accuracy", "miou")


def with_memory_weight(model, weight: float):
    """The trained model with another share of the memory in its map (0: the discriminator alone, no memory)."""
    if weight <= 0:
        model.memory, model.config.memory, model.config.terms = None, {}, DISCRIMINATOR_ONLY
    else:  # the same standardisers, other weights
        model.config.terms = tuple(replace(t, weight=weight if t.name == "memory" else 1.0 - weight) for t in model.config.terms)
    return model


def run_setting(name: str, root: Path, work: Path, epochs: int, image_size: int, overrides: list[str] = (),
                weights: list[float] = (), calibrations: list[bool] = ()) -> list[dict]:
    """One training, then CADA and evaluation once per memory weight in ``weights`` (none: the params' weight)."""
    shots = SETTINGS[name]
    raw = {
        # one MTD image (MT_Uneven/exp4_num_124690) has an all-soft mask: kept, without pixel truth
        "ingest": {"kind": "mtd", "root": str(root), "seed": 0, "holdout_fraction": 0.25, "allow_missing_masks": True, **shots},
        "synthesize": {"image_size": image_size, "samples_per_type": 120},
        "train": {"image_size": image_size, "epochs": epochs, "min_epoch_samples": 256},
        "fit_cada": {"threshold": "auto"},  # decide at the threshold calibrated on held-out normals (what a line acts on)
    }
    results = run_pipeline(raw, work, overrides, weights, calibrations)
    for r in results:
        r.pop("reports")
        r.update({"setting": name, **shots})
    return results


def with_type_head(model):
    """The trained model naming defects by its type head alone (its shot memory dropped)."""
    model.shot_memory, model.config.shots = None, {}
    return model


def run_pipeline(raw: dict, work: Path, overrides: list[str] = (), weights: list[float] = (),
                 calibrations: list[bool] = (), type_sources: list[str] = ()) -> list[dict]:
    """ingest -> synthesize -> train -> fit_cada -> evaluate in ``work`` for the params ``raw`` (+ ``overrides``),
    CADA and evaluation once per memory weight in ``weights`` (none: the params' weight) and per
    ``fit_cada.leave_item_out`` value in ``calibrations`` (none: the params' own) and per source of the defect type
    in ``type_sources`` (``shots``: as trained; ``head``: the type head alone); one result per combination with the
    metrics, the stage seconds and the reports folder."""
    base = load_params(ROOT / "params.yaml")
    apply_overrides(raw, list(overrides), create=True)
    params = parse_params(raw)
    if weights and params.train.memory.weight <= 0:
        raise ValueError("--memory-weights: train with a memory to evaluate it (add --set train.memory.weight=1)")
    params = dataclasses.replace(params, **{k: getattr(base, k) for k in ("evaluate",) if k not in raw})
    shutil.rmtree(work, ignore_errors=True)
    times: dict[str, float] = {}

    def timed(stage, fn, *args):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        times[stage] = round(time.perf_counter() - t0, 1)
        times[f"{stage}_cpu"] = round(time.process_time() - c0, 1)  # CPU seconds of this process, all its threads
        return out

    timed("ingest", ingest, params.ingest, work / "prepared")
    manifest_path, vocab_path = work / "prepared/manifest.parquet", work / "prepared/vocabulary.json"
    timed("synthesize", synthesize, manifest_path, vocab_path, work / "synthetic", params.synthesize)
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    samples = read_samples(work / "synthetic")
    timed("train", train, manifest, vocab, work / "synthetic", params.train, work / "models/discriminator")
    results = []
    combos = [(w, lio, src) for w in weights or [None] for lio in calibrations or [None] for src in type_sources or [None]]
    for w, lio, src in combos:
        models = work / ("models" + ("" if w is None else f"_w{w}") + ("" if lio is None else f"_lio{int(lio)}")
                         + ("" if src in (None, "shots") else f"_{src}"))
        model = load_model(work / "models/discriminator")
        if w is not None:
            model = with_memory_weight(model, w)
        if src == "head":
            model = with_type_head(model)
        if models.name != "models":
            save_model(model, models / "discriminator")
        fit_cfg = params.fit_cada if lio is None else replace(params.fit_cada, leave_item_out=lio)
        timed("fit_cada", fit, model, manifest, samples, fit_cfg, models / "cada")
        metrics = timed("evaluate", evaluate, Detector.load(models), manifest, params.evaluate, work / f"reports_{models.name}")
        extra = ([] if w is None else [f"train.memory.weight={w} (at evaluation)"]) + (
            [] if lio is None else [f"fit_cada.leave_item_out={str(lio).lower()} (at calibration)"]) + (
            [] if src is None else [f"types from {src} (at evaluation)"])
        reports = work / f"reports_{models.name}"
        per_type = pl.read_csv(reports / "per_type.csv").to_dicts()  # each type's image AUROC, pixel share and pixel AUROC
        results.append({"overrides": [*overrides, *extra], "metrics": metrics, "per_type": per_type, "seconds": dict(times),
                        "memory_weight": w, "leave_item_out": lio, "type_source": src, "reports": str(reports)})
    return results


def table(results: list[dict]) -> str:
    head = "| setting | " + " | ".join(COLUMNS) + " | UniADC paper (same order) | stage seconds (ingest/synth/train/cada/eval) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in results:
        m = r["metrics"]
        ours = " | ".join(f"{100 * m[f'{c}_cada']:.2f}" for c in COLUMNS)
        paper = " / ".join(f"{v:.2f}" for v in PAPER[r["setting"]]) if r["setting"] in PAPER else "not reported"
        secs = " / ".join(f"{r['seconds'][s]:.0f}" for s in ("ingest", "synthesize", "train", "fit_cada", "evaluate"))
        lines.append(f"| {r['setting']} | {ours} | {paper} | {secs} |")
    return "\n".join(lines)


def mean_sd(vals: list[float], suffix: str = "") -> str:
    """A table cell: the mean ± sample std of ``vals`` (± 0.0 for one value), ``suffix`` after it; "-" for none."""
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}{suffix}"


SEEDED = ("ingest.seed", "synthesize.seed", "train.seed", "fit_cada.seed")  # a seed draws the shots, the samples, the weights


def code_version() -> dict:
    """What ran: the checkout's commit and the git tree of uniadc_core/ (the library that decides the figures), each
    with ``+dirty`` when tracked files differ from it (uniadc_core/ for the library, also benchmarks/*.py for the commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    def dirty(*paths: str) -> str:
        return "+dirty" if git("status", "--porcelain", "--untracked-files=no", *paths) else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    library = git("rev-parse", "--short", "HEAD:uniadc_core") or "unknown"
    return {"commit": head + dirty("uniadc_core", "benchmarks/*.py"), "library": library + dirty("uniadc_core")}


def logged_runs(out: Path, label: str, setting: str, epochs: int, image_size: int, seed: int, overrides: list[str],
                library: str, weights: list[float]) -> list[dict] | None:
    """The ablation log's rows of one seed of a configuration (one per memory weight), run with the same library
    tree ``library`` (a clean one); None when any is missing (the seed runs again)."""
    path = out.with_name(out.name + "_ablation.json")
    rows = json.loads(path.read_text()) if path.is_file() else []
    labels = [label] if not weights else [f"{label}-w{w:g}" for w in weights]
    found = []
    for name, w in zip(labels, weights or [None], strict=True):
        extra = [] if w is None else [f"train.memory.weight={w} (at evaluation)"]
        match = [r for r in rows if r["label"] == name and r["setting"] == setting and r["epochs"] == epochs
                 and r["image_size"] == image_size and r.get("seed") == seed and r["overrides"] == [*overrides, *extra]
                 and r.get("library") == library and not library.endswith("+dirty")]
        if not match:
            return None
        found.append(match[-1])
    return found
SUMMARY = (*COLUMNS, "type_accuracy_given_anomaly", "false_positive_rate", "miss_rate", "recall_at_1pct_fpr", "type_accuracy_uniadc_protocol",
           "miou_uniadc_protocol", "type_calibration_error", "type_named_share", "type_accuracy_named")


def log_seeds(out: Path, label: str, setting: str, overrides: list[str], runs: list[dict]) -> None:
    """Append one configuration's seeds to ``<out>_seeds.json`` and rewrite ``<out>_seeds.md``: mean +- std."""
    path = out.with_name(out.name + "_seeds.json")
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows.append({"label": label, "setting": setting, "overrides": overrides, "seeds": [r["seed"] for r in runs],
                 "metrics": [r["metrics"] for r in runs], "seconds": [r["seconds"] for r in runs]})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))
    render_seeds(path)


def render_seeds(path: Path) -> None:
    """``<out>_seeds.md`` from ``<out>_seeds.json``; a row's ``note`` (added by hand: what went wrong in a run)
    is printed under the table."""
    rows = json.loads(path.read_text())
    head = "| run | setting | seeds | " + " | ".join(SUMMARY) + " | minutes per stage, wall clock, 2 cores (ingest/synth/train/cada/eval) |"
    lines = [head, "|" + "---|" * (len(SUMMARY) + 4)]
    for r in rows:
        cells = []
        for c in SUMMARY:
            cells.append(mean_sd([100 * m[f"{c}_cada"] for m in r["metrics"] if m.get(f"{c}_cada") is not None]))
        stages = ("ingest", "synthesize", "train", "fit_cada", "evaluate")
        mins = " / ".join(f"{statistics.mean(t[st] for t in r['seconds']) / 60:.1f}" for st in stages)
        lines.append(f"| {r['label']} | {r['setting']} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {mins} |")
    notes = [f"- {r['label']} / {r['setting']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "Notes:", "", *notes]
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# MTD, several seeds\n\nOne row per configuration of `benchmarks/mtd_quality.py --seeds ...`: mean ± std "
                       "over the seeds (each seed draws the shots, the synthetic samples, the weights and the CADA fit), CADA "
                       "variant, %, false-positive and miss rates at the threshold calibrated on held-out normals; this "
                       "CPU, nothing else running. Overrides of each run are in the JSON beside this file.\n\n" + "\n".join(lines) + "\n")


def log_ablation(out: Path, result: dict) -> None:
    """Append a run to ``<out>_ablation.json`` and rewrite the ``.md`` table of all runs."""
    path = out.with_name(out.name + "_ablation.json")
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append(result)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(runs, indent=2))
    head = "| run | setting | epochs | px | overrides | " + " | ".join(COLUMNS) + " | train s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 6)]
    for r in runs:
        m = r["metrics"]
        ours = " | ".join(f"{100 * m[f'{c}_cada']:.2f}" if m.get(f"{c}_cada") is not None else "-" for c in COLUMNS)
        lines.append(f"| {r['label']} | {r['setting']} | {r['epochs']} | {r['image_size']} | {' '.join(r['overrides']) or '-'} | "
                     f"{ours} | {r['seconds']['train']:.0f} |")
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# MTD ablation log\n\nOne row per run of `benchmarks/mtd_quality.py` (CADA variant, %, the scratch "
                       "backbone unless the overrides say otherwise, this CPU), in the order they were run.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--settings", default="all", help=f"comma-separated from {', '.join(SETTINGS)}, or all")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params key (repeatable)")
    p.add_argument("--label", default="", help="name of this run in the ablation log")
    p.add_argument("--seeds", default="", help="comma-separated seeds: each setting runs once per seed and the mean +- std "
                   "goes to <out>_seeds.md ('' = one run with the params' seeds)")
    p.add_argument("--memory-weights", default="", help="comma-separated train.memory.weight values evaluated from one "
                   "training (train with a memory: --set train.memory.weight=1); each is its own row, labelled LABEL-wW")
    p.add_argument("--calibrations", default="", help="comma-separated fit_cada.leave_item_out values (false,true) calibrated "
                   "and evaluated from one training; true rows are labelled LABEL[-wW]-lio")
    p.add_argument("--resume", action="store_true", help="with --seeds: reuse the seeds the ablation log already holds "
                   "for this configuration at this commit")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/mtd_quality"))
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    code = code_version()
    root = Path(a.root)
    if not (root / "MT_Free").is_dir():
        sys.exit(f"{root}: no MTD dataset here (expected MT_Free/); pass --root")
    names = list(SETTINGS) if a.settings == "all" else a.settings.split(",")
    results = []
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [None]
    weights = [float(x) for x in a.memory_weights.split(",")] if a.memory_weights else []
    calibrations = [x.strip().lower() == "true" for x in a.calibrations.split(",")] if a.calibrations else []
    if calibrations and a.resume:
        sys.exit("--calibrations: not with --resume (the ablation log does not key rows by calibration)")
    label = a.label or "baseline"
    for name in names:
        runs: dict[str, list[dict]] = {}
        for seed in seeds:
            overrides = [*a.set, *([f"{k}={seed}" for k in SEEDED] if seed is not None else [])]
            kept = (logged_runs(Path(a.out), label, name, a.epochs, a.image_size, seed, overrides, code["library"], weights)
                    if a.resume and a.seeds else None)
            if kept is not None:
                print(name, seed, f"resumed: {len(kept)} rows from the ablation log (library {code['library']})", flush=True)
                for r in kept:
                    runs.setdefault(r["label"], []).append(r)
                continue
            for r in run_setting(name, root, ROOT / "benchmarks/work" / name, a.epochs, a.image_size, overrides, weights, calibrations):
                w, lio, _ = r.pop("memory_weight"), r.pop("leave_item_out"), r.pop("type_source")
                run_label = label + ("" if w is None else f"-w{w:g}") + ("-lio" if lio else "")
                r.update({"label": run_label, "epochs": a.epochs, "image_size": a.image_size, "seed": seed,
                          **code})
                runs.setdefault(r["label"], []).append(r)
                log_ablation(Path(a.out), r)
                print(name, seed, r["label"], json.dumps({k: round(v, 4) for k, v in r["metrics"].items() if k.endswith("_cada")}),
                      r["seconds"], flush=True)
        if a.seeds:
            for run_label, group in runs.items():
                kept = [o for o in group[0]["overrides"] if o.split("=", 1)[0] not in SEEDED]  # the seeds have their own column
                log_seeds(Path(a.out), run_label, name, kept, group)
        results += [r for group in runs.values() for r in group]
    if a.seeds:
        return
    text = table(results)
    print(text)
    out = Path(a.out)
    if names != list(SETTINGS) or a.set or weights or calibrations:
        print(f"partial or modified run: logged in {out.name}_ablation.md; {out.name}.md (all four settings) left as it is")
        return
    command = "python benchmarks/mtd_quality.py " + " ".join(sys.argv[1:])
    env = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"command": command, "machine": env, "epochs": a.epochs, "image_size": a.image_size, "results": results}, indent=2))
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"# MTD quality benchmark\n\nCommand: `{command}`  \nMachine: {env}; epochs {a.epochs}, "
                       f"{a.image_size} px, scratch backbone, no pretrained weights. Metrics in %, CADA variant, "
                       f"test = this copy's test half.\n\n{text}\n")


if __name__ == "__main__":
    main()
