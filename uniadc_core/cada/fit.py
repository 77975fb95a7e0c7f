"""The fit_cada stage: out-of-sample normal scores -> per-class (u, gamma) -> CADA regressor and the decision threshold."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from uniadc_core.cada.calibration import calibrate
from uniadc_core.cada.regressor import ClassStats, class_statistics, fit_cada, save_cada
from uniadc_core.config import FitCadaConfig
from uniadc_core.data.manifest import Role, item_names
from uniadc_core.data.shards import decode_row
from uniadc_core.decision import Scores, align
from uniadc_core.model.discriminator import Discriminator
from uniadc_core.model.scoring import concat_scores, score_images, score_paths

log = logging.getLogger(__name__)


def normal_statistics(model: Discriminator, manifest: pl.DataFrame, leave_item_out: bool = False
                      ) -> tuple[dict[str, ClassStats], tuple[float, float], Scores, pl.DataFrame]:
    """Per-class and pooled (u, gamma) of out-of-sample normal scores, with those scores and the manifest rows they
    belong to: the held-out normals, and with ``leave_item_out`` the training normals too, each scored against the
    memory less its own item's rows (``leave_item_out_scores``). A class with neither falls back on its training
    normals as they are (in-sample: biased low)."""
    shots = manifest.filter(pl.col("role") == Role.NORMAL_SHOT)
    loo_rows, loo = leave_item_out_scores(model, shots) if leave_item_out else (shots.head(0), None)
    held = manifest.filter(pl.col("role") == Role.NORMAL_HOLDOUT)
    frames, in_sample = [], {}
    for cls in sorted(manifest["object_class"].unique().to_list()):
        part = held.filter(pl.col("object_class") == cls)
        if part.height == 0 and cls not in loo_rows["object_class"]:
            log.warning("class '%s' has no held-out normals; its CADA statistics use training normals (biased low)", cls)
            part = shots.filter(pl.col("object_class") == cls)
            in_sample[cls] = True
        frames.append(part)
    normals = pl.concat(frames)
    s = score_paths(model, normals["path"].to_list(), progress=True)
    if loo is not None:
        s, normals = concat_scores([s, loo]), pl.concat([normals, loo_rows])
    stats = class_statistics(s.score, normals["object_class"].to_list(), in_sample)
    for cls, st in stats.items():
        log.info("class %-12s u=%.4f gamma=%.4f from %d normals%s", cls, st.u, st.gamma, st.count, " (in-sample)" if st.in_sample else "")
    return stats, (float(s.score.mean()), float(s.score.max())), s, normals


def leave_item_out_scores(model: Discriminator, shots: pl.DataFrame) -> tuple[pl.DataFrame, Scores]:
    """The training normals ``shots`` (manifest rows) of every class with two or more items, each item's images
    scored against the memory less the rows drawn from that item (``NormalMemory.without``), and their rows.

    With ``train.memory.weight: 1`` such a score is the one a new part of that class would get from a memory of
    the other parts: out-of-sample as a held-out normal's, and there are many more of them, from many more
    items, so the class statistics and the threshold see how far a new part can sit from the known ones. Below
    weight 1 the discriminator's share is in-sample (it trained on these images), so these scores run low."""
    weight = sum(t.weight for t in model.config.terms if t.name == "memory")
    if model.memory is None or weight <= 0:
        msg = ("fit_cada.leave_item_out: true needs a normal-feature memory, but the model has none (train.memory.weight: 0); "
               "set train.memory.weight above 0, or fit_cada.leave_item_out: false")
        raise ValueError(msg)
    names = model.config.memory.get("items")
    if names is None or model.memory.sources is None:
        msg = ("fit_cada.leave_item_out: true: the model's memory does not record which item each row came from "
               "(trained by an older uniadc); retrain it, or set fit_cada.leave_item_out: false")
        raise ValueError(msg)
    if weight < 1:
        log.warning("fit_cada.leave_item_out with train.memory.weight %.2f: the discriminator's share of the training normals' "
                    "scores is in-sample (biased low); weight 1 makes them out-of-sample", weight)
    frame = shots.with_columns(pl.Series("item", item_names(shots)))
    items_per_class = frame.group_by("object_class").agg(pl.col("item").n_unique())
    lone = sorted(items_per_class.filter(pl.col("item") < 2)["object_class"].to_list())
    if lone:
        log.warning("fit_cada.leave_item_out: classes %s have one training item; leaving it out would leave that class no memory "
                    "(their statistics keep the held-out normals alone)", lone)
    frame = frame.filter(~pl.col("object_class").is_in(lone))
    index, full = {n: i for i, n in enumerate(names)}, model.memory
    parts, ordered = [], []
    try:
        for (item,), part in tqdm(sorted(frame.group_by("item"), key=lambda g: g[0]), desc="leave-item-out", unit="item", leave=False):
            model.memory = full.without(index[item]) if item in index else full  # no row drawn from it: nothing to leave out
            parts.append(score_paths(model, part["path"].to_list()))
            ordered.append(part.drop("item"))
    finally:
        model.memory = full
    if not parts:
        return frame.drop("item").head(0), score_paths(model, [])
    return pl.concat(ordered), concat_scores(parts)


