"""Class-conditional split-conformal sets: known quantiles, and the coverage promise per class."""
import numpy as np

from lesion_app.evidence.conformal import class_thresholds, coverage_report, prediction_sets


def test_thresholds_are_the_finite_sample_quantile_of_each_class():
    # Class 0: 9 calibration cases with p0 = 0.1, 0.2, ..., 0.9 -> scores 0.9 .. 0.1.
    # At 80%: rank ceil(10 * 0.8) = 8 of the sorted scores 0.1 .. 0.9 -> 0.8.
    p0 = np.arange(1, 10) / 10
    probs = np.stack([p0, 1 - p0], 1)
    y = np.zeros(9, int)
    q = class_thresholds(probs, y, 0.8)
    assert np.isclose(q[0], 0.8)
    assert q[1] == 1.0                          # no calibration case of class 1: always in the set
    # At 95% the rank (ceil(9.5) = 10) exceeds the 9 cases: the class is always included.
    assert class_thresholds(probs, y, 0.95)[0] == 1.0
    sets = prediction_sets(np.array([[0.25, 0.75], [0.15, 0.85]]), q)
    assert sets.tolist() == [[True, True], [False, True]]   # 1 - 0.25 = 0.75 <= 0.8; 0.85 > 0.8


def synthetic(n, rng, margins=(1.0, 1.0, 1.0)):
    """Exchangeable cases of 3 imbalanced classes with noisy, overlapping probabilities; a
    class's margin sets how clearly the model sees it."""
    y = rng.choice(3, n, p=[0.8, 0.15, 0.05])
    logits = rng.normal(0, 1.2, (n, 3))
    logits[np.arange(n), y] += np.asarray(margins)[y]
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def test_every_class_is_covered_at_the_level_on_new_exchangeable_cases():
    rng = np.random.default_rng(0)
    for level in (0.9, 0.95):
        per_class = []
        for _ in range(200):
            pc, yc = synthetic(600, rng)
            pt, yt = synthetic(600, rng)
            rep = coverage_report(prediction_sets(pt, class_thresholds(pc, yc, level)), yt, ("a", "b", "c"))
            per_class.append([rep["per_class"][c]["coverage"] for c in ("a", "b", "c")])
        mean = np.nanmean(np.array(per_class, float), 0)
        # Guaranteed >= level on average over calibration draws; the rare class (~30 calibration
        # cases) overshoots by up to 1/(n_c + 1); allow 0.01 of simulation noise below.
        assert (mean >= level - 0.01).all(), (level, mean)
        assert (mean <= level + 0.06).all(), (level, mean)


def test_marginal_only_calibration_would_break_the_promise_for_the_rare_class():
    # Why Mondrian: when the rare class is also the hard one (as melanoma is next to nevi), one
    # threshold for all classes covers the common class and misses the rare one.
    rng = np.random.default_rng(1)
    pc, yc = synthetic(3000, rng, margins=(2.0, 1.0, 0.0))
    pt, yt = synthetic(3000, rng, margins=(2.0, 1.0, 0.0))
    scores = np.sort(1 - pc[np.arange(len(yc)), yc])
    one = scores[int(np.ceil((len(scores) + 1) * 0.9)) - 1]
    marginal = coverage_report(prediction_sets(pt, np.full(3, one)), yt, ("a", "b", "c"))
    mondrian = coverage_report(prediction_sets(pt, class_thresholds(pc, yc, 0.9)), yt, ("a", "b", "c"))
    assert marginal["per_class"]["c"]["coverage"] < 0.85 <= mondrian["per_class"]["c"]["coverage"]
