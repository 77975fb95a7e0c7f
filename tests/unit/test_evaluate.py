import numpy as np
import pytest

from uniadc_core.config import ConfigError, parse_params
from uniadc_core.decision import Scores, decide
from uniadc_core.evaluation.evaluate import EvalSet, compute_metrics, per_type_detection

TYPES = ["crack", "stain"]


def _metrics(scores, test, threshold=1.0):
    """Metrics of the decision at ``threshold`` with u = -5 and gamma = -2 for every image."""
    n = len(test.labels)
    return compute_metrics(decide(scores, np.full(n, -5.0), np.full(n, -2.0), threshold, TYPES), test, 0.3, len(TYPES))


def _case(labels, has_mask=None):
    n, size = len(labels), 8
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    for i, lab in enumerate(labels):
        if lab:
            masks[i, 2:5, 2:5] = lab
    amap = rng.normal(-5, 1, (n, size, size)).astype(np.float32) + 8 * (masks > 0)
    scores = Scores(amap.reshape(n, -1).max(1), amap, np.tile([[0.8, 0.2]], (n, 1)), np.ones((n, size, size), np.uint8), np.zeros((n, 4)),
                    np.full((n, size, size), 204, np.uint8))
    has_mask = np.ones(n, bool) if has_mask is None else np.asarray(has_mask)
    test = EvalSet([None] * n, masks, has_mask, np.asarray(labels), ["a"] * n, [f"{i}.png" for i in range(n)])
    return scores, test


def test_metrics_on_a_separable_case():
    scores, test = _case([0, 0, 1, 1])
    n = len(test.labels)
    d = decide(scores, np.full(n, -5.0), np.full(n, -2.0), 1.0, TYPES)
    m = compute_metrics(d, test, 0.3, len(TYPES))
    assert m["image_auroc"] == 1.0 and m["f1_max"] == 1.0 and m["aupro"] > 0.9
    assert d.label.tolist() == [0, 0, 1, 1] and m["type_accuracy"] == 1.0
    assert d.defect_type == ["crack"] * 4 and d.is_anomaly.tolist() == [False, False, True, True]


def test_degenerate_test_sets_give_none_not_nan(caplog):
    scores, test = _case([0, 0, 0])  # normals only
    m = _metrics(scores, test)
    assert m["image_auroc"] is None and m["pixel_auroc"] is None and m["aupro"] is None
    assert m["type_accuracy"] == pytest.approx(1.0)
    assert "needs both normal and anomalous samples" in caplog.text
    # anomalies whose masks are unknown are left out of the pixel metrics
    scores, test = _case([0, 1, 1], has_mask=[True, False, False])
    m = _metrics(scores, test)
    assert m["image_auroc"] == 1.0 and m["aupro"] is None


def test_decision_rates_and_where_the_threshold_is_set():
    scores, test = _case([0, 0, 1, 1])
    m = _metrics(scores, test)
    assert m["false_positive_rate"] == 0.0 and m["miss_rate"] == 0.0
    m = _metrics(scores, test, threshold=50.0)  # nothing is called anomalous
    assert m["false_positive_rate"] == 0.0 and m["miss_rate"] == 1.0
    # the threshold is a fit_cada param saved with the model; the old evaluate key says where it went
    assert parse_params({"fit_cada": {"threshold": "auto"}}).fit_cada.threshold == "auto"
    with pytest.raises(ConfigError, match="'evaluate.threshold' has moved to 'fit_cada.threshold'"):
        parse_params({"evaluate": {"threshold": 1.0}})


def test_pixel_metrics_leave_out_the_padding_of_a_padded_view():
    """The padding of a ``pad`` view (or a tile model's whole-image view) is no image: the pixel metrics and the
    pixel confusion are those of the image area alone, whatever the map says on the padding."""
    scores, test = _case([0, 1, 0, 1])
    n, size = len(test.labels), test.masks.shape[-1]
    shown = np.zeros((n, size, size), bool)
    shown[:, :, :6] = True  # the last two columns are padding (the defect lies at columns 2..4)
    amap = scores.anomaly_map.copy()
    amap[:, :, 6:] = np.random.default_rng(1).normal(0, 20, (n, size, 2))  # any values on the padding
    with_padding = Scores(scores.score, amap, *scores[2:])
    cropped = Scores(scores.score, np.ascontiguousarray(amap[:, :, :6]), scores.type_probs, scores.pixel_types[:, :, :6], scores.embedding,
                     scores.pixel_type_prob[:, :, :6])
    valid = test._replace(valid=shown)
    alone = test._replace(masks=np.ascontiguousarray(test.masks[:, :, :6]))
    m_valid, m_alone, m_all = _metrics(with_padding, valid), _metrics(cropped, alone), _metrics(with_padding, test)
    for k in ("pixel_auroc", "aupro", "miou"):
        assert m_valid[k] == pytest.approx(m_alone[k], abs=1e-12), k
    assert m_all["aupro"] != pytest.approx(m_alone["aupro"])  # counted, the padding's values would move the figure


