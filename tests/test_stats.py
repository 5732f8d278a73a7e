"""Each report statistic on a small constructed case with a known answer."""
import numpy as np
import pytest
from scipy.stats import binomtest

from train.evaluation.metrics import balanced_accuracy, macro_auc
from train.evaluation.stats import (bootstrap_ci, complementarity, energy_inside, mcnemar, paired_bootstrap,
                                    pointing_game, reliability, sensitivity_at_specificity)


def onehot_probs(pred, k=3, p=0.9):
    probs = np.full((len(pred), k), (1 - p) / (k - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_bootstrap_ci_of_a_perfect_classifier_is_a_point():
    y = np.array([0, 1, 2] * 10)
    est, lo, hi = bootstrap_ci(balanced_accuracy, y, onehot_probs(y), groups=np.arange(30), n_boot=200)
    assert est == lo == hi == 1.0


def test_bootstrap_ci_covers_the_estimate_and_shrinks_with_more_lesions():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
        est, lo, hi = bootstrap_ci(balanced_accuracy, y, onehot_probs(pred), np.arange(n), n_boot=300)
        assert lo <= est <= hi
        return hi - lo
    assert width(2000) < width(100) / 2.5


def test_bootstrap_resamples_whole_lesions():
    # 10 lesions x 5 identical images: the CI must be as wide as with 10 single images.
    y = np.repeat(np.array([0, 1] * 5), 5)
    pred = y.copy()
    pred[:10] = 1 - pred[:10]          # the first two lesions are wrong
    groups = np.repeat(np.arange(10), 5)
    est, lo, hi = bootstrap_ci(balanced_accuracy, y, onehot_probs(pred, 2), groups, n_boot=500)
    _, lo1, hi1 = bootstrap_ci(balanced_accuracy, y[::5], onehot_probs(pred[::5], 2), groups[::5], n_boot=500)
    assert est == pytest.approx(0.8) and (hi - lo) == pytest.approx(hi1 - lo1, abs=0.1)


def test_mcnemar_exact_matches_the_binomial_test():
    a = np.array([1] * 10 + [0] * 2 + [1] * 30, bool)     # 10 only-a, 2 only-b, 30 both
    b = np.array([0] * 10 + [1] * 2 + [1] * 30, bool)
    r = mcnemar(a, b)
    assert (r["only_a_correct"], r["only_b_correct"]) == (10, 2)
    assert r["p_value"] == pytest.approx(binomtest(2, 12, 0.5).pvalue)


def test_mcnemar_chi_squared_known_value():
    a = np.array([1] * 40 + [0] * 20, bool)
    b = np.array([0] * 40 + [1] * 20, bool)
    r = mcnemar(a, b)
    assert r["statistic"] == pytest.approx((20 - 1) ** 2 / 60)
    assert r["method"].startswith("chi")


def test_paired_bootstrap_detects_a_real_auc_gain():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.stack([1 - y * 0.8 - rng.random(400) * 0.2, y * 0.8 + rng.random(400) * 0.2], 1)
    noise = rng.random((400, 2))
    r = paired_bootstrap(macro_auc, y, noise, good, np.arange(400), n_boot=300)
    assert r["difference"] > 0.4 and r["ci"][0] > 0 and r["p_value"] < 0.01


def test_sensitivity_at_specificity_known_case():
    # negatives' scores 0..0.9 (10), positives' 0.5..0.95 (10 cases)
    neg = np.linspace(0, 0.9, 10)
    pos = np.linspace(0.5, 0.95, 10)
    y = np.r_[np.zeros(10), np.ones(10)]
    r = sensitivity_at_specificity(y, np.r_[neg, pos], 0.9)
    # threshold just above the 2nd-highest negative (0.8) leaves 1 FP of 10 -> spec 0.9
    assert r["specificity"] >= 0.9
    assert r["sensitivity"] == pytest.approx((pos >= r["threshold"]).mean())
    assert r["threshold"] > 0.8 - 1e-9 and (neg >= r["threshold"]).mean() <= 0.1


def test_complementarity_counts():
    y = np.array([0, 0, 0, 1, 1])
    img = np.array([0, 1, 1, 1, 0])
    fus = np.array([1, 0, 1, 1, 1])
    c = complementarity(y, img, fus, 2)
    assert c[0] == {"support": 3, "fusion_fixed": 1, "fusion_broke": 1}
    assert c[1] == {"support": 2, "fusion_fixed": 1, "fusion_broke": 0}


def test_energy_and_pointing_game():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    cam = np.zeros((10, 10))
    cam[3, 3] = 3.0
    cam[8, 8] = 1.0
    assert energy_inside(cam, mask) == pytest.approx(0.75)
    assert pointing_game(cam, mask) is True
    cam[8, 8] = 5.0
    assert pointing_game(cam, mask) is False
    assert pointing_game(cam, mask, tolerance=4) is True
    assert energy_inside(np.zeros((10, 10)), mask) is None and pointing_game(np.zeros((10, 10)), mask) is None


def test_reliability_bins():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45]])
    bins = reliability(probs, np.array([0, 1, 0]), bins=10)
    top = bins[-1]
    assert top["n"] == 2 and top["accuracy"] == 0.5 and top["confidence"] == pytest.approx(0.95)
    assert sum(b["n"] for b in bins) == 3


def test_confusion_metrics_known_case_and_row_weights():
    from train.evaluation.stats import confusion_metrics
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    m = confusion_metrics(y, pred, np.ones((1, 4)), n_classes=3, positive=0)
    # recalls 1/2 and 1 -> 0.75; F1 2/3 and 4/5 (class 2 absent, left out)
    assert m["balanced_accuracy"][0] == pytest.approx(0.75)
    assert m["macro_f1"][0] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["recall"][0] == pytest.approx(0.5)
    # Weight 3 on the correct class-0 row: class-0 recall 3/4; a class absent from a row is nan.
    w = np.array([[3, 1, 1, 1], [0, 0, 1, 1]])
    m = confusion_metrics(y, pred, w, n_classes=3, positive=0)
    assert m["recall"][0] == pytest.approx(0.75) and np.isnan(m["recall"][1])
    assert m["balanced_accuracy"][1] == pytest.approx(1.0)


def test_resample_counts_match_the_bootstrap_samples_and_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from train.evaluation.stats import _resamples, confusion_metrics, resample_counts
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 4, 60))
    groups = np.repeat(np.arange(30), 2)
    w = resample_counts(y, groups, n_boot=20, seed=3)
    m = confusion_metrics(y, pred, w, n_classes=4, positive=2)
    for b, idx in enumerate(_resamples(y, groups, 20, 3)):
        assert w[b].sum() == len(idx)
        assert m["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(y[idx], pred[idx]))
        assert m["macro_f1"][b] == pytest.approx(
            f1_score(y[idx], pred[idx], labels=sorted(set(y[idx])), average="macro", zero_division=0))
