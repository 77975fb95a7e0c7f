import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from uniadc_core.metrics import accuracy, aupro, auroc, auroc_by_group, confusion_matrix, f1_max, mean_iou


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.4 * y, 1)  # many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_by_group_is_each_groups_auroc_against_the_negatives():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 4, 2000)
    groups[groups == 2] = 0  # group 2 absent: left out
    s = np.round(rng.random(2000) + 0.3 * groups, 2)  # ties across groups
    got = auroc_by_group(s, groups)
    assert sorted(got) == [1, 3]
    for g, value in got.items():
        sel = (groups == 0) | (groups == g)
        assert value == pytest.approx(roc_auc_score(groups[sel] == g, s[sel]), abs=1e-12)
    assert auroc_by_group(s.reshape(40, 50), groups.reshape(40, 50)) == got  # any shape, flattened
    with pytest.raises(ValueError, match="no sample of the negative group 0"):
        auroc_by_group(s[groups > 0], groups[groups > 0])


def test_f1_max_matches_precision_recall_curve():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.4
    s = rng.random(200) + 0.5 * y
    p, r, _ = precision_recall_curve(y, s)
    assert f1_max(s, y) == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-12)), abs=1e-9)


def _slow_aupro(maps, masks, max_fpr):
    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append((maps[~masks] >= t).mean())
        pros.append(np.mean([(maps[i][r] >= t).mean() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    k = np.searchsorted(fprs, max_fpr, side="right")
    end = pros[k - 1] + (max_fpr - fprs[k - 1]) / (fprs[k] - fprs[k - 1]) * (pros[k] - pros[k - 1])
    return np.trapezoid(np.append(pros[:k], end), np.append(fprs[:k], max_fpr)) / max_fpr


def test_aupro_matches_a_direct_per_region_computation():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 2:8, 2:8] = True  # large region
    masks[0, 15:17, 15:17] = True  # small region, same image
    masks[1, 10:20, 3:5] = True
    maps = rng.random(masks.shape) + 0.5 * masks
    assert aupro(maps, masks, 0.3, num_thresholds=2000) == pytest.approx(_slow_aupro(maps, masks, 0.3), abs=2e-3)


def test_aupro_perfect_and_region_weighting():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :2, :2] = True
    perfect = masks.astype(float)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="no defect region"):
        aupro(perfect, np.zeros_like(masks))


def test_confusion_accuracy_and_miou_on_hand_made_case():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    conf = confusion_matrix(true, pred, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(true, pred) == pytest.approx(4 / 6)
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 1/(2+1-1)=1/2
    assert mean_iou(conf) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_degenerate_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="needs both normal and anomalous"):
        auroc(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no samples"):
        accuracy(np.array([]), np.array([]))


def test_aupro_over_valid_pixels_equals_aupro_of_the_cropped_maps():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 10, 14), bool)
    masks[0, 2:5, 3:7] = masks[1, 6:9, 1:4] = masks[2, 1:3, 8:10] = True
    maps = rng.normal(0, 1, masks.shape) + 2.5 * masks
    maps[:, :, 10:] += 10  # the padding scores higher than any defect
    valid = np.zeros(masks.shape, bool)
    valid[:, :, :10] = True
    assert aupro(maps, masks, 0.3, 400, valid) == pytest.approx(aupro(maps[:, :, :10], masks[:, :, :10]), abs=1e-12)
    assert aupro(maps, masks) < aupro(maps, masks, 0.3, 400, valid)
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(maps, masks, 0.3, 400, masks)


def test_recall_at_fpr_counts_positives_above_the_strictest_allowed_negative():
    from uniadc_core.metrics import recall_at_fpr

    negatives = np.arange(100, dtype=float)  # one negative may be flagged at 1 %: threshold just under 99
    positives = np.array([99.5, 98.5, 150.0, 10.0])
    scores = np.concatenate([negatives, positives])
    labels = np.concatenate([np.zeros(100), np.ones(4)])
    assert recall_at_fpr(scores, labels, 0.01) == 0.75  # 150, 99.5 and 98.5 at fpr 1/100
    assert recall_at_fpr(scores, labels, 0.0) == 0.5  # 150 and 99.5 beat every negative
    tied = np.array([1.0, 1.0, 0.0])  # a positive tied with a negative is found only with that negative
    assert recall_at_fpr(tied, np.array([1, 0, 0]), 0.0) == 0.0
