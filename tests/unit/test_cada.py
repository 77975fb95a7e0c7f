import numpy as np
import pytest

from uniadc_core.cada.regressor import ClassStats, class_statistics, fit_cada, load_cada, save_cada
from uniadc_core.config import FitCadaConfig
from uniadc_core.decision import align


def _clusters(rng, n=40):
    centres = {"a": np.array([3.0, 0, 0, 0]), "b": np.array([0, 3.0, 0, 0]), "c": np.array([0, 0, 3.0, 0])}
    x, classes = [], []
    for c, mu in centres.items():
        x.append(mu + rng.normal(0, 0.3, (n, 4)))
        classes += [c] * n
    return np.concatenate(x), classes


def test_align_formula():
    assert align(np.array([0.5, 1.0]), np.array([0.0, 0.5]), np.array([1.0, 0.75])).tolist() == [0.5, 2.0]


def test_class_statistics_mean_and_max():
    stats = class_statistics(np.array([1.0, 3.0, 10.0]), ["a", "a", "b"])
    assert stats["a"] == ClassStats(2.0, 3.0, 2, False) and stats["b"].gamma == 10.0


def test_regressor_recovers_each_class_statistics_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    x, classes = _clusters(rng)
    stats = {"a": ClassStats(0.1, 0.2, 10, False), "b": ClassStats(0.5, 0.9, 10, False), "c": ClassStats(2.0, 3.0, 10, False)}
    cada = fit_cada(stats, x, classes, FitCadaConfig(steps=400), (0.8, 3.0))
    x_new, classes_new = _clusters(np.random.default_rng(1), n=10)  # unseen images of the same classes
    u, gamma = cada.predict_stats(x_new)
    for c in stats:
        sel = np.asarray(classes_new) == c
        assert np.median(u[sel]) == pytest.approx(stats[c].u, abs=0.1)
        assert np.median(gamma[sel]) == pytest.approx(stats[c].gamma, abs=0.15)
    save_cada(cada, tmp_path / "cada")
    again = load_cada(tmp_path / "cada")
    np.testing.assert_allclose(again.predict_stats(x_new)[0], u, rtol=1e-6)
    assert again.class_stats("b") == (0.5, 0.9)
    with pytest.raises(ValueError, match="no statistics for class 'z'"):
        again.class_stats("z")
    weights = tmp_path / "cada" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"cada/model.safetensors: .* \(truncated or replaced\); re-run the fit_cada stage"):
        load_cada(tmp_path / "cada")


def test_alignment_puts_classes_on_one_scale():
    # class a's normals score ~0.1, class b's ~0.6; b's normals beat a's anomalies on the raw scale
    raw = np.array([0.10, 0.12, 0.30, 0.60, 0.65, 0.95])
    is_anom = np.array([0, 0, 1, 0, 0, 1], bool)
    u = np.array([0.1, 0.1, 0.1, 0.6, 0.6, 0.6])
    gamma = np.array([0.13, 0.13, 0.13, 0.66, 0.66, 0.66])
    aligned = align(raw, u, gamma)
    assert aligned[is_anom].min() > aligned[~is_anom].max()
    assert raw[is_anom].min() < raw[~is_anom].max()


def test_missing_class_statistics_is_an_error():
    with pytest.raises(ValueError, match=r"no normal-score statistics for class\(es\) \['b'\]"):
        fit_cada({"a": ClassStats(0, 1, 1, False)}, np.zeros((2, 3)), ["a", "b"], FitCadaConfig(steps=1), (0, 1))


def test_per_class_calibration_keeps_every_class_false_positive_rate_within_budget():
    from uniadc_core.cada.calibration import calibrate

    rng = np.random.default_rng(0)
    low, high = rng.normal(0.0, 0.1, 900), rng.normal(0.3, 0.1, 100)  # a class whose aligned normals sit higher
    aligned, classes = np.concatenate([low, high]), ["tile"] * 900 + ["board"] * 100
    pooled, per = calibrate(aligned, classes, 99.0, "pooled")
    threshold, _ = calibrate(aligned, classes, 99.0, "per_class")
    # conformal ranks: ceil(901 * 0.99) = 892 of 900, ceil(101 * 0.99) = 100 of 100
    assert per["tile"].threshold == np.sort(low)[891] and per["board"].threshold == high.max()
    assert per["tile"].enough and per["board"].enough and per["board"].count == 100
    assert (high > pooled).mean() > 0.05  # one percentile of all: the high class is flagged far above 1 %
    assert threshold == max(t.threshold for t in per.values()) and max((low > threshold).mean(), (high > threshold).mean()) <= 0.01
    assert calibrate(low, ["tile"] * 900, 99.0, "per_class")[0] == calibrate(low, ["tile"] * 900, 99.0, "pooled")[0]


def test_conformal_threshold_holds_its_false_positive_rate_on_new_normals():
    from uniadc_core.cada.calibration import class_threshold, conformal_rank, min_normals

    assert [conformal_rank(n, 99.0) for n in (98, 99, 200, 21)] == [99, 99, 199, 22]
    assert conformal_rank(19, 95.0) == 19 and conformal_rank(18, 95.0) == 19
    for p in (90.0, 95.0, 99.0, 99.5):  # the fewest normals whose rank is within them, and one fewer is not
        n = min_normals(p)
        assert conformal_rank(n, p) <= n and conformal_rank(n - 1, p) > n - 1
    assert min_normals(99.0) == 99 and min_normals(100.0) is None
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(300):  # many calibration sets of 200 held-out normals, each judged on fresh normals
        t = class_threshold(rng.gamma(2.0, 1.0, 200), 99.0)
        rates.append((rng.gamma(2.0, 1.0, 4000) > t.threshold).mean())
    assert t.enough and t.expected_false_positive_rate == pytest.approx(2 / 201)
    assert np.mean(rates) == pytest.approx(2 / 201, abs=0.0015)  # the rank's exact rate, at most 1 %


def test_too_few_held_out_normals_keep_their_maximum_and_say_so(caplog):
    from uniadc_core.cada.calibration import calibrate

    rng = np.random.default_rng(2)
    aligned = np.concatenate([rng.normal(0, 1, 300), rng.normal(0, 1, 21)])
    with caplog.at_level("WARNING", logger="uniadc_core.cada.fit"):
        threshold, per = calibrate(aligned, ["tile"] * 300 + ["commutator"] * 21, 99.0)
    small = per["commutator"]
    assert not small.enough and small.threshold == aligned[300:].max() and small.expected_false_positive_rate == pytest.approx(1 / 22)
    assert per["tile"].enough and threshold == max(small.threshold, per["tile"].threshold)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "class 'commutator': 21 out-of-sample normals" in msg and "it needs 99" in msg and "ingest.holdout_min" in msg
    assert "fit_cada.leave_item_out: true" in msg
    with pytest.raises(ValueError, match="no held-out normal scores"):
        calibrate(np.zeros(0), [], 99.0, "pooled")
