"""Statistics for the clinical evaluation report; each is tested on a case with a known answer.

The metrics they resample (balanced accuracy, macro-F1, ...) live in train.evaluation.metrics.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy import sparse
from scipy.stats import binom, chi2
from sklearn.metrics import roc_auc_score, roc_curve


def _cluster_resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap sample drawn by whole groups (lesions)."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    pick = rng.integers(0, len(uniq), len(uniq))
    return np.concatenate([members[g] for g in pick])


def _resamples(y: np.ndarray, groups, n_boot: int, seed: int):
    """Row indices of n_boot lesion-level bootstrap samples, skipping single-class ones."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    for _ in range(n_boot):
        idx = _cluster_resample(groups, rng)
        if len(set(y[idx])) >= 2:
            yield idx


def bootstrap_ci(metric: Callable, y, probs, groups, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, lower, upper): percentile CI, resampling whole lesions with replacement."""
    y, probs = np.asarray(y), np.asarray(probs)
    stats = [metric(y[idx], probs[idx]) for idx in _resamples(y, groups, n_boot, seed)]
    a = (1 - level) / 2
    return float(metric(y, probs)), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def bootstrap_mean_ci(values, groups, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of per-image values: percentile CI, resampling whole lesions."""
    values, rng = np.asarray(values, float), np.random.default_rng(seed)
    means = [values[_cluster_resample(np.asarray(groups), rng)].mean() for _ in range(n_boot)]
    a = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_bootstrap(metric: Callable, y, probs_a, probs_b, groups, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """metric(b) - metric(a) with a lesion-resampled 95% CI and a two-sided bootstrap p-value."""
    y, pa, pb = map(np.asarray, (y, probs_a, probs_b))
    diffs = np.asarray([metric(y[idx], pb[idx]) - metric(y[idx], pa[idx])
                        for idx in _resamples(y, groups, n_boot, seed)])
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"difference": float(metric(y, pb) - metric(y, pa)),
            "ci": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
            "p_value": float(min(1.0, p))}


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test on paired correctness: exact binomial when discordant pairs < 25,
    else chi-squared with continuity correction."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())  # only a right, only b right
    n = n01 + n10
    if n == 0:
        return {"only_a_correct": 0, "only_b_correct": 0, "statistic": 0.0, "p_value": 1.0, "method": "none"}
    if n < 25:
        p = min(1.0, 2 * binom.cdf(min(n01, n10), n, 0.5))
        return {"only_a_correct": n01, "only_b_correct": n10, "statistic": float(min(n01, n10)),
                "p_value": float(p), "method": "exact binomial"}
    stat = (abs(n01 - n10) - 1) ** 2 / n
    return {"only_a_correct": n01, "only_b_correct": n10, "statistic": float(stat),
            "p_value": float(chi2.sf(stat, 1)), "method": "chi-squared, continuity corrected"}


def sensitivity_at_specificity(y_binary, score, specificity: float) -> dict:
    """The highest sensitivity whose specificity is >= the target, and its threshold
    (predict positive when score >= threshold)."""
    fpr, tpr, thr = roc_curve(np.asarray(y_binary).astype(int), score)
    ok = (1 - fpr) >= specificity - 1e-12
    i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return {"target_specificity": specificity, "sensitivity": float(tpr[i]),
            "specificity": float(1 - fpr[i]), "threshold": float(min(thr[i], 1.0))}


def complementarity(y, pred_image, pred_fusion, n_classes: int) -> list[dict]:
    """Per true class: cases only the fusion model got right, and only the image-only model."""
    y, pi, pf = map(np.asarray, (y, pred_image, pred_fusion))
    out = []
    for k in range(n_classes):
        m = y == k
        out.append({"support": int(m.sum()),
                    "fusion_fixed": int((m & (pi != y) & (pf == y)).sum()),
                    "fusion_broke": int((m & (pi == y) & (pf != y)).sum())})
    return out


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of heatmap mass inside the lesion mask (None for an empty map)."""
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else None


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool | None:
    """Hit if the heatmap's maximum falls inside the mask (dilated by tolerance pixels)."""
    if not cam.any():
        return None
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    r0, r1 = max(0, r - tolerance), r + tolerance + 1
    c0, c1 = max(0, c - tolerance), c + tolerance + 1
    return bool(mask[r0:r1, c0:c1].any())


def reliability(probs: np.ndarray, y, bins: int = 15) -> list[dict]:
    """Top-label reliability diagram bins: mean confidence, accuracy and count per bin."""
    conf, correct = probs.max(1), (probs.argmax(1) == np.asarray(y))
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None}
            for b in range(bins)]


