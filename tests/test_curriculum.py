"""The CLIMD-style curriculum: difficulty, within-class ranks and the class scheduler."""
import numpy as np
import pytest

from train.fitting.curriculum import CurriculumScheduler, difficulty, within_class_rank


def test_difficulty_orders_agreeing_confident_then_complementary_then_neither():
    d = difficulty(np.array([1.0, 1.0, 0.0, 0.5]), np.array([1.0, 0.0, 0.0, 0.5]))
    assert d.tolist() == pytest.approx([0.0, 0.75, 1.0, 0.5])


def test_ranks_are_within_each_class():
    y = np.array([0, 0, 0, 1, 1])
    r = within_class_rank(np.array([0.9, 0.1, 0.5, 0.99, 0.98]), y)
    assert r.tolist() == pytest.approx([1, 1 / 3, 2 / 3, 1, 0.5])


def test_scheduler_moves_from_balanced_to_true_and_from_easy_to_all():
    y = np.array([0] * 90 + [1] * 10)
    rank = within_class_rank(np.arange(100.0), y)
    s = CurriculumScheduler(y, rank, epochs=5, start=0.3, full_at=0.7)
    assert s.class_distribution(0).tolist() == pytest.approx([0.5, 0.5])
    assert s.class_distribution(4).tolist() == pytest.approx([0.9, 0.1])
    assert s.eligible_share(0) == pytest.approx(0.3) and s.eligible_share(3) == 1.0
    rng = np.random.default_rng(0)
    first = s.epoch_indices(0, rng)
    assert len(first) == 100
    assert abs((y[first] == 1).mean() - 0.5) < 0.15      # balanced draw of the rare class
    assert rank[first].max() <= 0.3 + 1e-9                # only the easiest 30% of each class
    last = np.concatenate([s.epoch_indices(4, rng) for _ in range(20)])
    assert abs((y[last] == 1).mean() - 0.1) < 0.03
    assert rank[last].max() == 1.0
