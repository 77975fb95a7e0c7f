"""Exported runtime against torch: ms/image and agreement, on one trained models folder.

    .venv/bin/python benchmarks/export_speed.py [--model benchmarks/work/full_1anom/models]
        [--images ../shared/datasets/mtd] [--count 32] [--repeats 5] [--out benchmarks/results/export_speed.md]

The default model is the one ``benchmarks/mtd_quality.py --settings full_1anom --image-size 256`` leaves in its work
folder (the default Lite2 memory detector, last seed). In one process: ``uniadc export`` of the folder (seconds),
then the same ``--count`` images decided by the torch ``Detector`` (batches of 1 and of 16) and by the
``OnnxDetector`` (one image at a time, as its graph takes them), medians of ``--repeats`` runs after a warm-up,
decoding excluded, preprocessing, model and decision included. Also the largest difference of the aligned scores
and the number of images whose decision, type or regions differ.
Where ``openvino`` is installed (it is not a dependency), its CPU runtime runs the same model.onnx the same way, at
float32 (its default here is bfloat16, which moved a raw score by 0.37), to tell whether it would earn its place.
Run it alone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.export import export_model  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402
from uniadc_core.runtime import OnnxDetector  # noqa: E402
from uniadc_core.serving.detector import Detector  # noqa: E402
from uniadc_core.serving.predict import result  # noqa: E402


def median_ms(fn, repeats: int, count: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / count


def rows(detector, images: list[np.ndarray], batch: int) -> list[dict]:
    d = detector.detect(images, batch_size=batch)
    return [result(detector, d, i, im.shape[:2])[0] for i, im in enumerate(images)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "benchmarks/work/full_1anom/models"))
    p.add_argument("--images", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/export_speed.md"))
    a = p.parse_args()
    detector = Detector.load(a.model)
    files = sorted(Path(a.images).rglob("*.jpg"))[:: 7][: a.count] or sorted(Path(a.images).rglob("*.png"))[: a.count]
    images = [detector.preprocess.decode_image(f) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(detector, Path(tmp) / "exported", source=a.model)
        export_s = time.perf_counter() - t0
        runtime = OnnxDetector.load(Path(tmp) / "exported")
        size_mb = (Path(tmp) / "exported/model.onnx").stat().st_size / 1e6
        want, got = rows(detector, images, 16), rows(runtime, images, 1)
        worst = max(abs(g["score"] - w["score"]) for g, w in zip(got, want, strict=True))
        differ = sum((g["is_anomaly"], g["defect_type"], g["regions"] and [(r["defect_type"], r["area"]) for r in g["regions"]])
                     != (w["is_anomaly"], w["defect_type"], w["regions"] and [(r["defect_type"], r["area"]) for r in w["regions"]])
                     for g, w in zip(got, want, strict=True))
        timings = {
            "torch, batch 1": median_ms(lambda: [detector.detect([im], batch_size=1) for im in images], a.repeats, len(images)),
            "torch, batch 16": median_ms(lambda: detector.detect(images, batch_size=16), a.repeats, len(images)),
            "onnxruntime, one at a time": median_ms(lambda: runtime.detect(images), a.repeats, len(images)),
        }
        try:
            import openvino
        except ImportError:
            openvino = None
        if openvino is not None:
            compiled = openvino.Core().compile_model(str(Path(tmp) / "exported/model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            pre = runtime.preprocess

            def run_openvino():
                return [compiled(np.ascontiguousarray(pre.image(im).transpose(2, 0, 1)[None]))[0] for im in images]

            ov_raw = np.concatenate(run_openvino())
            ort_raw = np.array([r["raw_score"] for r in got])
            timings[f"openvino {openvino.__version__.split('-')[0]}, one at a time (raw score within {np.abs(ov_raw - ort_raw).max():.1e})"] = \
                median_ms(run_openvino, a.repeats, len(images))
    config = detector.model.config
    lines = [f"# Exported runtime against torch\n\nCommand: `python benchmarks/export_speed.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; model "
             f"`{a.model}` ({config.backbone}, {config.image_size} px, memory of {len(detector.model.memory or [])} patches); "
             f"{len(images)} images of `{a.images}`; medians of {a.repeats} runs after a warm-up, decoding excluded.\n",
             f"Export: {export_s:.1f} s, model.onnx {size_mb:.1f} MB. Largest aligned-score difference from torch (batch 16): "
             f"{worst:.2e}; images whose decision, type or regions differ: {differ} of {len(images)}.\n",
             "| path | ms/image |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
