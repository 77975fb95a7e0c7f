"""Type probe: what names an MTD defect from one real shot per type, and where the ceiling is. No training.

    .venv/bin/python benchmarks/type_probe.py [--seeds 0,1,2] [--out benchmarks/results/type_probe.md]

Each seed ingests MTD as ``benchmarks/mtd_quality.py`` does (all train normals, a quarter held out, one anomaly shot
per type), makes its synthetic samples (procedural + cut-paste of the shots, 120 per type), and computes the default
detector's frozen features (Lite2 stride 16, unit-length patches, 256 px), its memory (greedy coreset of 4096) and
distance maps, cached in ``benchmarks/work/type_probe/``. For each true test defect it then compares:

- the nearest real-shot patch (the shot memory's rule): at the memory's peak or averaged over the peak's region,
  with the shots as they are or in their eight flips and quarter turns;
- region descriptors (area, elongation, border contact, distance to the edge, contrast against the surround,
  texture, fill) alone and with the shot distances, fused by a logistic regression fitted on training-side data only
  (the synthetic samples, or the shots' eight views), and the same fitted on the test set itself (an upper bound of
  what those descriptors carry, not a method);
- the localization ceiling: how often the memory's peak lies within 16 px of the true defect, and the accuracy when
  the peak is moved to the hottest cell inside the true mask (oracle location, not a method);
- the temperature: fitted by maximum likelihood on the synthetic samples (what training does) against the one the
  test set would pick, and the calibration error it gives.

The figure is the type accuracy given the defect (``type_accuracy_given_anomaly``; the type head of the
``lite2-default`` runs: 30.8 +- 2.2).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory_probe import backbone, features, load  # noqa: E402

from uniadc_core.config import parse_params  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.data.manifest import Role  # noqa: E402
from uniadc_core.data.preprocess import Preprocess  # noqa: E402
from uniadc_core.data.shards import decode_row, read_samples  # noqa: E402
from uniadc_core.evaluation.evaluate import calibration_error  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402
from uniadc_core.model.memory import NormalMemory, gaussian_blur  # noqa: E402
from uniadc_core.model.shot_memory import TEMPERATURES, dihedral, fit_temperature  # noqa: E402
from uniadc_core.synthesis.synthesize import synthesize  # noqa: E402

WORK = ROOT / "benchmarks/work/type_probe"


def _maps(memory: NormalMemory, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 256, 256) distance maps as the model makes them (bilinear, sigma 4) and (N, h, w) at the patch grid."""
    b, c, h, w = feats.shape
    d = memory.distances(feats.permute(0, 2, 3, 1).reshape(-1, c)).view(b, 1, h, w)
    return gaussian_blur(F.interpolate(d, size=(256, 256), mode="bilinear", align_corners=False)[:, 0], 4.0), d[:, 0]


