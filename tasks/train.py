from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.config import TrainConfig
from uniadc_core.synth import load_inputs
from uniadc_core.train import train


@task(name="train-discriminator")
def train_discriminator(manifest_path: str, vocab_path: str, synthetic_dir: str, cfg: TrainConfig, out_dir: str) -> str:
    """Train on normals, anomaly shots and synthetic samples streamed from the shards; save the model directory."""
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    path = train(manifest, vocab, synthetic_dir, cfg, out_dir)
    get_run_logger().info("train read %s and %s, wrote %s", manifest_path, synthetic_dir, path)
    return str(path)
