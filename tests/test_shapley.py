import itertools
from math import factorial

import numpy as np
import pytest
import torch

from lesion_app.classifier.metadata import GROUPS, AgeScaler, encode_metadata, unknown_row
from lesion_app.evidence.shapley import N_COALITIONS, PLAYERS, coalition_rows, shapley_values


def permutation_shapley(v):
    """The textbook definition: average marginal contribution over all orderings."""
    n = len(PLAYERS)
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        s = 0
        for i in order:
            phi[i] += v(s | 1 << i) - v(s)
            s |= 1 << i
    return phi / factorial(n)


def test_matches_the_permutation_definition_and_is_efficient():
    rng = np.random.default_rng(0)
    values = rng.random((N_COALITIONS, 7))
    phi = shapley_values(values)
    for k in range(7):
        assert np.allclose(phi[:, k], permutation_shapley(lambda s: values[s, k]))
    assert np.allclose(values[0] + phi.sum(0), values[-1])


def test_dummy_player_gets_zero_and_additive_game_gets_its_terms():
    # v(S) = 0.1*[age] + 0.3*[site]: sex is a dummy.
    v = np.array([[0.1 * (s & 1) + 0.3 * (s >> 2 & 1)] for s in range(N_COALITIONS)])
    assert np.allclose(shapley_values(v)[:, 0], [0.1, 0.0, 0.3])


def test_matches_the_shap_library_exact_explainer():
    shap = pytest.importorskip("shap")
    rng = np.random.default_rng(1)
    values = rng.random(N_COALITIONS)

    def f(mask):  # mask rows: which players are present
        idx = (mask.astype(int) * (1 << np.arange(len(PLAYERS)))).sum(1)
        return values[idx]

    explainer = shap.explainers.Exact(f, np.zeros((1, len(PLAYERS))))
    ex = explainer(np.ones((1, len(PLAYERS))))
    assert np.allclose(ex.values[0], shapley_values(values[:, None])[:, 0])
    assert ex.base_values[0] == pytest.approx(values[0])


def test_coalition_rows_swap_whole_groups():
    scaler = AgeScaler(50, 20)
    entered = torch.from_numpy(encode_metadata(70, "female", "face", scaler))
    absent = torch.from_numpy(unknown_row(scaler))
    rows = coalition_rows(entered, absent)
    assert torch.equal(rows[0], absent) and torch.equal(rows[-1], entered)
    only_site = rows[0b100]
    assert torch.equal(only_site[GROUPS["site"]], entered[GROUPS["site"]])
    assert torch.equal(only_site[GROUPS["age"]], absent[GROUPS["age"]])
