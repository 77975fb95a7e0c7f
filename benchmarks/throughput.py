"""Training, data-loading and inference throughput of the discriminator on this machine.

    .venv/bin/python benchmarks/throughput.py [--repeats 5] [--steps 6] [--clip-model ViT-B-16]
        [--skip-clip] [--out benchmarks/results/throughput.md]

Builds once, in ``benchmarks/work/throughput/``, the demo dataset and its synthetic shards with
the pipeline's own library calls, then measures in one run (every figure a median of --repeats):

1. data loading alone: samples/s of the training stream (real images in memory, synthetic PNGs
   decoded from the Parquet row groups, flips, batching), with 0 and 2 loader workers;
2. training: samples/s of whole optimizer steps fed by that loader (``train.train_step``):
   scratch contiguous vs channels-last (the default) vs bf16 autocast; open_clip (a random
   initialised ``--clip-model``, no weights needed for speed) with and without cached features;
3. inference: images/s at batch 32 and the latency of one image (batch 1).

With a CUDA device the training and inference rows are repeated there.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.config import ClipConfig, DemoConfig, IngestConfig, SynthesizeConfig, TrainConfig  # noqa: E402
from uniadc_core.data.ingest import ingest  # noqa: E402
from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.model.loader import make_loader  # noqa: E402
from uniadc_core.model.train import FeatureCache, build_model, load_train_data, samples_per_epoch, train_step, training_stream  # noqa: E402
from uniadc_core.synthesis.synthesize import load_inputs, synthesize  # noqa: E402

WORK = ROOT / "benchmarks/work/throughput"


def prepare_data() -> tuple:
    prepared = WORK / "prepared"
    if not (prepared / "manifest.parquet").is_file():
        ingest(IngestConfig(kind="demo", root=str(WORK / "raw"), demo=DemoConfig()), prepared, WORK / "raw")
    manifest_path, vocab_path = prepared / "manifest.parquet", prepared / "vocabulary.json"
    synthesize(manifest_path, vocab_path, WORK / "synthetic", SynthesizeConfig())  # resumes: a no-op once complete
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    return manifest, vocab


def loading_rate(data, cfg: TrainConfig, workers: int, repeats: int) -> float:
    """Samples/s of the loader alone over one epoch-sized pass (workers started before timing)."""
    steps = max(8, samples_per_epoch(data, cfg) // cfg.batch_size)
    stream = training_stream(data, cfg, steps)
    loader = make_loader(stream, workers)
    stream.set_epoch(0)
    for _ in loader:  # starts the workers and warms the file cache
        pass
    rates = []
    for r in range(repeats):
        stream.set_epoch(r + 1)
        t0 = time.perf_counter()
        n = sum(len(b["key"]) for b in loader)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def training_rate(data, vocab, cfg: TrainConfig, device: torch.device, steps: int, repeats: int,
                  amp: torch.dtype | None = None, cache: bool = False, channels_last: bool = True) -> float:
    """Samples/s of whole training steps (data loading included), after two warm-up steps."""
    torch.manual_seed(0)
    model = build_model(data, vocab, cfg)
    if not channels_last:
        model.memory_format = torch.contiguous_format
    model = model.to(device, memory_format=model.memory_format).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    feature_cache = FeatureCache(8.0, device) if cache else None
    stream = training_stream(data, cfg, steps + 2)
    loader = make_loader(stream, cfg.loader_workers, pin_memory=device.type == "cuda")
    rates = []
    for r in range(repeats + 1):
        stream.set_epoch(0)  # the same batches each repeat: with a cache, every repeat after the first is all hits
        it = iter(loader)
        for _ in range(2):
            train_step(model, opt, scaler, next(it), cfg, device, amp, feature_cache)
        _sync(device)
        t0 = time.perf_counter()
        n = 0
        for batch in it:
            train_step(model, opt, scaler, batch, cfg, device, amp, feature_cache)
            n += len(batch["key"])
        _sync(device)
        if r:  # the first pass fills the cache and is dropped
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


@torch.no_grad()
def inference_rates(data, vocab, cfg: TrainConfig, device: torch.device, repeats: int, amp: torch.dtype | None = None) -> tuple[float, float]:
    """(images/s at batch 32, median milliseconds for one image)."""
    model = build_model(data, vocab, cfg).to(device).eval()
    size = data.normals.images.shape[-1]
    big = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, device=device)
    one = big[:1]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        model.predict(big)
        model.predict(one)
        rates, lat = [], []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            model.predict(big)
            _sync(device)
            rates.append(32 / (time.perf_counter() - t0))
        for _ in range(max(10, 3 * repeats)):
            t0 = time.perf_counter()
            model.predict(one)
            _sync(device)
            lat.append(1000 * (time.perf_counter() - t0))
    return statistics.median(rates), statistics.median(lat)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per repeat")
    p.add_argument("--clip-model", default="ViT-B-16")
    p.add_argument("--clip-batch", type=int, default=8)
    p.add_argument("--skip-clip", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput.md"))
    a = p.parse_args()
    manifest, vocab = prepare_data()
    base = TrainConfig()
    data = load_train_data(manifest, vocab, WORK / "synthetic", base.image_size)
    lines = [f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
             f"demo data: {len(data.normals.classes)} normals, {len(data.shots.classes)} shots, "
             f"{sum(u.rows for u in data.units)} synthetic in {len(data.units)} row groups; median of {a.repeats} repeats",
             "", "| what | device | setting | figure |", "|---|---|---|---|"]

    def row(what, device, setting, figure):
        lines.append(f"| {what} | {device} | {setting} | {figure} |")
        print(lines[-1], flush=True)

    print("\n".join(lines), flush=True)
    for workers in (0, 2):
        rate = loading_rate(data, base, workers, a.repeats)
        row("data loading", "cpu", f"{workers} loader workers, batch {base.batch_size}, {base.image_size} px", f"{rate:.0f} samples/s")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        runs = [("scratch, contiguous, fp32", {}, None, False, False),
                ("scratch, channels-last, fp32 (default)", {}, None, False, True),
                ("scratch, channels-last, bf16 autocast", {}, torch.bfloat16, False, True)]
        for name, extra, amp, cache, cl in runs:
            cfg = dataclasses.replace(base, **extra)
            rate = training_rate(data, vocab, cfg, device, a.steps, a.repeats, amp, cache, cl)
            row("training", device.type, f"{name}, batch {cfg.batch_size}, {cfg.image_size} px", f"{rate:.1f} samples/s")
        for name, amp in (("scratch fp32", None), ("scratch bf16", torch.bfloat16)):
            ips, ms = inference_rates(data, vocab, base, device, a.repeats, amp)
            row("inference", device.type, f"{name}, {base.image_size} px", f"{ips:.0f} images/s (batch 32); {ms:.1f} ms/image (batch 1)")
    if not a.skip_clip:
        clip = ClipConfig(model_name=a.clip_model, pretrained="", layers=[5, 8, 11])
        import open_clip

        size = open_clip.get_model_config(a.clip_model)["vision_cfg"]["image_size"]
        cfg = dataclasses.replace(base, backbone="open_clip", clip=clip, image_size=size, batch_size=a.clip_batch)
        clip_data = load_train_data(manifest, vocab, WORK / "synthetic", size)
        for device in devices:
            amp = torch.bfloat16 if device.type == "cuda" else None
            prec = "bf16" if amp else "fp32"
            for cache in (False, True):
                rate = training_rate(clip_data, vocab, cfg, device, a.steps, a.repeats, amp, cache)
                cached = "cached features (all hits)" if cache else "no cache"
                setting = f"open_clip {a.clip_model} (random init), {prec}, {cached}, batch {cfg.batch_size}, {size} px"
                row("training", device.type, setting, f"{rate:.1f} samples/s")
            ips, ms = inference_rates(clip_data, vocab, cfg, device, a.repeats, amp)
            row("inference", device.type, f"open_clip {a.clip_model}, {prec}, {size} px",
                f"{ips:.1f} images/s (batch 32); {ms:.1f} ms/image (batch 1)")
    out = Path(a.out)
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    with atomic_path(out) as tmp:
        tmp.write_text(f"# Throughput benchmark\n\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
