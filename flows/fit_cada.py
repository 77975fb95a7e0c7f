"""CADA fitting and the decision threshold: `python -m flows.fit_cada` (DVC stage `fit_cada`)."""

from __future__ import annotations

from prefect import flow

from flows.layout import Layout
from tasks.fit_cada import fit_cada
from uniadc_core.config import load_params


@flow(name="fit_cada")
def fit_cada_flow(root: str = ".", params_path: str = "") -> str:
    layout = Layout.at(root)
    cfg = load_params(params_path or layout.params).fit_cada
    return fit_cada(str(layout.manifest), str(layout.synthetic), str(layout.discriminator), cfg, str(layout.cada), root)


if __name__ == "__main__":
    fit_cada_flow()
