"""Synthesis throughput: procedural on the CPU, diffusion (tiny random pipeline; SD-1.5-sized UNet on
a GPU when there is one), batched vs one image at a time, and 1 vs 2 Dask workers.

    .venv/bin/python benchmarks/synthesis_speed.py [--repeats 3] [--images 16] [--skip-dask]
        [--mtd ../shared/datasets/mtd] [--size 256] [--plan-only] [--out benchmarks/results/synthesis_speed.md]

Weights are not needed to measure speed: the pipelines are random-initialised. Every figure is a
median of --repeats; ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_models import build_tiny_inpaint_pipeline  # noqa: E402
from uniadc_core.config import DemoConfig, DiffusionConfig, IngestConfig, SynthesizeConfig  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.synthesis.diffusion import Request, generate, load_pipeline  # noqa: E402
from uniadc_core.synthesis.plan import plan_samples  # noqa: E402
from uniadc_core.synthesis.procedural import make_sample  # noqa: E402
from uniadc_core.synthesis.synthesize import load_inputs  # noqa: E402

WORK = ROOT / "benchmarks/work/synthesis"


def demo() -> tuple[Path, Path]:
    prepared = WORK / "data/prepared"
    if not (prepared / "manifest.parquet").is_file():
        ingest(IngestConfig(kind="demo", root=str(WORK / "data/raw/demo"), demo=DemoConfig()), prepared, WORK / "data/raw")
    return prepared / "manifest.parquet", prepared / "vocabulary.json"


def procedural_rate(manifest_path: Path, vocab_path: Path, n: int, repeats: int) -> float:
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    specs = [s for s in plan_samples(manifest, vocab, SynthesizeConfig(samples_per_type=20)) if s.shot_path is None][:n]
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for spec in specs:
            make_sample(spec, vocab, 128)
        rates.append(len(specs) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _write_shard(job: tuple[str, int]) -> int:
    from uniadc_core.synthesis.store import write_shard
    write_shard(job[0], job[1])
    return job[1]


def plan_rates(root: str, size: int, repeats: int) -> tuple[int, dict[str, float]]:
    """(samples, {way: images/s}) of a whole procedural plan of the MTD copy at ``root`` (zero-shot and
    cut-paste, 120 per type, ``size`` px), shards written and indexed, each way from an empty output folder and
    fresh worker caches: one process; two threads of one process (the local runner); two processes (Dask's way)."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from uniadc_core.synthesis.plan import clear_cache
    from uniadc_core.synthesis.store import finalize, prepare

    prepared = WORK / "data/mtd"
    ingest(IngestConfig(kind="mtd", root=root, allow_missing_masks=True, anomaly_shots=1), prepared)  # of this --mtd, every run
    manifest, vocab = load_inputs(prepared / "manifest.parquet", prepared / "vocabulary.json")
    cfg = SynthesizeConfig(samples_per_type=120, image_size=size)
    specs = plan_samples(manifest, vocab, cfg)
    rates: dict[str, list[float]] = {"one process": [], "2 threads": [], "2 processes": []}
    for _ in range(repeats):
        for way in rates:
            out = WORK / "data/mtd-shards"
            shutil.rmtree(out, ignore_errors=True)
            clear_cache()
            t0 = time.perf_counter()
            jobs = [(str(out), i) for i in prepare(out, specs, cfg, vocab)]
            if way == "one process":
                list(map(_write_shard, jobs))
            else:
                pool = ThreadPoolExecutor(2) if way == "2 threads" else ProcessPoolExecutor(2)
                with pool:
                    list(pool.map(_write_shard, jobs))
            rows = finalize(out)["rows"]
            rates[way].append(rows / (time.perf_counter() - t0))
    return len(specs), {way: statistics.median(r) for way, r in rates.items()}


def diffusion_rates(pipe, cfg: DiffusionConfig, n: int, repeats: int, size: int) -> tuple[float, float]:
    """(batched images/s, one-at-a-time images/s) on the same requests."""
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        y, x = rng.integers(0, size // 2, 2)
        mask[y:y + size // 4, x:x + size // 4] = True
        requests.append(Request(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), mask, "a photo of a crack", "blurry", 1.0, i))
    generate(pipe, requests[:2], cfg)  # warm-up
    batched, single = [], []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        generate(pipe, requests, cfg)
        _sync()
        batched.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for r in requests:  # the plain loop: one pipeline call per image
            generate(pipe, [r], replace(cfg, batch_size=1))
        _sync()
        single.append(n / (time.perf_counter() - t0))
    return statistics.median(batched), statistics.median(single)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sd15_sized_pipeline(directory: Path) -> Path:
    """A random pipeline with Stable Diffusion 1.5's UNet and VAE sizes (for GPU timing; no weights)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_models import _clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768)  # SD-1.5 defaults
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=_clip_tokenizer(), unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(directory)
    return directory


def dask_scaling(workers: int, samples: int) -> float:
    """Seconds of the synthesize flow's shard making with ``workers`` Dask workers (procedural, 128 px)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.synthesize import run

    params = {"synthesize": {"samples_per_type": samples, "shard_size": 64, "image_size": 128, "workers": workers, "runner": "dask"}}
    (WORK / "params.yaml").write_text(yaml.safe_dump(params))
    out = WORK / f"data/syn-dask-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    with prefect_test_harness(server_startup_timeout=120):
        t0 = time.perf_counter()
        run(str(WORK), "", str(out))
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--skip-dask", action="store_true")
    p.add_argument("--mtd", default=str(ROOT.parent / "shared/datasets/mtd"), help="MTD copy for the whole-plan rates ('' skips)")
    p.add_argument("--size", type=int, default=256, help="image side of the whole-plan rates")
    p.add_argument("--plan-only", action="store_true", help="only the procedural rates (no diffusion, no Dask)")
    p.add_argument("--out", default="", help="default benchmarks/results/synthesis_speed.md (_plan.md with --plan-only)")
    a = p.parse_args()
    a.out = a.out or str(ROOT / f"benchmarks/results/synthesis_speed{'_plan' if a.plan_only else ''}.md")
    manifest_path, vocab_path = demo()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, GPU: {gpu}",
             f"median of {a.repeats} repeats", "", "| synthesizer | device | setting | figure |", "|---|---|---|---|"]

    def row(*cells):
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    print("\n".join(lines), flush=True)
    row("procedural", "cpu", "zero-shot, 128 px, one process", f"{procedural_rate(manifest_path, vocab_path, 60, a.repeats):.1f} images/s")
    if a.mtd and Path(a.mtd).is_dir():
        n, rates = plan_rates(a.mtd, a.size, a.repeats)
        row("procedural, a whole MTD plan", "cpu", f"{n} samples at {a.size} px (zero-shot + cut-paste), shards written",
            ", ".join(f"{way} {r:.1f} images/s" for way, r in rates.items()))
    if not a.plan_only:
        other_rates(a, row)
    command = "python benchmarks/synthesis_speed.py " + " ".join(sys.argv[1:])
    with atomic_path(Path(a.out)) as tmp:
        tmp.write_text(f"# Synthesis speed\n\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {a.out}")


def other_rates(a: argparse.Namespace, row) -> None:
    """Diffusion batched vs one at a time (tiny on the CPU; SD-1.5-sized on a GPU) and Dask's 1 vs 2 workers."""
    tiny = WORK / "tiny-sd"
    if not (tiny / "model_index.json").is_file():
        build_tiny_inpaint_pipeline(tiny)
    cfg = DiffusionConfig(model=str(tiny), resolution=128, steps=10, batch_size=8, device="cpu")
    pipe = load_pipeline(cfg)
    b, s = diffusion_rates(pipe, cfg, a.images, a.repeats, 128)
    row("diffusion (tiny random UNet)", "cpu", "128 px, 10 steps, batch 8", f"{b:.2f} images/s batched, {s:.2f} one at a time: {b / s:.2f}x")
    if torch.cuda.is_available():
        big = WORK / "sd15-sized"
        if not (big / "model_index.json").is_file():
            sd15_sized_pipeline(big)
        for dtype in ("fp16", "bf16"):
            cfg = DiffusionConfig(model=str(big), resolution=512, steps=30, batch_size=8, device="cuda", dtype=dtype)
            pipe = load_pipeline(cfg)
            b, s = diffusion_rates(pipe, cfg, a.images, a.repeats, 512)
            row("diffusion (SD-1.5-sized random UNet)", "cuda", f"512 px, 30 steps, {dtype}, SDPA, batch 8",
                f"{b:.2f} images/s batched, {s:.2f} one at a time: {b / s:.2f}x")
    else:
        row("diffusion (SD-1.5-sized random UNet)", "cuda", "-", "not measured: no GPU on this machine")
    if not a.skip_dask:
        t1, t2 = dask_scaling(1, 200), dask_scaling(2, 200)
        row("procedural via the synthesize flow", "cpu", "Dask LocalCluster, 3000 samples at 128 px, cluster start included",
            f"1 worker {t1:.1f} s, 2 workers {t2:.1f} s: {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
