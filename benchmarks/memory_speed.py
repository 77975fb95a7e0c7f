"""Normal-feature memory speed: coreset build time, and inference ms/image at 256 px by memory size.

    .venv/bin/python benchmarks/memory_speed.py [--repeats 5] [--sizes 4096,10000,16384,50000,200000]
        [--weights ../shared/weights/mobilenet_v2_imagenet.safetensors] [--out benchmarks/results/memory_speed.md]

Inference is the whole ``Discriminator.predict`` of a torchvision MobileNetV2 discriminator
(the default layers, patch grid stride 8: 32 x 32 patches per image) on batches of 16
images at 256 px, with no memory and with memories of each size; build times are the greedy
k-centre coreset and the random selection of the default memory size (``train.memory.size``) out
of 200000 patches. Figures are medians of ``--repeats`` runs (after one warm-up), measured in the
same process, so the ratios compare like with like. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import MemoryConfig  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.model.cnn import default_layers  # noqa: E402
from uniadc_core.model.discriminator import Discriminator, ModelConfig  # noqa: E402
from uniadc_core.model.memory import NormalMemory  # noqa: E402
from uniadc_core.model.terms import DISCRIMINATOR_ONLY, memory_terms  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", default="4096,10000,16384,50000,200000")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--weights", default="", help="torchvision weights file ('' = random init: the same speed)")
    p.add_argument("--layers", default="", help="comma-separated modules to tap ('' = the mobilenet_v2 default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/memory_speed.md"))
    a = p.parse_args()
    torch.manual_seed(0)
    layers = a.layers.split(",") if a.layers else default_layers("mobilenet_v2")
    options = {"arch": "mobilenet_v2", "weights": a.weights, "layers": layers, "grid": 8}
    config = ModelConfig(defect_types=["a", "b", "c"], backbone="torchvision", backbone_options=options, image_size=256,
                         embed_dim=32, mean=[0.5] * 3, std=[0.5] * 3)
    model = Discriminator(config).eval()
    images = torch.randint(0, 256, (a.batch, 3, 256, 256), dtype=torch.uint8)
    channels = model.patch_features(images[:1]).shape[1]
    rows = []

    base = median_seconds(lambda: model.predict(images), a.repeats)
    rows.append(("no memory (discriminator only)", base))
    for size in [int(s) for s in a.sizes.split(",")]:
        model.memory = NormalMemory(torch.randn(size, channels))
        model.config.memory, model.config.terms = {"k": 1, "smooth": 4.0}, memory_terms(0.5)
        rows.append((f"memory of {size} patches, fused", median_seconds(lambda: model.predict(images), a.repeats)))
    model.memory, model.config.memory, model.config.terms = None, {}, DISCRIMINATOR_ONLY

    pool = torch.randn(200000, channels)
    size = MemoryConfig().size
    build = {m: median_seconds(lambda m=m: NormalMemory.build(pool, size, m, 0), max(1, a.repeats // 2)) for m in ("greedy", "random")}

    lines = [f"# Normal-memory speed\n\nCommand: `python benchmarks/memory_speed.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
             f"MobileNetV2 {'/'.join(layers)}, {channels} channels, 32 x 32 patches per 256 px image, batch {a.batch}; "
             f"median of {a.repeats} runs after a warm-up.\n",
             "| inference | ms / image | vs no memory |", "|---|---|---|"]
    for name, sec in rows:
        lines.append(f"| {name} | {1000 * sec / a.batch:.1f} | {sec / base:.2f}x |")
    lines += ["", f"| memory build (200000 patches -> {size}, the default size) | seconds |", "|---|---|"]
    lines += [f"| {m} | {s:.1f} |" for m, s in build.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(a.out) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
