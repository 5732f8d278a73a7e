"""Mask agreement, per image, as ISIC 2018 Task 1 scored it; with lesion-bootstrap CIs."""
from __future__ import annotations

import numpy as np

from train.evaluation.stats import bootstrap_mean_ci

JACCARD_FLOOR = 0.65   # ISIC 2018 Task 1: a per-image Jaccard under this counts as 0


def mask_scores(predicted, truth) -> dict[str, np.ndarray]:
    """Per image: Dice, Jaccard and the threshold Jaccard of bool masks of the same size (two
    empty masks agree perfectly)."""
    dice, jaccard = [], []
    for p, t in zip(predicted, truth):
        p, t = np.asarray(p, bool), np.asarray(t, bool)
        if p.shape != t.shape:
            raise ValueError(f"a predicted mask of shape {p.shape} against a true one of {t.shape}")
        inter, union, total = (p & t).sum(), (p | t).sum(), p.sum() + t.sum()
        dice.append(1.0 if total == 0 else 2 * inter / total)
        jaccard.append(1.0 if union == 0 else inter / union)
    jaccard = np.asarray(jaccard, float)
    return {"dice": np.asarray(dice, float), "jaccard": jaccard,
            "threshold_jaccard": np.where(jaccard < JACCARD_FLOOR, 0.0, jaccard)}


def summarise(scores: dict[str, np.ndarray], lesions, n_boot: int = 1000, seed: int = 0) -> dict:
    """{metric: {"mean", "ci": [lower, upper]}}: the mean over images, 95% CI resampling lesions."""
    out = {}
    for name, v in scores.items():
        mean, lo, hi = bootstrap_mean_ci(v, lesions, n_boot, seed)
        out[name] = {"mean": mean, "ci": [lo, hi]}
    return out
