"""Exact Shapley values of the three metadata groups (age, sex, site).

With three players there are 2^3 = 8 coalitions, so no sampling is needed. A coalition's
value is the fusion model's calibrated probability with the groups outside it set to
"not entered" (missing age, unknown sex, unknown site); the image features are computed
once and reused, only the small fusion head runs per coalition.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np
import torch

from ..classifier.metadata import GROUPS
from ..classifier.vocab import CLASSES

PLAYERS = tuple(GROUPS)          # ("age", "sex", "site")
N_COALITIONS = 2 ** len(PLAYERS)
ABSENT_BASELINE = ("a feature that is absent is set to 'not entered' (age missing, sex unknown, "
                   "site unknown); base = the fusion model's probability with none of the three entered")


@dataclass
class ShapleyResult:
    """Exact Shapley values of age, sex and site for the fusion probability of `cls`."""
    cls: str
    base: float
    contributions: dict[str, float]  # age, sex, site
    value: float                     # = base + sum(contributions), the fusion probability

    def to_report(self) -> dict:
        return {"class": self.cls, "space": "probability", "base": self.base,
                **self.contributions, "baseline": ABSENT_BASELINE}


def coalition_rows(entered: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """(8, M) metadata rows; row s keeps player i's columns iff bit i of s is set."""
    rows = absent.repeat(N_COALITIONS, 1)
    for s in range(N_COALITIONS):
        for i, player in enumerate(PLAYERS):
            if s >> i & 1:
                rows[s, GROUPS[player]] = entered[GROUPS[player]]
    return rows


def shapley_values(values: np.ndarray) -> np.ndarray:
    """values (8, K): v(coalition s) per output -> (3, K) Shapley values.

    phi_i = sum over S not containing i of |S|!(n-|S|-1)!/n! * (v(S + i) - v(S)).
    Efficiency holds exactly: v(empty) + sum_i phi_i = v(all).
    """
    n = len(PLAYERS)
    phi = np.zeros((n, values.shape[1]))
    for i in range(n):
        for s in range(N_COALITIONS):
            if not s >> i & 1:
                size = bin(s).count("1")
                w = factorial(size) * factorial(n - size - 1) / factorial(n)
                phi[i] += w * (values[s | 1 << i] - values[s])
    return phi


def shapley_result(by_coalition: np.ndarray, phi: np.ndarray, cls: str) -> ShapleyResult:
    """Class cls's Shapley values, from the coalitions' probabilities (8, classes) and their Shapley
    values (3, classes: shapley_values); base: nothing entered, value: everything entered."""
    k = CLASSES.index(cls)
    return ShapleyResult(cls=cls, base=float(by_coalition[0, k]),
                         contributions={p: float(phi[i, k]) for i, p in enumerate(PLAYERS)},
                         value=float(by_coalition[-1][k]))