def prepare(seed: int, root: str) -> dict:
    """The cached features, maps, masks and types of one seed's held-out normals, test defects, shot views and
    synthetic samples."""
    cache = WORK / f"seed{seed}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)  # written by this script
    pre = Preprocess(256, "stretch", (0.5,) * 3, (0.5,) * 3)
    net = backbone("lite2", [3], 16, True)
    params = parse_params({"ingest": {"kind": "mtd", "root": root, "seed": seed, "holdout_fraction": 0.25,
                                      "allow_missing_masks": True, "normal_shots": "all", "anomaly_shots": 1},
                           "synthesize": {"image_size": 256, "samples_per_type": 120, "seed": seed}})
    work = WORK / f"s{seed}"
    manifest = ingest(params.ingest, work / "prepared").manifest
    synthesize(work / "prepared/manifest.parquet", work / "prepared/vocabulary.json", work / "synthetic", params.synthesize)
    rows = {r: manifest.filter(pl.col("role") == r).sort("path") for r in (Role.NORMAL_SHOT, Role.NORMAL_HOLDOUT, Role.ANOMALY_SHOT)}
    test = manifest.filter((pl.col("role") == Role.TEST) & pl.col("is_anomaly")).sort("path")
    train_f = features(net, load(rows[Role.NORMAL_SHOT], pre))
    pool = train_f.permute(0, 2, 3, 1).reshape(-1, train_f.shape[1])
    memory = NormalMemory.build(pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:200000]], 4096, "greedy", seed)
    out = {}

    def add(name: str, images: np.ndarray, masks: np.ndarray | None, types: list[str] | None) -> None:
        f = features(net, images)
        m, g = _maps(memory, f)
        out[name] = {"images": images, "masks": masks, "types": types, "feats": f, "map": m, "grid": g}

    def masks_of(frame: pl.DataFrame) -> np.ndarray:
        return np.stack([pre.load_labels(r["mask_path"], 1, r.get("mask_rule")) > 0 if r["mask_path"] else np.zeros((256, 256), bool)
                         for r in frame.iter_rows(named=True)])

    add("hold", load(rows[Role.NORMAL_HOLDOUT], pre), None, None)
    add("test", load(test, pre), masks_of(test), test["defect_type"].to_list())
    shots = rows[Role.ANOMALY_SHOT]
    views = dihedral(torch.from_numpy(load(shots, pre)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous().numpy()
    add("shots", views, dihedral(torch.from_numpy(masks_of(shots))).numpy(), shots["defect_type"].to_list() * 8)
    table = read_samples(work / "synthetic").to_pylist()
    images, masks = zip(*[decode_row(r) for r in table], strict=True)
    add("synth", np.stack(images), np.stack(masks) > 0, [r["defect_type"] for r in table])
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def peak_region(m: np.ndarray, level: float, base: float) -> np.ndarray:
    """The 8-connected region around the map's peak: above ``level``, or halfway from ``base`` to a lower peak."""
    lab, _ = ndimage.label(m >= min(level, base + 0.5 * (m.max() - base)), structure=np.ones((3, 3)))
    y, x = np.unravel_index(m.argmax(), m.shape)
    return lab == lab[y, x]


def describe(r: np.ndarray, image: np.ndarray, m: np.ndarray, level: float) -> list[float]:
    """Shape, place, contrast and texture of a region (log area, log elongation, border, edge distance, contrast,
    |contrast|, inner spread, log peak over level, fill)."""
    grey = image.mean(2).astype(np.float32)
    ys, xs = np.nonzero(r)
    cov = np.cov(np.stack([xs, ys])) if len(ys) > 2 else np.eye(2)
    ev = np.sort(np.linalg.eigvalsh(cov + np.eye(2) / 12))
    cy, cx = ys.mean(), xs.mean()
    ring = ndimage.binary_dilation(r, iterations=8) & ~r
    sd = grey.std() + 1e-3
    contrast = (grey[r].mean() - grey[ring].mean()) / sd if ring.any() else 0.0
    fill = len(ys) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return [np.log(len(ys) / r.size), 0.5 * np.log(ev[1] / ev[0]), float(xs.min() == 0 or ys.min() == 0 or xs.max() == 255 or ys.max() == 255),
            min(cy, cx, 255 - cy, 255 - cx) / 128, contrast, abs(contrast), grey[r].std() / sd, np.log(m.max() / level), fill]


def shot_bank(d: dict, types: list[str], views: int) -> dict[str, torch.Tensor]:
    """Each type's defect patches from its shot's first ``views`` views (1: as it is, 8: every flip and turn)."""
    s = d["shots"]
    n = len(types) * views
    share = F.adaptive_avg_pool2d(torch.from_numpy(s["masks"][:n, None].astype(np.float32)), s["feats"].shape[2:])[:, 0]
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(n):
        keep = share[i] >= 0.25 if (share[i] >= 0.25).any() else share[i] > 0
        out.setdefault(s["types"][i], []).append(s["feats"][i][:, keep].T)
    return {t: torch.cat(v) for t, v in out.items()}


def type_distances(part: dict, bank: dict, types: list[str]) -> torch.Tensor:
    """(N, K, hw) each patch's distance to the nearest shot patch of each type."""
    f = part["feats"].flatten(2).transpose(1, 2)
    return torch.stack([torch.cdist(f, bank[t][None]).min(2).values for t in types], 1)


def fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_fit, y_fit).predict(x)


def probe(d: dict) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """One seed's figures (%, or plain numbers for the temperatures) and its confusion at the peak (8 views)."""
    types = sorted(set(d["test"]["types"]))
    held = d["hold"]["map"].numpy()
    level, base = float(np.quantile(held.reshape(len(held), -1).max(1), 0.99)), float(np.median(held))
    parts = {}
    for name in ("test", "shots", "synth"):
        s = d[name]
        maps = s["map"].numpy()
        regions = np.stack([peak_region(m, level, base) for m in maps])
        cells = F.adaptive_avg_pool2d(torch.from_numpy(regions[:, None].astype(np.float32)), s["feats"].shape[2:])[:, 0].flatten(1) >= 0.3
        parts[name] = {"y": np.array([types.index(t) for t in s["types"]]), "peak": s["grid"].flatten(1).argmax(1), "cells": cells,
                       "shape": np.array([describe(r, im, m, level) for r, im, m in zip(regions, s["images"], maps, strict=True)])}
    out: dict[str, float] = {}
    test, y = parts["test"], parts["test"]["y"]
    n = len(y)
    for views in (1, 8):
        bank = shot_bank(d, types, views)
        for name, part in parts.items():
            dist = type_distances(d[name], bank, types)
            part[f"peak{views}"] = dist[torch.arange(len(dist)), :, part["peak"]].numpy()
            cells = part["cells"] | F.one_hot(part["peak"], dist.shape[2]).bool()
            part[f"mean{views}"] = ((dist * cells[:, None]).sum(2) / cells.sum(1, keepdim=True)).numpy()
        out[f"shot patch at the peak, {views} view(s)"] = 100 * float((test[f"peak{views}"].argmin(1) == y).mean())
        out[f"shot patches over the peak's region, {views} view(s)"] = 100 * float((test[f"mean{views}"].argmin(1) == y).mean())
    syn, sh = parts["synth"], parts["shots"]
    out["descriptors, fitted on synthetic samples"] = 100 * float((fit_predict(syn["shape"], syn["y"], test["shape"]) == y).mean())
    out["descriptors, fitted on the shots' 8 views"] = 100 * float((fit_predict(sh["shape"], sh["y"], test["shape"]) == y).mean())
    both = {k: np.hstack([p["shape"], p["peak1"]]) for k, p in parts.items()}
    out["descriptors + shot distances, fitted on synthetic"] = 100 * float((fit_predict(both["synth"], syn["y"], both["test"]) == y).mean())
    out["ORACLE descriptors, fitted on the test set"] = 100 * float((fit_predict(test["shape"], y, test["shape"]) == y).mean())
    out["ORACLE descriptors + shot distances, fitted on the test set"] = 100 * float((fit_predict(both["test"], y, both["test"]) == y).mean())
    # localization: is the memory's peak on the defect at all
    masks, maps = d["test"]["masks"], d["test"]["map"].numpy()
    near = np.array([ndimage.binary_dilation(mk, iterations=16)[np.unravel_index(m.argmax(), m.shape)] if mk.any() else False
                     for m, mk in zip(maps, masks, strict=True)])
    right = test["peak8"].argmin(1) == y
    out["share of defects whose peak is within 16 px of the defect"] = 100 * float(near.mean())
    out["shot patch at the peak (8 views), peak within 16 px"] = 100 * float(right[near].mean())
    out["shot patch at the peak (8 views), peak elsewhere"] = 100 * float(right[~near].mean())
    inside = F.adaptive_avg_pool2d(torch.from_numpy(masks[:, None].astype(np.float32)), d["test"]["feats"].shape[2:])[:, 0].flatten(1) > 0
    hottest_inside = torch.where(inside, d["test"]["grid"].flatten(1), torch.tensor(-1.0)).argmax(1)
    dist = type_distances(d["test"], shot_bank(d, types, 8), types)
    oracle = dist[torch.arange(n), :, hottest_inside].argmin(1).numpy() == y
    out["ORACLE location: hottest cell inside the true mask (8 views)"] = 100 * float(oracle[inside.any(1).numpy()].mean())
    # the temperature: maximum likelihood on the synthetic samples (training) against the test set's own
    def likelihood(dist: np.ndarray, labels: np.ndarray):
        return lambda t: float(torch.log_softmax(torch.from_numpy(-dist / t), 1)[torch.arange(len(labels)), labels].sum())

    t_syn = fit_temperature(likelihood(syn["peak8"], syn["y"]), TEMPERATURES)
    t_test = fit_temperature(likelihood(test["peak8"], y), TEMPERATURES)
    probs = torch.softmax(torch.from_numpy(-test["peak8"] / t_syn), 1).numpy()
    out["temperature fitted on synthetic samples"] = t_syn
    out["temperature the test set would pick (not used)"] = t_test
    out["calibration error at the synthetic temperature"] = 100 * calibration_error(probs.max(1), probs.argmax(1) == y)
    conf = np.zeros((len(types), len(types)), int)
    np.add.at(conf, (y, test["peak8"].argmin(1)), 1)
    return out, conf, types


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/type_probe.md"))
    a = p.parse_args()
    results: dict[str, list[float]] = {}
    confusion, types = 0, []
    for seed in [int(s) for s in a.seeds.split(",")]:
        figures, conf, types = probe(prepare(seed, a.root))
        confusion = confusion + conf
        for k, v in figures.items():
            results.setdefault(k, []).append(v)
        print(f"seed {seed}: " + "; ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    lines = [f"# Type probe on MTD: naming a defect from one real shot per type (no training)\n\nCommand: "
             f"`python benchmarks/type_probe.py {' '.join(sys.argv[1:])}`  ", f"Machine: {platform.machine()}; Lite2 stride 16, "
             f"unit-length patches, 256 px, greedy memory of 4096; type accuracy given the defect, %, mean ± std over seeds "
             f"{a.seeds} (the type head of the trained default: 30.8 ± 2.2). ORACLE rows use test data: bounds, not methods.\n",
             "| evidence | value |", "|---|---|"]
    for k, v in results.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {k} | {statistics.mean(v):.3g} ± {sd:.2g} |" if "temperature" in k and "error" not in k
                     else f"| {k} | {statistics.mean(v):.1f} ± {sd:.1f} |")
    lines += ["", f"Confusion over the seeds, shot patch at the peak, 8 views (rows true, columns predicted: {', '.join(types)}):",
              "", "```", str(confusion), "```"]
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
