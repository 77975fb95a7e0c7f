"""Training-step throughput of the scratch discriminator on this machine.

    .venv/bin/python benchmarks/train_speed.py [--batch 16] [--size 128] [--repeats 7]

Prints the median seconds per optimizer step (forward, loss, backward, step) for contiguous
(NCHW) and channels-last tensors, measured in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from uniadc_core.model import Discriminator, ModelConfig, discriminator_loss


def step_times(channels_last: bool, batch: int, size: int, repeats: int, width: int) -> list[float]:
    torch.manual_seed(0)
    model = Discriminator(ModelConfig(defect_types=["a", "b", "c", "d", "e"], image_size=size, width=width))
    model.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=model.memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    target = torch.randint(0, 6, (batch, size, size))
    times = []
    for i in range(repeats + 1):  # the first step warms up and is dropped
        t0 = time.perf_counter()
        logits, _ = model(images)
        loss = discriminator_loss(logits, target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}, {a.size}px, width {a.width}")
    res = {}
    for cl in (False, True):
        med = statistics.median(step_times(cl, a.batch, a.size, a.repeats, a.width))
        res[cl] = med
        name = "channels_last" if cl else "contiguous"
        print(f"{name:14s} median {med * 1000:7.1f} ms/step  {a.batch / med:6.1f} samples/s")
    print(f"speed-up channels_last / contiguous: {res[False] / res[True]:.2f}x")


if __name__ == "__main__":
    main()
