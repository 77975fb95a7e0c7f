"""`uniadc predict` over many files: peak resident memory and throughput at 500 and 5,000 images.

    .venv/bin/python benchmarks/predict_memory.py [--counts 500,5000] [--batch-size 32] [--out benchmarks/results/predict_memory.md]

Builds once, in ``benchmarks/work/predict_memory/``, a small model with the pipeline's own library
calls (the demo's three classes at 128 px, the scratch backbone, one epoch: quality is not the
point) and a folder of distinct 128 px PNGs per count (the demo's test images with seeded noise).
Then runs the real command, ``python -m flows.cli predict FOLDER --model MODELS``, once per count in
a fresh process, and reads that process's peak resident set size (``getrusage`` of the child) and
its wall time. Memory that stays flat from 500 to 5,000 images means decoding streams in bounded
batches and nothing grows with the number of files but the result rows. Run it with nothing else
on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import DemoConfig, FitCadaConfig, IngestConfig, SynthesizeConfig, TrainConfig  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402

WORK = ROOT / "benchmarks/work/predict_memory"


def build_models() -> Path:
    """A models folder (discriminator + cada), made once."""
    from uniadc_core.cada.fit import fit
    from uniadc_core.data.ingest import ingest
    from uniadc_core.data.shards import read_samples
    from uniadc_core.model.discriminator import load_model
    from uniadc_core.model.train import train
    from uniadc_core.synthesis.synthesize import load_inputs, synthesize

    models = WORK / "models"
    if (models / "cada" / "config.json").is_file():
        return models
    demo = DemoConfig(train_normals=24, test_normals=8, test_per_defect=4)
    result = ingest(IngestConfig(kind="demo", root=str(WORK / "raw"), demo=demo), WORK / "prepared")
    synthesize(result.manifest_path, result.vocabulary_path, WORK / "synthetic", SynthesizeConfig(samples_per_type=8))
    manifest, vocab = load_inputs(result.manifest_path, result.vocabulary_path)
    train(manifest, vocab, WORK / "synthetic", replace(TrainConfig(), epochs=1, min_epoch_samples=0), models / "discriminator")
    fit(load_model(models / "discriminator"), manifest, read_samples(WORK / "synthetic"), FitCadaConfig(steps=50), models / "cada")
    return models


def make_folder(count: int) -> Path:
    """``count`` distinct PNGs: the demo's test images with seeded noise (made once per count)."""
    folder = WORK / f"images_{count}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((WORK / "raw").rglob("test/*/*.png"))
    rng = np.random.default_rng(count)
    for i in range(count):
        base = np.asarray(Image.open(sources[i % len(sources)]).convert("RGB"), np.int16)
        noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.png", compress_level=1)
    done.write_text(f"{count}\n")
    return folder


# the CLI's own main in a fresh interpreter, which then prints its peak resident set size (KiB on Linux)
CHILD = ("import resource, sys\nfrom flows.cli import main\nrc = main(sys.argv[1:])\n"
         "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def run_predict(folder: Path, models: Path, batch_size: int) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, the command's summary line) of one `uniadc predict` in a fresh process."""
    out = WORK / f"{folder.name}.csv"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "predict", str(folder), "--model", str(models), "--out", str(out),
                           "--batch-size", str(batch_size)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    peak = next(int(line.split()[1]) for line in lines if line.startswith("peak_rss_kib"))
    return peak / 1024, wall, next(line for line in lines if " images (" in line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="500,5000")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_memory.md"))
    a = p.parse_args()
    counts = sorted(int(c) for c in a.counts.split(","))
    models = build_models()
    rows = []
    for n in counts:
        folder = make_folder(n)
        peak, wall, summary = run_predict(folder, models, a.batch_size)
        rows.append((n, peak, wall, n / wall))
        print(f"{n} images: peak RSS {peak:.0f} MiB, {wall:.1f} s, {n / wall:.1f} images/s  ({summary})", flush=True)
    lines = [
        "# `uniadc predict`: memory and throughput by number of files",
        "",
        f"Command: `python benchmarks/predict_memory.py --counts {a.counts} --batch-size {a.batch_size}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; the demo's scratch model "
        f"(128 px, 3 classes), 128 px PNG inputs, batch {a.batch_size}; one fresh process per row (start-up and model "
        f"loading included in the wall time); nothing else running.",
        "",
        "| images | peak resident memory (MiB) | wall seconds | images / s |",
        "|---|---|---|---|",
        *[f"| {n} | {peak:.0f} | {wall:.1f} | {rate:.1f} |" for n, peak, wall, rate in rows],
        "",
    ]
    with atomic_path(a.out) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
