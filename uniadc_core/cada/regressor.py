"""CADA: class-agnostic distribution alignment of anomaly scores.

Each object class's normal scores sit at their own level. Per class, the mean ``u`` and the
maximum ``gamma`` of out-of-sample normal image scores are measured; a small regressor learns to
predict (u, gamma) from a global image embedding, on normal *and* synthetic-anomalous images of
each class, so it holds for anomalous inputs too. At test time, with no class label:

    s_aligned = (s - u_hat) / (gamma_hat - u_hat)

Saved as ``model.safetensors`` + ``config.json`` like the discriminator.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from uniadc_core.config import FitCadaConfig
from uniadc_core.decision import MIN_SPREAD
from uniadc_core.io import read_weights_dir, save_weights_dir

log = logging.getLogger(__name__)



class ClassStats(NamedTuple):
    u: float  # mean normal image score
    gamma: float  # max normal image score
    count: int  # normal images measured
    in_sample: bool  # True when no held-out normal existed and training normals were used


@dataclass
class CadaConfig:
    input_dim: int
    hidden: int
    x_mean: list[float]
    x_std: list[float]
    y_mean: list[float]
    y_std: list[float]
    class_stats: dict[str, list]  # class -> [u, gamma, count, in_sample]
    global_stats: list[float]  # [u, gamma] over all held-out normals pooled: the "no alignment" baseline
    min_spread: float = MIN_SPREAD
    calibrated_threshold: float = 1.0  # the conformal fit_cada.threshold_percentile of the aligned held-out normal scores
    threshold: float = 1.0  # the decision threshold in force (fit_cada.threshold: a number, or auto = calibrated)
    # the aligned out-of-sample normal scores per class, sorted: a line's own false-alarm rate becomes a threshold at
    # prediction time (calibration.threshold_for_rate, ``uniadc predict --false-alarm-rate``); empty in older models
    calibration_scores: dict[str, list[float]] = field(default_factory=dict)
    calibration_scope: str = "per_class"  # fit_cada.calibrate: how the classes' thresholds combine


class Regressor(nn.Module):
    """embedding (B, E) -> (u, log(gamma - u)) standardised."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Cada:
    """A fitted CADA model: predicts (u, gamma) per image and aligns scores."""

    def __init__(self, config: CadaConfig, regressor: Regressor):
        self.config = config
        self.regressor = regressor.eval()
        self._x = (torch.tensor(config.x_mean), torch.tensor(config.x_std))
        self._y = (torch.tensor(config.y_mean), torch.tensor(config.y_std))

    def stats(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, gamma) per image, each (B,), as tensors: the computation ``uniadc export`` puts in the graph."""
        z = self.regressor((embedding - self._x[0]) / self._x[1]) * self._y[1] + self._y[0]  # (B, 2)
        u = z[:, 0]
        return u, u + z[:, 1].exp().clamp(min=self.config.min_spread)

    @torch.no_grad()
    def predict_stats(self, embedding: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, gamma) per image, each (B,)."""
        u, gamma = self.stats(torch.as_tensor(np.asarray(embedding), dtype=torch.float32))
        return u.numpy(), gamma.numpy()

    def class_stats(self, object_class: str) -> tuple[float, float]:
        if object_class not in self.config.class_stats:
            msg = f"CADA has no statistics for class '{object_class}'; known: {', '.join(sorted(self.config.class_stats))}"
            raise ValueError(msg)
        u, gamma, _, _ = self.config.class_stats[object_class]
        return u, max(gamma, u + self.config.min_spread)

    def global_stats(self) -> tuple[float, float]:
        u, gamma = self.config.global_stats
        return u, max(gamma, u + self.config.min_spread)


def class_statistics(scores: np.ndarray, classes: list[str], in_sample: dict[str, bool] | None = None) -> dict[str, ClassStats]:
    out = {}
    classes_arr = np.asarray(classes)
    for c in sorted(set(classes)):
        s = scores[classes_arr == c]
        out[c] = ClassStats(float(s.mean()), float(s.max()), int(len(s)), bool((in_sample or {}).get(c, False)))
    return out


def fit_cada(
    stats: dict[str, ClassStats],
    embeddings: np.ndarray,
    classes: list[str],
    cfg: FitCadaConfig,
    global_stats: tuple[float, float],
) -> Cada:
    """Fit the regressor from image embeddings (N, E) of known classes to their class's (u, gamma)."""
    missing = sorted(set(classes) - set(stats))
    if missing:
        msg = f"CADA: no normal-score statistics for class(es) {missing}"
        raise ValueError(msg)
    torch.manual_seed(cfg.seed)
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    targets = np.array([[stats[c].u, np.log(max(stats[c].gamma - stats[c].u, cfg.min_spread))] for c in classes], np.float32)
    y = torch.from_numpy(targets)
    x_mean, x_std = x.mean(0), x.std(0).clamp(min=1e-6)
    y_mean, y_std = y.mean(0), y.std(0).clamp(min=1e-3)
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    reg = Regressor(x.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(reg.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        noise = 0.1 * torch.randn_like(xs)  # input noise: smoother, less over-confident predictions
        loss = nn.functional.mse_loss(reg(xs + noise), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log.info("CADA regressor: final training MSE %.4f (standardised) on %d images", loss.item(), len(classes))
    config = CadaConfig(
        input_dim=int(x.shape[1]),
        hidden=cfg.hidden,
        x_mean=x_mean.tolist(),
        x_std=x_std.tolist(),
        y_mean=y_mean.tolist(),
        y_std=y_std.tolist(),
        class_stats={c: list(s) for c, s in stats.items()},
        global_stats=[float(global_stats[0]), float(global_stats[1])],
        min_spread=cfg.min_spread,
    )
    return Cada(config, reg)


def save_cada(cada: Cada, directory: str | Path, extra: dict | None = None) -> Path:
    return save_weights_dir(directory, cada.regressor.state_dict(), asdict(cada.config), extra)


def load_cada(directory: str | Path) -> Cada:
    raw, state = read_weights_dir(directory, "fit_cada")
    try:
        config = CadaConfig(**raw)
    except TypeError as exc:
        msg = f"{Path(directory) / 'config.json'}: does not match this uniadc's CADA config ({exc}); re-run fit_cada"
        raise ValueError(msg) from None
    reg = Regressor(config.input_dim, config.hidden)
    reg.load_state_dict(state)
    return Cada(config, reg)
