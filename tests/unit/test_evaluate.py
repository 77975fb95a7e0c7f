import numpy as np
import pytest

from uniadc_core.config import EvaluateConfig
from uniadc_core.evaluate import EvalSet, compute_metrics
from uniadc_core.inference import Scores


def _case(labels, has_mask=None):
    n, size = len(labels), 8
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    for i, lab in enumerate(labels):
        if lab:
            masks[i, 2:5, 2:5] = lab
    amap = rng.normal(-5, 1, (n, size, size)).astype(np.float32) + 8 * (masks > 0)
    scores = Scores(amap.reshape(n, -1).max(1), amap, np.tile([[0.8, 0.2]], (n, 1)), np.ones((n, size, size), np.uint8), np.zeros((n, 4)))
    has_mask = np.ones(n, bool) if has_mask is None else np.asarray(has_mask)
    test = EvalSet([None] * n, masks, has_mask, np.asarray(labels), ["a"] * n, [f"{i}.png" for i in range(n)])
    return scores, test


def test_metrics_on_a_separable_case():
    scores, test = _case([0, 0, 1, 1])
    m, preds = compute_metrics(scores, test, np.full(4, -5.0), np.full(4, -2.0), EvaluateConfig(), 2)
    assert m["image_auroc"] == 1.0 and m["f1_max"] == 1.0 and m["aupro"] > 0.9
    assert preds["pred_label"].tolist() == [0, 0, 1, 1] and m["type_accuracy"] == 1.0


def test_degenerate_test_sets_give_none_not_nan(caplog):
    scores, test = _case([0, 0, 0])  # normals only
    m, _ = compute_metrics(scores, test, np.full(3, -5.0), np.full(3, -2.0), EvaluateConfig(), 2)
    assert m["image_auroc"] is None and m["pixel_auroc"] is None and m["aupro"] is None
    assert m["type_accuracy"] == pytest.approx(1.0)
    assert "needs both normal and anomalous samples" in caplog.text
    # anomalies whose masks are unknown are left out of the pixel metrics
    scores, test = _case([0, 1, 1], has_mask=[True, False, False])
    m, _ = compute_metrics(scores, test, np.full(3, -5.0), np.full(3, -2.0), EvaluateConfig(), 2)
    assert m["image_auroc"] == 1.0 and m["aupro"] is None


def test_decision_rates_and_the_auto_threshold():
    from uniadc_core.cada import Cada, CadaConfig, Regressor
    from uniadc_core.config import parse_params

    scores, test = _case([0, 0, 1, 1])
    m, _ = compute_metrics(scores, test, np.full(4, -5.0), np.full(4, -2.0), EvaluateConfig(), 2)
    assert m["false_positive_rate"] == 0.0 and m["miss_rate"] == 0.0
    strict = EvaluateConfig(threshold=50.0)  # nothing is called anomalous
    m, _ = compute_metrics(scores, test, np.full(4, -5.0), np.full(4, -2.0), strict, 2)
    assert m["false_positive_rate"] == 0.0 and m["miss_rate"] == 1.0
    cfg = CadaConfig(2, 4, [0, 0], [1, 1], [0, 0], [1, 1], {"a": [0, 1, 1, False]}, [0, 1], threshold=1.3)
    cada = Cada(cfg, Regressor(2, 4))
    assert cada.decision_threshold("auto") == 1.3 and cada.decision_threshold(0.8) == 0.8
    assert parse_params({"evaluate": {"threshold": "auto"}}).evaluate.threshold == "auto"
