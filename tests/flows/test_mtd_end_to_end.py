"""The pipeline on the real MTD data with either synthesizer, chosen by params (skipped without the dataset).

Uses the MTD benchmark's own run (ingest -> synthesize -> train -> fit_cada -> evaluate), tiny settings."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_inpaint_pipeline

ROOT = Path(__file__).resolve().parents[2]
MTD = ROOT.parent / "shared/datasets/mtd"
pytestmark = [pytest.mark.slow, pytest.mark.mtd,
              pytest.mark.skipif(not (MTD / "MT_Free").is_dir(), reason=f"MTD dataset not found at {MTD}")]


def _benchmark():
    spec = importlib.util.spec_from_file_location("mtd_quality", ROOT / "benchmarks/mtd_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["synthesize.samples_per_type=3", f"synthesize.priors={ROOT / 'priors/mtd.yaml'}", "train.width=8", "train.embed_dim=8",
        "train.min_epoch_samples=32", "fit_cada.steps=20", "evaluate.overlays=2"]


@pytest.mark.parametrize("backend", ["procedural", "diffusion"])
def test_mtd_runs_end_to_end_with_either_synthesizer(backend, tmp_path):
    overrides = [*TINY, f"synthesize.backend={backend}"]
    if backend == "diffusion":
        model = build_tiny_inpaint_pipeline(tmp_path / "tiny-sd")
        overrides += [f"synthesize.diffusion.model={model}", "synthesize.diffusion.resolution=64", "synthesize.diffusion.steps=2",
                      "synthesize.diffusion.batch_size=8"]
    (result,) = _benchmark().run_setting("2shot_1anom", MTD, tmp_path / "work", epochs=1, image_size=64, overrides=overrides)
    index = json.loads((tmp_path / "work/synthetic/index.json").read_text())
    assert index["complete"] and index["rows"] == 5 * 3
    generators = {"procedural": {"procedural", "cutpaste"}, "diffusion": {"diffusion", "repaint"}}[backend]
    plan = json.loads((tmp_path / "work/synthetic/plan.json").read_text())
    assert {s["generator"] for shard in plan["shards"] for s in shard} <= generators
    assert plan["vocabulary"]["classes"]["magnetic_tile"]["blowhole"]["size"] == "tiny"  # priors/mtd.yaml applied
    m = result["metrics"]
    assert m["test_images"] > 200 and 0.0 <= m["image_auroc_cada"] <= 1.0
