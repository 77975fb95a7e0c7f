"""Shared fixtures: a tiny demo dataset ingested once per session, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from uniadc_core.config import DemoConfig, IngestConfig, MemoryConfig, SynthesizeConfig, TrainConfig  # noqa: E402

TINY_DEMO = DemoConfig(classes=["tile", "fabric"], image_size=128, train_normals=8, test_normals=3, test_per_defect=3)


def tiny_ingest_config(root: Path, **kw) -> IngestConfig:
    return IngestConfig(kind="demo", root=str(root), seed=0, anomaly_shots=1, holdout_fraction=0.25, demo=TINY_DEMO, **kw)


TINY_SYNTH = SynthesizeConfig(samples_per_type=4, shard_size=8, row_group_size=4, image_size=64, workers=2)
# the scratch discriminator alone: tests that want the pretrained backbone or a memory say so
TINY_TRAIN = TrainConfig(backbone="scratch", image_size=64, width=8, embed_dim=8, epochs=2, batch_size=8, threads=2, min_epoch_samples=0,
                         memory=MemoryConfig(weight=0.0))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(manifest DataFrame, manifest path, vocabulary path) of a tiny generated demo."""
    from uniadc_core.data.ingest import ingest

    base = tmp_path_factory.mktemp("tiny")
    result = ingest(tiny_ingest_config(base / "raw"), base / "prepared")
    return result.manifest, result.manifest_path, result.vocabulary_path


@pytest.fixture(scope="session")
def tiny_shards(tiny_dataset, tmp_path_factory):
    from uniadc_core.synthesis.synthesize import synthesize

    _, manifest_path, vocab_path = tiny_dataset
    out = tmp_path_factory.mktemp("synthetic")
    synthesize(manifest_path, vocab_path, out, TINY_SYNTH)
    return out


def train_with_memory(tiny_dataset, tiny_shards, cfg: TrainConfig):
    """(a tiny model trained with ``cfg`` and given its memory and shot memory, as ``train`` gives them, its
    TrainData) on the tiny demo."""
    from uniadc_core.model.fusion import attach_memory, attach_shot_memory
    from uniadc_core.model.train import load_train_data, train_discriminator
    from uniadc_core.synthesis.synthesize import load_inputs

    _, manifest_path, vocab_path = tiny_dataset
    manifest, vocab = load_inputs(manifest_path, vocab_path)
    data = load_train_data(manifest, vocab, tiny_shards, cfg.image_size)
    model, _ = train_discriminator(data, vocab, cfg, progress=False)
    attach_memory(model, data.normals.images, data.holdout.images, cfg.memory)
    return attach_shot_memory(model, data.shots, data.val), data