def regressor_data(model: Discriminator, manifest: pl.DataFrame, synthetic: pa.Table, per_class: int, seed: int,
                   known: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Embeddings of real training-side images (normal and anomaly shots) and synthetic anomalies.

    ``known`` maps paths already scored (the held-out normals) to their embeddings; only the rest is scored.
    A model on native-resolution tiles (``resize: tile``) takes no synthetic samples: each is one tile, while
    an image's embedding is the mean over all its tiles, so the two would not be alike.
    """
    real = manifest.filter(pl.col("role").is_in([Role.NORMAL_SHOT, Role.NORMAL_HOLDOUT, Role.ANOMALY_SHOT]))
    known = known or {}
    paths = real["path"].to_list()
    todo = [p for p in paths if p not in known]
    if todo:
        known = {**known, **dict(zip(todo, score_paths(model, todo, progress=True).embedding))}
    emb = [np.stack([known[p] for p in paths])]
    classes = real["object_class"].to_list()
    if per_class and synthetic.num_rows and model.preprocess.tiled:
        log.info("resize tile: the CADA regressor learns from the real images alone (a synthetic sample is one tile)")
    elif per_class and synthetic.num_rows:
        rng = np.random.default_rng(seed)
        syn_classes = np.asarray(synthetic.column("object_class").to_pylist())
        pick = []
        for cls in sorted(set(syn_classes)):
            idx = np.flatnonzero(syn_classes == cls)
            pick += sorted(rng.permutation(idx)[:per_class].tolist())
        rows = synthetic.take(pick).to_pylist()
        emb.append(score_images(model, [decode_row(r)[0] for r in rows], progress=True).embedding)
        classes += [r["object_class"] for r in rows]
    return np.concatenate(emb), classes


def fit(model: Discriminator, manifest: pl.DataFrame, synthetic: pa.Table, cfg: FitCadaConfig, out_dir: str | Path) -> Path:
    stats, global_stats, held, held_rows = normal_statistics(model, manifest, cfg.leave_item_out)
    embeddings, classes = regressor_data(model, manifest, synthetic, cfg.synthetic_per_class, cfg.seed,
                                         known=dict(zip(held_rows["path"].to_list(), held.embedding)))
    cada = fit_cada(stats, embeddings, classes, cfg, global_stats)
    # the calibrated decision threshold: a high percentile of the aligned out-of-sample normal scores (normal data only)
    aligned = align(held.score, *cada.predict_stats(held.embedding))
    held_classes = held_rows["object_class"].to_list()
    cada.config.calibrated_threshold, per_class = calibrate(aligned, held_classes, cfg.threshold_percentile,
                                                            cfg.calibrate)
    cada.config.threshold = cada.config.calibrated_threshold if cfg.threshold == "auto" else float(cfg.threshold)
    labels = np.asarray(held_classes)
    cada.config.calibration_scores = {c: sorted(float(v) for v in aligned[labels == c]) for c in sorted(set(held_classes))}
    cada.config.calibration_scope = cfg.calibrate
    log.info("calibrated threshold %.4f (%s) from the %.1fth percentiles of %d aligned out-of-sample normal scores %s; threshold in force %.4f",
             cada.config.calibrated_threshold, cfg.calibrate, cfg.threshold_percentile, len(aligned),
             {c: round(t.threshold, 4) for c, t in per_class.items()}, cada.config.threshold)
    # how well it recovers each class's statistics on its own training images
    u, gamma = cada.predict_stats(embeddings)
    report = {}
    for cls in sorted(stats):
        sel = np.asarray(classes) == cls
        t = per_class.get(cls)
        report[cls] = {"u": stats[cls].u, "gamma": stats[cls].gamma, "u_pred_mean": float(u[sel].mean()), "gamma_pred_mean": float(gamma[sel].mean()),
                       "class_threshold": t.threshold if t else None, "calibration_normals": t.count if t else 0,
                       "expected_false_positive_rate": t.expected_false_positive_rate if t else None}
    return save_cada(cada, out_dir, extra={"fit_report.json": report})
