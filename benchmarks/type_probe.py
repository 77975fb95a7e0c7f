"""Type probe: can the real anomaly shots name a defect from frozen features alone? (MTD, no training)

    .venv/bin/python benchmarks/type_probe.py [--seeds 0,1,2] [--hot 1,4] [--out benchmarks/results/type_probe.md]

Each seed ingests MTD as ``benchmarks/mtd_quality.py`` does (all train normals, a quarter held out, one anomaly shot
per type), builds the default detector's memory (Lite2 stride 16, unit-length patches, greedy coreset of 4096) and
its distance map for every test image. For each true defect, the ``--hot`` patches with the highest memory distance
are compared with the defect patches of each type's real shot (the patches whose cell is at least a quarter defect in
the shot's mask); the type of the nearest shot patch (mean over the hot patches) is the prediction. The figure is the
type accuracy given the defect, the same quantity as ``type_accuracy_given_anomaly`` (the discriminator's type head:
30.8 +- 2.2 on the same protocol, docs/results.md). Training-side data only: the shots; the test set is only scored.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory_probe import backbone, features, load  # noqa: E402

from uniadc_core.config import parse_params  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.data.manifest import Role  # noqa: E402
from uniadc_core.data.preprocess import Preprocess  # noqa: E402
from uniadc_core.io import write_text  # noqa: E402
from uniadc_core.model.memory import NormalMemory  # noqa: E402


def shot_patches(net, shots: pl.DataFrame, pre: Preprocess, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Each type's defect patches (n, C) from its real shots."""
    out: dict[str, list[torch.Tensor]] = {}
    images = load(shots, pre)
    feats = features(net, images)
    for row, f in zip(shots.iter_rows(named=True), feats, strict=True):
        mask = torch.from_numpy((pre.load_labels(row["mask_path"], 1, row.get("mask_rule")) > 0).astype(np.float32))[None, None]
        share = F.adaptive_avg_pool2d(mask, grid)[0, 0]
        keep = share >= 0.25 if (share >= 0.25).any() else share > 0
        out.setdefault(row["defect_type"], []).append(f[:, keep].T)
    return {t: torch.cat(v) for t, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--hot", default="1,4")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/type_probe.md"))
    a = p.parse_args()
    pre = Preprocess(256, "stretch", (0.5,) * 3, (0.5,) * 3)
    net = backbone("lite2", [3], 16, True)
    hots = [int(h) for h in a.hot.split(",")]
    results: dict[int, list[float]] = {h: [] for h in hots}
    confusions: dict[int, np.ndarray] = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        params = parse_params({"ingest": {"kind": "mtd", "root": a.root, "seed": seed, "holdout_fraction": 0.25,
                                          "allow_missing_masks": True, "normal_shots": "all", "anomaly_shots": 1}})
        manifest = ingest(params.ingest, ROOT / "benchmarks/work/type_probe").manifest
        normals = manifest.filter(pl.col("role") == Role.NORMAL_SHOT).sort("path")
        test = manifest.filter((pl.col("role") == Role.TEST) & pl.col("is_anomaly")).sort("path")
        shots = manifest.filter(pl.col("role") == Role.ANOMALY_SHOT).sort("path")
        train_f, test_f = features(net, load(normals, pre)), features(net, load(test, pre))
        c, h, w = train_f.shape[1:]
        pool = train_f.permute(0, 2, 3, 1).reshape(-1, c)
        drawn = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:200000]]
        memory = NormalMemory.build(drawn, 4096, "greedy", seed)
        protos = shot_patches(net, shots, pre, (h, w))
        types = sorted(protos)
        truth = np.array([types.index(t) for t in test["defect_type"].to_list()])
        dist = memory.distances(test_f.permute(0, 2, 3, 1).reshape(-1, c)).view(len(test_f), h * w)
        for hot in hots:
            pred = []
            for i in range(len(test_f)):
                q = test_f[i].flatten(1)[:, dist[i].topk(hot).indices].T  # (hot, C)
                pred.append(int(torch.stack([torch.cdist(q, protos[t]).min(1).values.mean() for t in types]).argmin()))
            pred = np.array(pred)
            results[hot].append(float((pred == truth).mean()))
            conf = np.zeros((len(types), len(types)), int)
            np.add.at(conf, (truth, pred), 1)
            confusions[hot] = confusions.get(hot, 0) + conf
            print(f"seed {seed} hot {hot}: {100 * results[hot][-1]:.1f} %", flush=True)
    lines = [f"# Type probe on MTD: nearest real-shot patch (no training)\n\nCommand: `python benchmarks/type_probe.py "
             f"{' '.join(sys.argv[1:])}`  ", f"Machine: {platform.machine()}; Lite2 stride 16, unit-length patches, 256 px, "
             f"greedy memory of 4096; type accuracy given the defect, %, mean ± std over seeds {a.seeds}.\n",
             "| hot patches compared | type accuracy given the defect |", "|---|---|"]
    for hot in hots:
        vals = [100 * v for v in results[hot]]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {hot} | {statistics.mean(vals):.1f} ± {sd:.1f} |")
    lines += ["", f"Confusion over the seeds, {hots[0]} hot patch (rows true, columns predicted: {', '.join(types)}):", "",
              "```", str(confusions[hots[0]]), "```"]
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
