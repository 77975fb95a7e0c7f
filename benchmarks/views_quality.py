"""Scoring options on trained models: the same models evaluated with ``views`` [] and [hflip] (``train.test_views``),
or, with ``--context W``, a tile model's whole-image context at weight 0 and W (``train.tile_context``), or, with
``--image-texture W``, the image-level texture term at weight 0 and W (``train.image_texture``).

    .venv/bin/python benchmarks/views_quality.py RUN_DIR [RUN_DIR ...] [--views hflip] [--out benchmarks/results/views_quality]
    .venv/bin/python benchmarks/views_quality.py RUN_DIR [RUN_DIR ...] --context 0.5 [--views hflip] --out benchmarks/results/context_quality
    .venv/bin/python benchmarks/views_quality.py RUN_DIR [RUN_DIR ...] --image-texture 0.5 [--context 0.5] [--views hflip] --out benchmarks/results/image_texture_quality

Each RUN_DIR holds a pipeline's ``models/`` (discriminator + cada) and the ``manifest.parquet`` it was trained on
(``benchmarks/budget_quality.py`` leaves them in ``benchmarks/work/budget_<setting>/``: copy them out per seed).
The views are set on the loaded model, so every score goes through the library's one path
(``Discriminator.component_maps``); the CADA regressor and the threshold stay those fitted without views (on one
object class CADA's statistics are the same for every image, so the image AUROC does not depend on them). The
context changes the score's units, so with ``--context`` both rows get the context statistics measured on the
manifest's held-out normals as training measures them (``attach_context``; weight 0 attaches none) and a CADA
refitted by the library's ``fit`` with ``params.yaml``'s ``fit_cada`` (a tile model's regressor reads real images
only, so no shards are needed): the false-positive and miss rates at the calibrated threshold then hold for each
row. The image texture term, too, changes the score's units: it is attached and CADA refitted the same way (weight
0 attaches none). Writes ``<out>.json`` (one row per model and option: the CADA variant's metrics, evaluation
seconds, and the per-type table) and ``<out>.md`` (mean ± std over the models). Run it with nothing else on the
machine: it reports seconds.
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
import pyarrow as pa  # noqa: E402

from mtd_quality import mean_sd  # noqa: E402

from uniadc_core.cada.fit import fit  # noqa: E402
from uniadc_core.cada.regressor import load_cada  # noqa: E402
from uniadc_core.config import EvaluateConfig, FitCadaConfig, load_params  # noqa: E402
from uniadc_core.evaluation.evaluate import evaluate  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.metrics import auroc  # noqa: E402
from uniadc_core.model.scoring import attach_context, attach_image_texture  # noqa: E402
from uniadc_core.model.train import holdout_images  # noqa: E402
from uniadc_core.serving.detector import Detector  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro", "false_positive_rate", "miss_rate")


def run(run_dir: Path, manifest: pl.DataFrame, views: list[str], cfg: EvaluateConfig, context: float | None = None,
        fit_cfg: FitCadaConfig | None = None, texture: float | None = None) -> dict:
    detector = Detector.load(run_dir / "models")
    detector.model.config.views = list(views)
    with tempfile.TemporaryDirectory() as tmp:
        if context is not None or texture is not None:  # the score's units change: statistics and CADA as the pipeline makes them
            model = detector.model
            if context is not None:
                attach_context(model, holdout_images(manifest, model) if context > 0 else [], context)
            if texture is not None:
                shots = manifest.filter(pl.col("role") == "normal_shot")["path"].to_list()
                attach_image_texture(model, shots, holdout_images(manifest, model) if texture > 0 else [], texture)
            fit(model, manifest, pa.table({}), fit_cfg, Path(tmp) / "cada")
            detector = Detector(model, load_cada(Path(tmp) / "cada"))
        t0 = time.perf_counter()
        flat = evaluate(detector, manifest, cfg, tmp)
        seconds = time.perf_counter() - t0
        per_type = pl.read_csv(Path(tmp) / "per_type.csv").to_dicts()
        pred = pl.read_csv(Path(tmp) / "predictions.csv")
    for row in per_type:  # image AUROC of this type's images against the normal images (no type guess involved)
        sel = pred.filter(pl.col("true_type").is_in(["normal", row["defect_type"]]))
        row["image_auroc"] = auroc(sel["score"].to_numpy(), (sel["true_type"] != "normal").to_numpy())
    return {"run": str(run_dir), "views": list(views), "context": context, "image_texture": texture,
            "evaluate_seconds": round(seconds, 1), "metrics": {k: flat[f"{k}_cada"] for k in METRICS}, "per_type": per_type}


def render(rows: list[dict], path: Path) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((tuple(r["views"]), r.get("context"), r.get("image_texture")), []).append(r)

    types = [t["defect_type"] for t in rows[0]["per_type"]]
    head = ("| views | tile context | image texture | models | " + " | ".join(METRICS) + " | evaluate s | "
            + " | ".join(f"{t} image AUROC" for t in types) + " | " + " | ".join(f"{t} pixel AUROC" for t in types) + " |")
    lines = [head, "|" + "---|" * (len(METRICS) + 2 * len(types) + 5)]
    for (views, context, texture), group in groups.items():
        metrics = [mean_sd([100 * g["metrics"][k] for g in group]) for k in METRICS]
        by_type = [mean_sd([100 * x[key] for g in group for x in g["per_type"] if x["defect_type"] == t])
                   for key in ("image_auroc", "pixel_auroc") for t in types]
        lines.append(f"| {', '.join(views) or 'none'} | {'as trained' if context is None else context} | "
                     f"{'as trained' if texture is None else texture} | {len(group)} | " + " | ".join(metrics)
                     + f" | {statistics.median(g['evaluate_seconds'] for g in group):.0f} | " + " | ".join(by_type) + " |")
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text("# Scoring options on trained models\n\n`benchmarks/views_quality.py`: the same models scored with and "
                       "without flipped views, a tile model's whole-image context or the image texture term (CADA refitted where either of the last two is set), CADA variant, mean ± std over the models, %; evaluate s: median seconds of the evaluation stage (2 cores; "
                       "a figure only when nothing else ran: see budget_quality_notes.md).\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="folders holding models/ and manifest.parquet")
    p.add_argument("--views", default=None, help="the views to compare with none, comma-separated (hflip, vflip; default hflip); "
                   "with --context, a third row scores with these views and the context")
    p.add_argument("--context", type=float, default=None,
                   help="compare a tile model's whole-image context at 0 and this weight instead of views (refits CADA)")
    p.add_argument("--image-texture", type=float, default=None,
                   help="compare the image-level texture term at 0 and this weight instead of views (refits CADA); with "
                        "--context and/or --views, a third row adds them")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/views_quality")
    a = p.parse_args()
    for d in a.runs:
        if not (d / "models").is_dir() or not (d / "manifest.parquet").is_file():
            sys.exit(f"{d}: expected models/ and manifest.parquet inside (a pipeline's work folder, copied per seed)")
    params, rows = load_params(ROOT / "params.yaml"), []
    if a.image_texture is not None:
        options = [([], None, 0.0), ([], None, a.image_texture)]
        if a.views or a.context is not None:  # a third row scores with all of them
            options.append((a.views.split(",") if a.views else [], a.context, a.image_texture))
    elif a.context is None:
        options = [([], None, None), ((a.views or "hflip").split(","), None, None)]
    else:
        options = [([], 0.0, None), ([], a.context, None), *([(a.views.split(","), a.context, None)] if a.views else [])]
    for d in a.runs:
        manifest = pl.read_parquet(d / "manifest.parquet")
        for views, context, texture in options:
            rows.append(run(d, manifest, views, params.evaluate, context, params.fit_cada, texture))
            m = rows[-1]["metrics"]
            print(d, views or "none", context, texture, {k: round(100 * v, 1) for k, v in m.items()}, rows[-1]["evaluate_seconds"], "s", flush=True)
    with atomic_path(a.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))
    render(rows, a.out)


if __name__ == "__main__":
    main()
