from __future__ import annotations

from prefect import get_run_logger, task

from uniadc_core.config import TrainConfig
from uniadc_core.data.manifest import read_manifest
from uniadc_core.data.vocabulary import read_vocabulary
from uniadc_core.model.train import train


@task(name="train-discriminator")
def train_discriminator(manifest_path: str, vocab_path: str, synthetic_dir: str, cfg: TrainConfig, out_dir: str, root: str = ".") -> str:
    """Train on normals, anomaly shots and synthetic samples streamed from the shards; save the model directory."""
    path = train(read_manifest(manifest_path, root), read_vocabulary(vocab_path), synthetic_dir, cfg, out_dir)
    get_run_logger().info("train read %s and %s, wrote %s", manifest_path, synthetic_dir, path)
    return str(path)
