"""CADA fitting: `python -m flows.fit_cada` (DVC stage `fit_cada`)."""

from __future__ import annotations

from prefect import flow

from flows import paths
from tasks.fit_cada import fit_cada
from uniadc_core.config import load_params


@flow(name="fit_cada")
def fit_cada_flow(params_path: str = paths.PARAMS) -> str:
    cfg = load_params(params_path).fit_cada
    return fit_cada(paths.MANIFEST, paths.SYNTHETIC, paths.DISCRIMINATOR, cfg, paths.CADA)


if __name__ == "__main__":
    fit_cada_flow()
