import numpy as np
import pytest

from train.evaluation.metrics import classification_metrics, expected_calibration_error, fit_temperature, softmax


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
