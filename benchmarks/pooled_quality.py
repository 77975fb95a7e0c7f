"""Pooled multi-class benchmark: MTD + KolektorSDD + DeepPCB as three object classes of one model, scored
with no class label (CADA), against no alignment, the class-aware oracle, and each class trained alone.

    .venv/bin/python benchmarks/pooled_quality.py [--shared ../shared] [--seeds 0,1,2] [--image-size 256]
        [--epochs 12] [--set train.backbone=torchvision ...] [--label NAME] [--alone] [--runs pooled,alone-commutator] [--resume]

Each seed runs ingest (``kind: sources``) -> synthesize -> train -> fit_cada -> evaluate with the library
calls the flows use, in ``benchmarks/work/pooled/``; with ``--alone`` every class is also run by itself
with the same params. Every row records the commit and the library tree it ran with; ``--resume`` skips a
(run, seed) whose rows are logged with the same params and the same clean library tree. Results are appended to
``<out>.json`` and ``<out>.md`` is rewritten: per class
and pooled, per variant (none / cada / oracle), mean +- std over the seeds of image AUROC, pixel AUROC,
AUPRO, F1-max, type accuracy, mIoU and the false-positive and miss rates at the calibrated threshold.
The first seed's per-class score histograms before and after alignment are copied beside the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import polars as pl  # noqa: E402
from mtd_quality import SEEDED, code_version, mean_sd, run_pipeline  # noqa: E402

from uniadc_core.evaluation.report import METRICS, VARIANTS  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402


def sources(shared: Path) -> list[dict]:
    data = shared / "datasets"
    return [
        {"kind": "mtd", "root": str(data / "mtd")},
        {"kind": "kolektorsdd", "root": str(data / "kolektorsdd"), "object_class": "commutator"},
        {"kind": "deeppcb", "root": str(data / "deeppcb"), "object_class": "pcb"},
    ]


def raw_params(srcs: list[dict], image_size: int, epochs: int) -> dict:
    return {
        # one MTD image has an all-soft mask: kept without pixel truth (as benchmarks/mtd_quality.py)
        "ingest": {"kind": "sources", "sources": srcs, "seed": 0, "holdout_fraction": 0.25, "allow_missing_masks": True,
                   "normal_shots": "all", "anomaly_shots": 1},
        "synthesize": {"image_size": image_size, "samples_per_type": 120},
        "train": {"image_size": image_size, "epochs": epochs, "min_epoch_samples": 256},
        "fit_cada": {"threshold": "auto"},
    }


def rows_of(result: dict, run: str, seed: int) -> list[dict]:
    """One row per (class or 'pooled', variant) of a pipeline result."""
    m = result["metrics"]
    out = [{"run": run, "seed": seed, "object_class": "pooled", "variant": v, **{k: m.get(f"{k}_{v}") for k in METRICS}}
           for v in VARIANTS]
    per_class = pl.read_csv(Path(result["reports"]) / "per_class.csv", infer_schema_length=None)
    for r in per_class.iter_rows(named=True):
        out += [{"run": run, "seed": seed, "object_class": r["object_class"], "variant": v,
                 **{k: r.get(f"{k}_{v}") for k in METRICS}} for v in VARIANTS]
    return out


def render(path: Path) -> None:
    rows = json.loads(path.read_text())
    frame = pl.DataFrame(rows, infer_schema_length=None)
    head = "| run | class | variant | seeds | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for (run, cls, variant), group in sorted(frame.group_by(["run", "object_class", "variant"]), key=lambda g: g[0]):
        cells = []
        for k in METRICS:
            cells.append(mean_sd([100 * x for x in group[k].to_list() if x is not None]))
        lines.append(f"| {run} | {cls} | {variant} | {group['seed'].n_unique()} | " + " | ".join(cells) + " |")
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# Pooled classes: MTD + KolektorSDD + DeepPCB, one model, no class label\n\n"
                       "`benchmarks/pooled_quality.py`: mean ± std over seeds (a seed draws the shots, the samples, the "
                       "weights and the CADA fit), %, false-positive and miss rates at the threshold calibrated on "
                       "held-out normals; `pooled` rows judge all test images together, class rows each class's images "
                       "(of the pooled model, or of the class trained alone in the `-alone` runs). This CPU.\n\n"
                       + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params key (repeatable)")
    p.add_argument("--label", default="pooled")
    p.add_argument("--alone", action="store_true", help="also train and evaluate every class by itself (the reference)")
    p.add_argument("--runs", default="", help="only these runs, comma-separated: 'pooled' and/or 'alone-<class>' "
                   "(e.g. alone-commutator; implies --alone for those); default all")
    p.add_argument("--resume", action="store_true", help="skip the (run, seed) pairs already logged with these params "
                   "and this library tree")
    p.add_argument("--type-sources", default="", help="also evaluate each training with the defect type from 'head' "
                   "(the type head alone; rows named <run>-head) beside 'shots' (as trained), e.g. shots,head")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/pooled_quality"))
    a = p.parse_args()
    shared = Path(a.shared)
    srcs = sources(shared)
    absent = [s["root"] for s in srcs if not Path(s["root"]).is_dir()]
    if absent:
        sys.exit(f"datasets not found: {absent}; pass --shared (the folder holding datasets/mtd, kolektorsdd, deeppcb)")
    out = Path(a.out).with_suffix(".json")
    log = json.loads(out.read_text()) if out.is_file() else []
    alone = [(f"alone-{s.get('object_class', s['kind'])}", [s]) for s in srcs]
    runs = [("pooled", srcs)] + (alone if a.alone or a.runs else [])
    if a.runs:
        wanted = a.runs.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in runs})
        if unknown:
            sys.exit(f"--runs: unknown run(s) {unknown}; choose from {[name for name, _ in runs]}")
        runs = [r for r in runs if r[0] in wanted]
    runs = [(a.label if name == "pooled" else f"{a.label}-{name}", group) for name, group in runs]
    code = code_version()
    for seed in [int(x) for x in a.seeds.split(",")]:
        for run, group in runs:
            same = [r for r in log if r["run"] == run and r["seed"] == seed and r["overrides"] == a.set and r["epochs"] == a.epochs
                    and r["image_size"] == a.image_size and r.get("library") == code["library"]]
            if a.resume and same and not code["library"].endswith("+dirty"):
                print(run, seed, f"resumed: logged with library {code['library']}", flush=True)
                continue
            overrides = [*a.set, *(f"{k}={seed}" for k in SEEDED)]
            kinds = [s for s in a.type_sources.split(",") if s]
            results = run_pipeline(raw_params(group, a.image_size, a.epochs), ROOT / "benchmarks/work/pooled", overrides,
                                   type_sources=kinds)
            for result in results:
                named = run if result["type_source"] in (None, "shots") else f"{run}-{result['type_source']}"
                rows = rows_of(result, named, seed)
                for r in rows:
                    r.update({"overrides": a.set, "image_size": a.image_size, "epochs": a.epochs, "seconds": result["seconds"], **code})
                log += rows
            result = results[0]
            with atomic_path(out) as tmp:
                tmp.write_text(json.dumps(log, indent=2))
            render(out)
            plot = Path(result["reports"]) / "plots/scores.png"
            if seed == int(a.seeds.split(",")[0]) and run == a.label and plot.is_file():
                shutil.copy(plot, out.with_name(f"{out.stem}_{run}_scores.png"))
            pooled = {r["variant"]: r["image_auroc"] for r in rows_of(result, run, seed) if r["object_class"] == "pooled"}
            print(run, seed, json.dumps(pooled), result["seconds"], flush=True)


if __name__ == "__main__":
    main()