def test_per_type_table_says_which_type_holds_the_pooled_pixel_auroc_down():
    """Each type's pixels against every normal pixel: a type the map misses shows as such, with its share of the
    defect pixels; padding, and images whose masks are unknown, are left out."""
    scores, test = _case([0, 1, 2, 2, 0])
    amap = scores.anomaly_map.copy()
    amap[test.masks == 2] = -20.0  # the map misses every stain pixel: below all normal pixels
    shown = np.ones(amap.shape, bool)
    shown[:, :, 7] = False
    amap[:, :, 7] = 50.0  # padding, higher than anything: counted, it would lower both types' figures
    amap[4] = 50.0  # a normal whose mask is "unknown" (has_mask False): left out as well
    test = test._replace(valid=shown, has_mask=np.array([True, True, True, True, False]))
    scores = Scores(scores.score, amap, *scores[2:])
    n = len(test.labels)
    d = decide(scores, np.full(n, -5.0), np.full(n, -2.0), 1.0, TYPES)
    table = {r["defect_type"]: r for r in per_type_detection(test, scores, d, TYPES).iter_rows(named=True)}
    assert table["crack"]["pixel_auroc"] == 1.0 and table["stain"]["pixel_auroc"] == 0.0
    assert table["crack"]["pixel_share"] == pytest.approx(1 / 3) and table["stain"]["pixel_share"] == pytest.approx(2 / 3)
    assert table["crack"]["images"] == 1 and table["stain"]["images"] == 2


def test_type_accuracy_three_ways_on_a_hand_counted_case():
    """Six images: 2 normals, then a crack, a stain, a stain and a crack; the type head calls the four defects crack,
    stain, crack (wrong), crack, and the last two defects score below the threshold (misses)."""
    from uniadc_core.evaluation.evaluate import confusion_table
    from uniadc_core.metrics import confusion_matrix

    labels = [0, 0, 1, 2, 2, 1]
    n, size = len(labels), 8
    masks = np.zeros((n, size, size), np.uint8)
    amap = np.full((n, size, size), -6.0, np.float32)
    for i, lab in enumerate(labels):
        if lab:
            masks[i, 2:5, 2:5] = lab
            amap[i, 2:5, 2:5] = 10.0 if i < 4 else -3.0  # images 4 and 5: defects scored below the threshold
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    pixel_types = np.where(masks > 0, masks, 1).astype(np.uint8)  # the pixel argmax is right on every defect pixel
    scores = Scores(amap.reshape(n, -1).max(1), amap, probs, pixel_types, np.zeros((n, 4)), np.full(pixel_types.shape, 255, np.uint8))
    test = EvalSet([None] * n, masks, np.ones(n, bool), np.asarray(labels), ["a"] * n, [f"{i}.png" for i in range(n)])
    d = decide(scores, np.full(n, -5.0), np.full(n, -2.0), 1.0, TYPES)
    assert d.is_anomaly.tolist() == [False, False, True, True, False, False]
    m = compute_metrics(d, test, 0.3, len(TYPES))
    # at the threshold: the 2 normals, the crack and the stain decided anomalous are right: 4 of 6
    assert m["type_accuracy"] == pytest.approx(4 / 6) and m["miss_rate"] == 0.5
    # given the defect: crack->crack, stain->stain, stain->crack (wrong), crack->crack: 3 of 4, misses included
    assert m["type_accuracy_given_anomaly"] == pytest.approx(3 / 4)
    # calibration over the 4 defects, probabilities 0.9, 0.8, 0.7, 0.6, right, right, wrong, right, one per bin:
    # (|1 - 0.9| + |1 - 0.8| + |0 - 0.7| + |1 - 0.6|) / 4
    assert m["type_calibration_error"] == pytest.approx(0.35)
    assert m["type_named_share"] == 1.0 and m["type_accuracy_named"] == pytest.approx(3 / 4)
    # abstaining below 0.75: images 4 and 5 (0.7, 0.6) are "unknown", the rest keep their type
    sure = decide(scores, np.full(n, -5.0), np.full(n, -2.0), 1.0, TYPES, abstain_below=0.75)
    assert sure.defect_type == ["crack", "crack", "crack", "stain", "unknown", "unknown"]
    assert sure.type_known.tolist() == [True, True, True, True, False, False]
    # UniADC's rule: min-max over the test set puts only the 10.0 pixels above 0.5 and their argmax is right; the two
    # low defects read as normal: right for the 2 normals and images 2 and 3, wrong for 4 and 5
    assert m["type_accuracy_uniadc_protocol"] == pytest.approx(4 / 6)
    table = confusion_table(confusion_matrix(test.labels, d.label, 3), TYPES)
    assert table.columns == ["true", "decided normal (a miss)", "decided crack", "decided stain", "images"]
    assert table.row(1) == ("crack", 1, 1, 0, 2) and table.row(2) == ("stain", 1, 0, 1, 2) and table.row(0) == ("normal", 2, 0, 0, 2)
