"""Discriminator training: `python -m flows.train` (DVC stage `train`)."""

from __future__ import annotations

from prefect import flow

from flows import paths
from tasks.train import train_discriminator
from uniadc_core.config import load_params


@flow(name="train")
def train_flow(params_path: str = paths.PARAMS) -> str:
    cfg = load_params(params_path).train
    return train_discriminator(paths.MANIFEST, paths.VOCABULARY, paths.SYNTHETIC, cfg, paths.DISCRIMINATOR)


if __name__ == "__main__":
    train_flow()
