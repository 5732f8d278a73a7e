"""Classification metrics and calibration: the one home of each metric, shared by fitting,
evaluation (classification_metrics, the report's bootstraps) and release.

Each per-metric function is metric(y, probs) -> float, the form stats.bootstrap_ci and
stats.paired_bootstrap resample.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from lesion_app.classifier.vocab import CLASSES
from train.evaluation.stats import sensitivity_at_specificity

MEL = CLASSES.index("mel")
NV = CLASSES.index("nv")


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins: sum_b |B|/n * |acc(B) - conf(B)|."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def balanced_accuracy(y, probs) -> float:
    """Mean recall of the top-label prediction over the classes present in y (with one class
    present, its recall: the accuracy)."""
    y, pred = np.asarray(y), np.asarray(probs).argmax(1)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def macro_f1(y, probs) -> float:
    """Mean F1 of the top-label prediction over the classes present in y."""
    y = np.asarray(y)
    return float(f1_score(y, np.asarray(probs).argmax(1), average="macro", labels=sorted(set(y)),
                          zero_division=0))


def class_aucs(y, probs) -> list[float | None]:
    """One-vs-rest ROC AUC of each class (column of probs); None where y has no positives or
    no negatives of it."""
    y, probs = np.asarray(y), np.asarray(probs)
    return [float(roc_auc_score(y == k, probs[:, k])) if 0 < (y == k).sum() < len(y) else None
            for k in range(probs.shape[1])]


def macro_auc(y, probs) -> float | None:
    """Mean one-vs-rest AUC over the classes with an AUC (see class_aucs); None if none has."""
    present = [a for a in class_aucs(y, probs) if a is not None]
    return float(np.mean(present)) if present else None


def mel_sensitivity_at(specificity: float):
    """metric(y, probs): melanoma sensitivity at the best threshold on P(mel) whose
    specificity is at least the given one."""
    def metric(y, probs):
        return sensitivity_at_specificity(np.asarray(y) == MEL, np.asarray(probs)[:, MEL],
                                          specificity)["sensitivity"]
    metric.__name__ = f"mel_sensitivity_at_{int(specificity * 100)}_specificity"
    return metric


def mel_auc(y, probs) -> float | None:
    """Melanoma's one-vs-rest AUC on P(mel); None without melanomas or without other cases."""
    return class_aucs(y, probs)[MEL]


def mel_vs_nv_auc(y, probs) -> float | None:
    """AUC of P(mel) for melanoma against nevi only (the hard pair at other clinics); None
    without both."""
    y, probs = np.asarray(y), np.asarray(probs)
    keep = (y == MEL) | (y == NV)
    if not ((y[keep] == MEL).any() and (y[keep] == NV).any()):
        return None
    return float(roc_auc_score(y[keep] == MEL, probs[keep, MEL]))


def transfer_figures(y, probs) -> dict:
    """What a folder from another clinic is scored on, beside classification_metrics (whose
    balanced accuracy, macro-F1 and macro AUC already run over the classes present): the classes
    present, melanoma AUC and melanoma-vs-nevus AUC."""
    return {"classes_present": [CLASSES[k] for k in sorted(set(np.asarray(y).tolist()))],
            "mel_auc": mel_auc(y, probs), "mel_vs_nv_auc": mel_vs_nv_auc(y, probs)}


# The clinical report's headline metrics, under the names report.json gives them, in its order.
HEADLINE_METRICS = {"balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1, "macro_auc": macro_auc,
                    "mel_sensitivity_at_90_specificity": mel_sensitivity_at(0.90),
                    "mel_sensitivity_at_95_specificity": mel_sensitivity_at(0.95)}


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """The evaluation contract: headline metrics, per-class table, confusion matrix, ECE.

    AUCs of classes absent from y are None and left out of the macro AUC.
    """
    y = np.asarray(y)
    pred = probs.argmax(1)
    labels = list(range(len(CLASSES)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs = class_aucs(y, probs)
    return {
        "n": int(len(y)),
        "balanced_accuracy": balanced_accuracy(y, probs),
        "macro_f1": macro_f1(y, probs),
        "accuracy": float((pred == y).mean()),
        "macro_auc": macro_auc(y, probs),
        "ece": expected_calibration_error(probs, y),
        "per_class": {c: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                          "auc": aucs[k], "support": int(s[k])} for k, c in enumerate(CLASSES)},
        "confusion_matrix": {"labels": list(CLASSES),
                             "rows_true_cols_pred": confusion_matrix(y, pred, labels=labels).tolist()},
    }


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, y)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(np.array(y), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss
    opt.step(closure)
    # Clamped: on tiny or separable validation sets the optimum can run off to infinity.
    return float(log_t.detach().exp().clamp(0.1, 10.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
