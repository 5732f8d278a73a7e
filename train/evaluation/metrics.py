"""Classification metrics and calibration, shared by fit, evaluate and bundle."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from lesion_app.vocab import CLASSES


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


def _auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y_bin, score)) if 0 < y_bin.sum() < len(y_bin) else None


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """The evaluation contract: headline metrics, per-class table, confusion matrix, ECE.

    AUCs of classes absent from y are None and left out of the macro AUC.
    """
    y = np.asarray(y)
    pred = probs.argmax(1)
    labels = list(range(len(CLASSES)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs = [_auc((y == k).astype(int), probs[:, k]) for k in labels]
    present = [a for a in aucs if a is not None]
    return {
        "n": int(len(y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(set(y)) > 1
        else float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, labels=sorted(set(y)), average="macro", zero_division=0)),
        "accuracy": float((pred == y).mean()),
        "macro_auc": float(np.mean(present)) if present else None,
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
