"""Class-conditional (Mondrian) split-conformal prediction sets.

Nonconformity of a case for class c: 1 - p_c, with p the model's calibrated probabilities.
For each true class c, the threshold q_c is the ceil((n_c + 1)(1 - alpha))-th smallest score
among the n_c calibration cases of class c. The set of an image holds every class c with
1 - p_c <= q_c. If calibration and new cases are exchangeable within each class, then for
every true class, melanoma included, P(true class in the set) >= 1 - alpha: a promise per
class, not only on average over a case mix dominated by nevi. It says nothing about any
single image, and sets grow where the model is unsure.
"""
from __future__ import annotations

import math

import numpy as np

from ..classifier.vocab import CLASSES

LEVELS = ("0.9", "0.95")   # coverage levels, as the manifest and /report key them


def class_thresholds(probs: np.ndarray, y: np.ndarray, coverage: float) -> np.ndarray:
    """(classes,) thresholds on 1 - p from calibration probabilities (N, classes) and labels.

    A class with too few calibration cases for the level (or none) gets threshold 1: it is
    always in the set, the only way to keep the promise for it.
    """
    probs, y = np.asarray(probs, float), np.asarray(y)
    out = np.ones(probs.shape[1])
    for c in range(probs.shape[1]):
        scores = np.sort(1.0 - probs[y == c, c])
        rank = math.ceil((len(scores) + 1) * coverage)
        if 0 < rank <= len(scores):
            out[c] = scores[rank - 1]
    return out


def prediction_sets(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, classes) bool: class c is in image i's set when 1 - p_ic <= q_c."""
    return (1.0 - np.asarray(probs, float)) <= np.asarray(thresholds)[None, :] + 1e-12


def sets_by_level(probs: dict[str, np.ndarray], thresholds: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per level and kind, (N, classes) bool sets of calibrated probabilities probs (kind -> (N,
    classes)) under thresholds (level -> kind -> class thresholds: the manifest's); {} without any."""
    return {level: {k: prediction_sets(probs[k], q[k]) for k in probs if k in q} for level, q in thresholds.items()}


def set_classes(sets: dict) -> dict[str, dict[str, list[str]]]:
    """sets_by_level's sets of one image, as the classes in each: level -> kind -> classes."""
    return {level: {k: [c for c, inside in zip(CLASSES, m[0]) if inside] for k, m in kinds.items()}
            for level, kinds in sets.items()}


def coverage_report(sets: np.ndarray, y: np.ndarray, classes) -> dict:
    """Marginal and per-class empirical coverage and mean set size of given sets."""
    y = np.asarray(y)
    hit = sets[np.arange(len(y)), y]
    per_class = {c: {"n": int((y == k).sum()),
                     "coverage": float(hit[y == k].mean()) if (y == k).any() else None,
                     "mean_size": float(sets[y == k].sum(1).mean()) if (y == k).any() else None}
                 for k, c in enumerate(classes)}
    return {"coverage": float(hit.mean()), "mean_size": float(sets.sum(1).mean()), "per_class": per_class}
