"""Discriminator training: `python -m flows.train` (DVC stage `train`)."""

from __future__ import annotations

from prefect import flow

from flows.layout import Layout
from tasks.train import train_discriminator
from uniadc_core.config import load_params


@flow(name="train")
def train_flow(root: str = ".", params_path: str = "") -> str:
    layout = Layout.at(root)
    cfg = load_params(params_path or layout.params).train
    return train_discriminator(str(layout.manifest), str(layout.vocabulary), str(layout.synthetic), cfg, str(layout.discriminator), root)


if __name__ == "__main__":
    train_flow()
