"""Procedural synthesis at 256 px on the MTD dev copy: images/s per thread, zero-shot and cut-paste, and
(with --profile) where the time goes.

    .venv/bin/python benchmarks/synthesis_profile.py [--root ../shared/datasets/mtd] [--size 256] [--profile]

Median of 3 passes over the same specs (150 zero-shot, 100 cut-paste), one thread, nothing else running; each pass
starts with an empty input cache (``plan.clear_cache``), as a fresh worker does.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import SynthesizeConfig, parse_params  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.synthesis.plan import clear_cache, plan_samples  # noqa: E402
from uniadc_core.synthesis.procedural import make_sample  # noqa: E402
from uniadc_core.synthesis.synthesize import load_inputs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared/datasets/mtd"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ingest(parse_params({"ingest": {"kind": "mtd", "root": a.root, "allow_missing_masks": True, "anomaly_shots": 1}}).ingest, out)
        manifest, vocab = load_inputs(out / "manifest.parquet", out / "vocabulary.json")
        specs = plan_samples(manifest, vocab, SynthesizeConfig(samples_per_type=60, image_size=a.size))
        groups = {"zero-shot": [s for s in specs if s.shot_path is None][:150], "cut-paste": [s for s in specs if s.shot_path][:100]}
        for name, group in groups.items():
            rates = []
            for _ in range(3):
                clear_cache()  # each pass starts cold, as a fresh worker: no input decoded by the pass before
                t0 = time.perf_counter()
                for s in group:
                    make_sample(s, vocab, a.size)
                rates.append(len(group) / (time.perf_counter() - t0))
            print(f"{name}: {statistics.median(rates):.1f} images/s per thread at {a.size} px (median of 3: "
                  f"{', '.join(f'{r:.1f}' for r in rates)})", flush=True)
        if a.profile:
            clear_cache()
            prof = cProfile.Profile()
            prof.enable()
            for s in groups["zero-shot"] + groups["cut-paste"]:
                make_sample(s, vocab, a.size)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
