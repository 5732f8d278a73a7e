"""train.fitting.distributed: each rank's share of an epoch plan, and gathering across ranks."""
import numpy as np
import pytest

from train.fitting import distributed
from train.fitting.curriculum import EpochPlan, within_class_rank
from train.fitting.distributed import Dist, RankShare

Y = np.array([0] * 40 + [1] * 12 + [2] * 5 + [3] * 2)      # 59 cases: 59 is prime, so shares are uneven
RANK = within_class_rank(np.random.default_rng(0).random(len(Y)), Y)


@pytest.mark.parametrize("sampler", ["none", "balanced", "curriculum"])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_rank_shares_are_disjoint_and_cover_the_epochs_plan(sampler, world):
    plan = EpochPlan(sampler, Y, epochs=4, rank=RANK)
    for epoch in range(4):
        expected = plan.rows(epoch, EpochPlan.generator(0, epoch))     # what one process would draw
        shares = []
        for r in range(world):
            share = RankShare(plan, seed=0, rank=r, world=world)
            share.set_epoch(epoch)
            padded = share.padded_rows(epoch)
            assert np.array_equal(padded[:len(Y)], expected)            # the same plan on every rank
            keys = list(share)
            assert len(keys) == len(share) == -(-len(Y) // world)       # equal shares: equal step counts
            assert [row for row, _ in keys] == [int(padded[p]) for p in share.positions()]
            shares.append(list(share.positions()))
        positions = [p for s in shares for p in s]
        assert len(positions) == len(set(positions))                    # disjoint
        assert sorted(positions) == list(range(len(padded)))            # complete
        assert len(padded) - len(Y) < world                             # padded by fewer than world rows


def test_each_step_of_the_ranks_covers_one_global_batch():
    batch, world = 8, 4
    plan = EpochPlan("none", Y, epochs=1)
    per_rank = [list(RankShare(plan, 0, r, world).positions()) for r in range(world)]
    for step in range(-(-len(per_rank[0]) // (batch // world))):
        got = sorted(p for s in per_rank for p in s[step * batch // world:(step + 1) * batch // world])
        assert got == list(range(step * batch, min((step + 1) * batch, len(per_rank[0]) * world)))


def test_augmentation_seeds_depend_on_the_position_not_the_world():
    plan = EpochPlan("balanced", Y, epochs=1)
    one = dict((p, k) for p, k in zip(RankShare(plan, 0, 0, 1).positions(), RankShare(plan, 0, 0, 1)))
    for r in range(3):
        share = RankShare(plan, 0, r, 3)
        for p, key in zip(share.positions(), share):
            if p < len(Y):
                assert key == one[p]


def test_a_single_process_gathers_its_own_rows():
    d = Dist()
    rows = distributed.shard(5, d)
    out = distributed.gather_rows(rows, np.arange(10.0).reshape(5, 2)[rows], 5, d)
    assert out.tolist() == np.arange(10.0).reshape(5, 2).tolist()
    assert distributed.all_sum([1.5, 2.0], d) == [1.5, 2.0] and distributed.broadcast("x", d) == "x"


def test_the_cached_path_keeps_its_historical_draws():
    """EpochPlan with the np.random module draws what train_member drew before it existed."""
    from train.fitting.objectives import class_weights
    w = class_weights(Y)
    np.random.seed(3)
    old = np.random.choice(len(Y), len(Y), p=(w[Y] / w[Y].sum()).numpy())
    np.random.seed(3)
    assert np.array_equal(EpochPlan("balanced", Y, 1).rows(0, np.random), old)
