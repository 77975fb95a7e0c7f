"""Test-time views on trained models: the same models evaluated with ``views`` [] and [hflip] (``train.test_views``).

    .venv/bin/python benchmarks/views_quality.py RUN_DIR [RUN_DIR ...] [--views hflip] [--out benchmarks/results/views_quality]

Each RUN_DIR holds a pipeline's ``models/`` (discriminator + cada) and the ``manifest.parquet`` it was trained on
(``benchmarks/budget_quality.py`` leaves them in ``benchmarks/work/budget_<setting>/``: copy them out per seed).
The views are set on the loaded model, so every score goes through the library's one path
(``Discriminator.component_maps``); the CADA regressor and the threshold stay those fitted without views (on one
object class CADA's statistics are the same for every image, so the image AUROC does not depend on them). Writes
``<out>.json`` (one row per model and views: the CADA variant's metrics, evaluation seconds, and the per-type table)
and ``<out>.md`` (mean ± std over the models). Run it with nothing else on the machine: it reports seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import polars as pl  # noqa: E402

from mtd_quality import mean_sd  # noqa: E402

from uniadc_core.config import EvaluateConfig, load_params  # noqa: E402
from uniadc_core.evaluation.evaluate import evaluate  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.serving.detector import Detector  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro", "false_positive_rate", "miss_rate")


def run(run_dir: Path, manifest: pl.DataFrame, views: list[str], cfg: EvaluateConfig) -> dict:
    detector = Detector.load(run_dir / "models")
    detector.model.config.views = list(views)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        flat = evaluate(detector, manifest, cfg, tmp)
        seconds = time.perf_counter() - t0
        per_type = pl.read_csv(Path(tmp) / "per_type.csv").to_dicts()
    return {"run": str(run_dir), "views": list(views), "evaluate_seconds": round(seconds, 1),
            "metrics": {k: flat[f"{k}_cada"] for k in METRICS}, "per_type": per_type}


def render(rows: list[dict], path: Path) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["views"]), []).append(r)

    types = [t["defect_type"] for t in rows[0]["per_type"]]
    head = "| views | models | " + " | ".join(METRICS) + " | evaluate s | " + " | ".join(f"{t} pixel AUROC" for t in types) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + len(types) + 3)]
    for views, group in groups.items():
        metrics = [mean_sd([100 * g["metrics"][k] for g in group]) for k in METRICS]
        by_type = [mean_sd([100 * x["pixel_auroc"] for g in group for x in g["per_type"] if x["defect_type"] == t]) for t in types]
        lines.append(f"| {', '.join(views) or 'none'} | {len(group)} | " + " | ".join(metrics)
                     + f" | {statistics.median(g['evaluate_seconds'] for g in group):.0f} | " + " | ".join(by_type) + " |")
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# Test-time views\n\n`benchmarks/views_quality.py`: the same models scored with and without flipped views, "
                       "CADA variant, mean ± std over the models, %; evaluate s: median seconds of the evaluation stage (2 cores; "
                       "a figure only when nothing else ran: see budget_quality_notes.md).\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="folders holding models/ and manifest.parquet")
    p.add_argument("--views", default="hflip", help="the views to compare with none, comma-separated (hflip, vflip)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/views_quality")
    a = p.parse_args()
    for d in a.runs:
        if not (d / "models").is_dir() or not (d / "manifest.parquet").is_file():
            sys.exit(f"{d}: expected models/ and manifest.parquet inside (a pipeline's work folder, copied per seed)")
    cfg, rows = load_params(ROOT / "params.yaml").evaluate, []
    for d in a.runs:
        manifest = pl.read_parquet(d / "manifest.parquet")
        for views in ([], a.views.split(",")):
            rows.append(run(d, manifest, views, cfg))
            m = rows[-1]["metrics"]
            print(d, views or "none", {k: round(100 * v, 1) for k, v in m.items()}, rows[-1]["evaluate_seconds"], "s", flush=True)
    with atomic_path(a.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))
    render(rows, a.out)


if __name__ == "__main__":
    main()
