"""Memory probe: the normal-feature memory alone on MTD, no training, to choose the detector's settings.

    .venv/bin/python benchmarks/memory_probe.py [--backbones lite2,mobilenet_v2] [--seeds 0]
        [--out benchmarks/results/memory_probe.md]

Each seed ingests MTD as ``benchmarks/mtd_quality.py`` does (all train normals, a quarter held out, one anomaly
shot per type), extracts the frozen backbone's patch features of the training normals and the test images once,
then scores the test images with memories built several ways: its size, how it is chosen (greedy coreset or
random), the levels tapped, the smoothing and the image-score pooling (the library's ``terms.image_score``:
the maximum of the 7x7-averaged map). No discriminator, no CADA: image and pixel AUROC of the raw distance,
which is what the memory term brings. Run alone; the table gives each setting's figures and seconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import parse_params  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.data.manifest import Role  # noqa: E402
from uniadc_core.data.preprocess import Preprocess  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402
from uniadc_core.metrics import auroc  # noqa: E402
from uniadc_core.model.cnn import TimmBackbone, TorchvisionBackbone  # noqa: E402
from uniadc_core.model.memory import NormalMemory, coverage_radius, gaussian_blur  # noqa: E402
from uniadc_core.model.terms import image_score  # noqa: E402
from uniadc_core.weights import load_timm, load_torchvision  # noqa: E402

MOBILENET = ROOT.parent / "shared/weights/mobilenet_v2_imagenet.safetensors"


def backbone(name: str, taps: list, grid: int, normalize: bool) -> TimmBackbone | TorchvisionBackbone:
    if name == "lite2":
        return TimmBackbone(load_timm("tf_efficientnet_lite2", "builtin"), taps, embed_dim=8, grid=grid, normalize=normalize).eval()
    net = TorchvisionBackbone(load_torchvision("mobilenet_v2", str(MOBILENET)), taps, embed_dim=8, grid=grid).eval()
    net.normalize = normalize
    return net


@torch.no_grad()
def features(net, images: np.ndarray, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        out.append(net.encode_frozen(((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))[0].float())
    return torch.cat(out)


def load(frame: pl.DataFrame, pre: Preprocess) -> np.ndarray:
    return np.stack([pre.image(pre.decode_image(p)) for p in frame["path"].to_list()])


def masks_of(frame: pl.DataFrame, pre: Preprocess) -> np.ndarray:
    out = []
    for row in frame.iter_rows(named=True):
        if row["is_anomaly"] and row["mask_path"] is not None:
            out.append(pre.load_labels(row["mask_path"], 1, row.get("mask_rule")) > 0)
        else:
            out.append(np.zeros((pre.size, pre.size), bool))
    return np.stack(out)


def score(memory: NormalMemory, test: torch.Tensor, size: int, smooth: float) -> torch.Tensor:
    b, c, h, w = test.shape
    d = memory.distances(test.permute(0, 2, 3, 1).reshape(-1, c)).view(b, 1, h, w)
    return gaussian_blur(F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)[:, 0], smooth)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--configs", default="lite2:2,3:8:raw;lite2:2,3:8:unit;lite2:3:16:raw;lite2:3:16:unit;"
                   "mobilenet_v2:features.3,features.6,features.10:8:raw",
                   help="backbone:levels:grid:raw|unit (unit: each level's patch features to unit length), ';'-separated")
    p.add_argument("--memories", default="greedy:4096",
                   help="method:size[:projection dims of the greedy selection, default 128], ';'-separated")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/memory_probe.md"))
    a = p.parse_args()
    pre = Preprocess(a.size, "stretch", (0.5,) * 3, (0.5,) * 3)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        work = ROOT / "benchmarks/work/memory_probe"
        params = parse_params({"ingest": {"kind": "mtd", "root": a.root, "seed": seed, "holdout_fraction": 0.25,
                                          "allow_missing_masks": True, "normal_shots": "all", "anomaly_shots": 1}})
        manifest = ingest(params.ingest, work).manifest
        normals = manifest.filter(pl.col("role") == Role.NORMAL_SHOT).sort("path")
        test = manifest.filter(pl.col("role") == Role.TEST).sort("path")
        normal_images, test_images = load(normals, pre), load(test, pre)
        labels, masks = test["is_anomaly"].to_numpy(), masks_of(test, pre)
        known = np.array([not a_ or m is not None for a_, m in zip(test["is_anomaly"], test["mask_path"])])
        for config in a.configs.split(";"):
            name, taps, grid, norm = config.split(":")
            taps = [int(t) for t in taps.split(",")] if name == "lite2" else taps.split(",")
            net = backbone(name, taps, int(grid), norm == "unit")
            t0 = time.perf_counter()
            train_f, test_f = features(net, normal_images), features(net, test_images)
            extract = (time.perf_counter() - t0) / (len(normal_images) + len(test_images))
            c = train_f.shape[1]
            pool = train_f.permute(0, 2, 3, 1).reshape(-1, c)
            gen = torch.Generator().manual_seed(seed)
            drawn = pool[torch.randperm(len(pool), generator=gen)[:200000]]
            for mem in a.memories.split(";"):
                method, k, *dim = mem.split(":")
                t0 = time.perf_counter()
                source = pool[torch.randperm(len(pool), generator=gen)[:int(k)]] if method == "random" else drawn
                memory = NormalMemory.build(source, int(k), method, seed, projection_dim=int(dim[0]) if dim else 128)
                build = time.perf_counter() - t0
                radius = coverage_radius(drawn, memory.bank)
                for smooth in (4.0,):
                    t0 = time.perf_counter()
                    maps = score(memory, test_f, a.size, smooth)
                    query = (time.perf_counter() - t0) / len(test_images)
                    flat = maps.numpy()
                    rows.append({"seed": seed, "backbone": name, "taps": f"{'/'.join(map(str, taps))}, grid {grid}, {norm}", "memory": mem,
                                 "smooth": smooth,
                                 "image_max": auroc(flat.reshape(len(flat), -1).max(1), labels),
                                 "image_pooled": auroc(image_score(maps).numpy(), labels),
                                 "pixel": auroc(flat[known].ravel(), masks[known].ravel()),
                                 "radius": radius, "extract_ms": 1000 * extract, "build_s": build, "query_ms": 1000 * query})
                    print(rows[-1], flush=True)
    lines = [f"# Memory probe on MTD (no training)\n\nCommand: `python benchmarks/memory_probe.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; {a.size} px, all train normals less a quarter "
             f"held out; test = the development copy's test half. AUROC in %, mean ± std over seeds {a.seeds}.\n",
             "| backbone | levels, grid, features | memory | image AUROC (max) | image AUROC (7x7 pooled max) | pixel AUROC "
             "| coverage radius | extract ms/img | build s | query ms/img |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["backbone"], r["taps"], r["memory"]) for r in rows))  # in the order they ran
    for key in keys:
        group = [r for r in rows if (r["backbone"], r["taps"], r["memory"]) == key]

        def cell(k, scale=100.0, digits=1):
            vals = [scale * r[k] for r in group]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"

        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cell('image_max')} | {cell('image_pooled')} | {cell('pixel')} | "
                     f"{cell('radius', 1.0, 3)} | {statistics.median(r['extract_ms'] for r in group):.1f} | "
                     f"{statistics.median(r['build_s'] for r in group):.1f} | "
                     f"{statistics.median(r['query_ms'] for r in group):.1f} |")
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
