"""Normal-feature memory speed: the coreset of MTD's 761 train normals, and inference ms/image, per backbone.

    .venv/bin/python benchmarks/memory_speed.py [--repeats 5] [--backbones lite2,mobilenet_v2]
        [--mtd ../shared/datasets/mtd] [--out benchmarks/results/memory_speed.md]

For each backbone, in one process (so the ratios compare like with like):
- **coreset**: the patch features of MTD's 761 train normals at 256 px (``train_normals.txt``; random images of the
  same count where the dataset is absent) drawn as training draws them (``fusion._patches``, at most
  ``train.memory.max_patches``) and the greedy coreset of ``train.memory.size``; seconds for each part, one run;
- **inference**: the whole ``Discriminator.predict`` (backbone, memory distance, fusion with the type head's map,
  image score, type) on batches of 16 images at 256 px, with no memory and with the default memory size; medians
  of ``--repeats`` runs after a warm-up.
Lite2 is the default detector (``train.timm`` defaults); MobileNetV2 is the torchvision default (blocks 3/6/10,
grid 8) with the shared weights where they are present (random weights run at the same speed). Run it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import MemoryConfig, TimmConfig  # noqa: E402
from uniadc_core.data.preprocess import Preprocess  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402
from uniadc_core.model.cnn import default_layers  # noqa: E402
from uniadc_core.model.discriminator import Discriminator, ModelConfig  # noqa: E402
from uniadc_core.model.fusion import _patches  # noqa: E402
from uniadc_core.model.memory import NormalMemory  # noqa: E402
from uniadc_core.model.terms import DISCRIMINATOR_ONLY, memory_terms  # noqa: E402

MOBILENET = ROOT.parent / "shared/weights/mobilenet_v2_imagenet.safetensors"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_for(name: str) -> tuple[Discriminator, str]:
    if name == "lite2":
        options = {**dataclasses.asdict(TimmConfig()), "weights_sha256": ""}
        what = f"EfficientNet-Lite2 (timm), levels {options['levels']}, grid {options['grid']}, unit-length levels"
        config = ModelConfig(defect_types=["a", "b", "c"], backbone="timm", backbone_options=options, image_size=256, embed_dim=32,
                             mean=[0.5] * 3, std=[0.5] * 3)
    else:
        layers = default_layers("mobilenet_v2")
        options = {"arch": "mobilenet_v2", "weights": str(MOBILENET) if MOBILENET.is_file() else "", "layers": layers, "grid": 8}
        what = f"MobileNetV2 (torchvision), {'/'.join(layers)}, grid 8"
        config = ModelConfig(defect_types=["a", "b", "c"], backbone="torchvision", backbone_options=options, image_size=256,
                             embed_dim=32, mean=[0.5] * 3, std=[0.5] * 3)
    return Discriminator(config).eval(), what


def mtd_normals(root: Path, count: int = 761) -> tuple[torch.Tensor, str]:
    listed = root / "train_normals.txt"
    if not listed.is_file():
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (count, 3, 256, 256), dtype=torch.uint8, generator=gen), f"{count} random images (no MTD here)"
    pre = Preprocess(256, "stretch")
    names = listed.read_text().split()
    images = [pre.image(pre.decode_image(root / "MT_Free" / "Imgs" / n)) for n in names]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), f"MTD's {len(names)} train normals"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbones", default="lite2,mobilenet_v2")
    p.add_argument("--mtd", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/memory_speed.md"))
    a = p.parse_args()
    torch.manual_seed(0)
    mem = MemoryConfig()
    normals, source = mtd_normals(Path(a.mtd))
    images = normals[:a.batch]
    lines = [f"# Normal-memory speed\n\nCommand: `python benchmarks/memory_speed.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; 256 px; coreset of "
             f"{source} (at most {mem.max_patches} patches drawn, {mem.size} kept, greedy), one run; inference on batches of "
             f"{a.batch}, median of {a.repeats} runs after a warm-up, memory of {mem.size} patches fused with the type head's map.\n",
             "| backbone | channels | patches / image | features of the normals, s | coreset, s | coreset total, s "
             "| inference, no memory, ms/image | inference with memory, ms/image |",
             "|---|---|---|---|---|---|---|---|"]
    for name in a.backbones.split(","):
        model, what = model_for(name)
        t0 = time.perf_counter()
        patches, total, _ = _patches(model, normals, "none", mem.max_patches, 0)
        extract = time.perf_counter() - t0
        t0 = time.perf_counter()
        memory = NormalMemory.build(patches, mem.size, mem.selection, 0)
        build = time.perf_counter() - t0
        base = median_seconds(lambda m=model: m.predict(images), a.repeats)
        model.memory, model.config.memory, model.config.terms = memory, {"k": mem.k, "smooth": mem.smooth}, memory_terms(0.5)
        fused = median_seconds(lambda m=model: m.predict(images), a.repeats)
        model.memory, model.config.memory, model.config.terms = None, {}, DISCRIMINATOR_ONLY
        per_image = total // len(normals)
        lines.append(f"| {what} | {patches.shape[1]} | {per_image} | {extract:.1f} | {build:.1f} | {extract + build:.1f} | "
                     f"{1000 * base / a.batch:.1f} | {1000 * fused / a.batch:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