def resample_rows(y, groups, n_boot: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each lesion-level bootstrap sample: the samples bootstrap_ci draws for this
    seed, for computing several metrics (or several runs' metrics, paired) on the same samples."""
    return list(_resamples(np.asarray(y), groups, n_boot, seed))


def resample_counts(y, groups, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(B, N): how often each row occurs in each lesion-level bootstrap sample; the same
    samples as bootstrap_ci draws for this seed. Feed to confusion_metrics as weights."""
    y = np.asarray(y)
    return np.stack([np.bincount(idx, minlength=len(y)) for idx in _resamples(y, groups, n_boot, seed)])


def confusion_metrics(y, pred, weights: np.ndarray, n_classes: int, positive: int) -> dict:
    """Balanced accuracy, macro-F1 (over classes present) and one class's recall, for every
    row of weights (B, N) at once via weighted confusion matrices; weights of ones give the
    plain metrics. Arrays of shape (B,); the recall is nan where that class is absent."""
    y, pred = np.asarray(y), np.asarray(pred)
    pair = np.zeros((len(y), n_classes * n_classes))
    pair[np.arange(len(y)), y * n_classes + pred] = 1
    cm = (np.atleast_2d(weights) @ pair).reshape(-1, n_classes, n_classes)
    tp, support, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(2), cm.sum(1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / support, np.nan)
        f1 = np.where(present, 2 * tp / (support + predicted), np.nan)
    return {"balanced_accuracy": np.nanmean(recall, 1), "macro_f1": np.nanmean(f1, 1),
            "recall": recall[:, positive]}


# Estimates with their lesion-bootstrap draws, from count weights W (B, N) of resample_counts: every
# group, model and difference computed on the same resamples, so differences are paired.

def interval(estimate, draws) -> list:
    """[estimate, lower, upper] with the percentile 95% CI of the draws (NaN draws ignored; no CI
    from fewer than 10 draws)."""
    draws = np.asarray(draws, float)
    draws = draws[~np.isnan(draws)]
    if estimate is None or (isinstance(estimate, float) and np.isnan(estimate)) or len(draws) < 10:
        return [None if estimate is None or np.isnan(estimate) else float(estimate), None, None]
    return [float(estimate), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]


def recall_and_draws(positive: np.ndarray, hit: np.ndarray, mask: np.ndarray, W: np.ndarray):
    """(estimate, draws): the share of positive rows in mask that are hit (a recall), on all rows
    and on each resample (rows of W), via confusion_metrics."""
    pos, h = positive[mask].astype(int), hit[mask].astype(int)
    if not pos.any():
        return float("nan"), np.full(len(W), np.nan)
    with warnings.catch_warnings():   # resamples without a negative: balanced accuracy's empty mean
        warnings.simplefilter("ignore", RuntimeWarning)
        est = confusion_metrics(pos, h, np.ones((1, len(pos))), 2, 1)["recall"][0]
        return float(est), confusion_metrics(pos, h, W[:, mask], 2, 1)["recall"]


def share_and_draws(part: np.ndarray, whole: np.ndarray, W: np.ndarray):
    """(estimate, draws) of the weighted share of `whole` rows that are also `part` rows."""
    num, den = W @ (part & whole), W @ whole
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((part & whole).sum() / max(whole.sum(), 1)), np.where(den > 0, num / den, np.nan)


def weighted_aucs(positive: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(B,) ROC AUC of score for positive under each row of count weights W (B, n), all at once:
    the Mann-Whitney statistic, ties counted half, which is what roc_auc_score gives on the rows
    repeated by their counts. NaN where a row weighs no positive or no negative."""
    levels, which = np.unique(score, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(score)), (np.arange(len(score)), which)),
                               shape=(len(score), len(levels)))
    wp = (onehot.T @ (W * positive).T).T           # (B, levels): positive weight at each score
    wn = (onehot.T @ (W * ~positive).T).T
    below = np.cumsum(wn, 1) - wn                    # negative weight strictly below each level
    num, den = (wp * (below + 0.5 * wn)).sum(1), wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def auc_and_draws(positive: np.ndarray, score: np.ndarray, mask: np.ndarray, W: np.ndarray, min_each: int):
    """(estimate, draws): ROC AUC of score for positive within mask (roc_auc_score), and on each
    lesion resample (weighted_aucs); NaN when mask has under min_each of either side."""
    pos, s = positive[mask], score[mask]
    if min(pos.sum(), (~pos).sum()) < min_each:
        return float("nan"), np.full(len(W), np.nan)
    return float(roc_auc_score(pos, s)), weighted_aucs(pos, s, W[:, mask])
