import numpy as np
import pytest

from sklearn.metrics import balanced_accuracy_score

from train.evaluation.metrics import (HEADLINE_METRICS, MEL, balanced_accuracy, class_aucs, classification_metrics,
                                      expected_calibration_error, fit_temperature, macro_auc, macro_f1,
                                      mel_sensitivity_at, softmax)


def test_ece_known_case():
    # Two bins: conf 0.9 with 50% accuracy (gap .4), conf 0.6 with 100% accuracy (gap .4).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, y, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.tile([[0.75, 0.25]], (8, 1))
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)


def test_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 7))
    y = np.array([rng.choice(7, p=p) for p in softmax(logits, 2.0)])
    assert fit_temperature(logits, y) == pytest.approx(2.0, rel=0.05)


def test_classification_metrics_contract_and_values():
    y = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 6])
    probs = np.full((10, 7), 0.01)
    pred = np.array([0, 1, 1, 1, 2, 3, 4, 5, 6, 0])
    probs[np.arange(10), pred] = 0.94
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(0.8)
    # recalls: akiec .5, bcc 1, others 1, vasc .5 -> mean 6/7
    assert m["balanced_accuracy"] == pytest.approx(6 / 7)
    assert m["per_class"]["akiec"]["support"] == 2 and m["per_class"]["bcc"]["precision"] == pytest.approx(2 / 3)
    assert np.array(m["confusion_matrix"]["rows_true_cols_pred"]).sum() == 10
    assert set(m) >= {"balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "ece"}


def onehot(pred, k=7, p=0.9):
    probs = np.full((len(pred), k), (1 - p) / (k - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_is_mean_recall_over_classes_present():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 5])  # recalls .75, .5, 0; class 5 predicted but absent
    assert balanced_accuracy(y, onehot(pred)) == pytest.approx((0.75 + 0.5 + 0) / 3)
    assert balanced_accuracy(y, onehot(pred)) == balanced_accuracy_score(y, pred)
    # One class present: its recall, which is the accuracy.
    assert balanced_accuracy(np.array([3, 3, 3, 3]), onehot([3, 3, 1, 3])) == 0.75


def test_macro_f1_averages_over_classes_present_only():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 2])  # F1: class 0 = 1, class 1 = 2/3; class 2 absent from y
    assert macro_f1(y, onehot(pred)) == pytest.approx((1 + 2 / 3) / 2)


def test_auc_of_a_class_without_positives_or_negatives_is_none_and_left_out():
    y = np.array([0, 0, 1, 1])
    probs = np.zeros((4, 3))
    probs[:, 0] = [0.9, 0.8, 0.2, 0.1]  # separates class 0 perfectly
    probs[:, 1] = [0.2, 0.6, 0.4, 0.8]  # class 1 positives rank above negatives in 3 of 4 pairs
    assert class_aucs(y, probs) == [1.0, 0.75, None]
    assert macro_auc(y, probs) == pytest.approx((1 + 0.75) / 2)
    assert macro_auc(np.zeros(4, int), probs) is None


def test_mel_sensitivity_at_a_specificity():
    # 10 non-melanomas with P(mel) 0..0.9 and 4 melanomas at 0.95, 0.85, 0.5, 0.05: at 90%
    # specificity (at most one non-melanoma flagged) the threshold is 0.85, catching 2 of 4.
    y = np.r_[np.full(10, MEL - 1), np.full(4, MEL)]
    probs = np.zeros((14, 7))
    probs[:, MEL] = np.r_[np.linspace(0, 0.9, 10), [0.95, 0.85, 0.5, 0.05]]
    metric = mel_sensitivity_at(0.90)
    assert metric(y, probs) == pytest.approx(0.5)
    assert mel_sensitivity_at(1.0)(y, probs) == pytest.approx(0.25)
    assert metric.__name__ == "mel_sensitivity_at_90_specificity"
    assert all(fn.__name__ == name for name, fn in HEADLINE_METRICS.items() if name.startswith("mel_"))


def test_classification_metrics_uses_the_per_metric_functions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 200)
    probs = softmax(rng.normal(size=(200, 7)) + 2 * np.eye(7)[y])
    m = classification_metrics(y, probs)
    assert (m["balanced_accuracy"], m["macro_f1"], m["macro_auc"]) == (
        balanced_accuracy(y, probs), macro_f1(y, probs), macro_auc(y, probs))
    assert [m["per_class"][c]["auc"] for c in m["per_class"]] == class_aucs(y, probs)
