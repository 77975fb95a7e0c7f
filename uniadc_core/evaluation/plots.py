"""Report plots (PNG): ROC curves, confusion matrix, score histograms per class, anomaly-map overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uniadc_core.io import atomic_path  # noqa: E402
from uniadc_core.metrics import auroc, roc_curve  # noqa: E402
from uniadc_core.serving.overlay import heat_overlay  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """One ROC curve per variant: {name: (scores, labels)}."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (s, y) in curves.items():
        fpr, tpr, _ = roc_curve(s, y)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(s, y):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Image-level ROC, all classes mixed")
    ax.legend(loc="lower right")
    _save(fig, Path(path))


def plot_confusion(conf: np.ndarray, names: list[str], path: str | Path) -> None:
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.7 * len(names)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), ["normal / missed", *names[1:]], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.axvline(0.5, color="crimson", lw=1.5)  # left of it: a defect row's misses, apart from its confusions
    ax.set(xlabel="decided", ylabel="true", title="Defect type (image level, CADA)")
    _save(fig, Path(path))


def plot_score_histograms(raw: np.ndarray, aligned: np.ndarray, classes: list[str], is_anomaly: np.ndarray, path: str | Path) -> None:
    """Per-class score distributions before and after CADA: why one threshold needs alignment."""
    cls_arr = np.asarray(classes)
    names = sorted(set(classes))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, title in ((axes[0], raw, "raw score"), (axes[1], aligned, "CADA-aligned score")):
        bins = np.linspace(values.min(), values.max(), 40)
        for k, cls in enumerate(names):
            colour = f"C{k}"
            sel = cls_arr == cls
            ax.hist(values[sel & ~is_anomaly], bins=bins, alpha=0.45, color=colour, label=f"{cls} normal")
            ax.hist(values[sel & is_anomaly], bins=bins, histtype="step", lw=1.5, color=colour, label=f"{cls} anomalous")
        ax.set(title=title, xlabel="score", ylabel="images")
    axes[1].axvline(1.0, c="k", ls="--", lw=1)
    axes[1].legend(fontsize=7, ncol=2)
    _save(fig, Path(path))


def plot_overlays(
    images: list[np.ndarray], maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, pred: np.ndarray,
    scores: np.ndarray, names: list[str], threshold: float, count: int, path: str | Path, seed: int = 0,
) -> None:
    """A grid of test images with the aligned anomaly map (``heat_overlay``), the true mask outline and the prediction."""
    if count <= 0:
        return
    rng = np.random.default_rng(seed)
    anomalous, normal = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    n_norm = min(len(normal), max(1, count // 4))
    pick = np.concatenate([rng.permutation(anomalous)[: count - n_norm], rng.permutation(normal)[:n_norm]])
    cols = min(6, len(pick))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        ax.imshow(heat_overlay(images[i], maps[i], threshold))
        if masks[i].any():
            ax.contour(masks[i] > 0, levels=[0.5], colors="white", linewidths=0.8)
        ok = labels[i] == pred[i]
        ax.set_title(f"true {names[labels[i]]}\npred {names[pred[i]]} ({scores[i]:.2f})", fontsize=7, color="green" if ok else "red")
    _save(fig, Path(path))
