"""What if: the fusion model's answer for other ages, sexes and sites, the image as it is.

Each field is swept on its own, the other two as entered: every age in AGE_SWEEP, every sex, every
site. The rows go through the fusion heads in the same pass as the Shapley coalitions (no backbone
runs); `what_if` turns their probabilities into /report's `what_if`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..classifier.metadata import AgeScaler, Metadata
from ..classifier.vocab import CLASSES, SEXES, SITES

AGE_SWEEP = tuple(range(0, 91, 5))   # the what-if's ages, years


def sweep(entered: Metadata) -> list[Metadata]:
    """The metadata varying one field at a time, the other two as entered: ages, then sexes, then sites."""
    return ([entered._replace(age=float(a)) for a in AGE_SWEEP] + [entered._replace(sex=s) for s in SEXES]
            + [entered._replace(site=s) for s in SITES])


def sweep_rows(entered: Metadata, scaler: AgeScaler) -> torch.Tensor:
    """sweep(entered), encoded: (rows, META_DIM)."""
    return torch.stack([torch.from_numpy(m.encode(scaler)) for m in sweep(entered)])


def what_if(swept: np.ndarray) -> dict:
    """The /report what_if contract from the sweep rows' calibrated probabilities (rows, classes)."""
    out, start = {}, 0
    for name, values in (("age", list(AGE_SWEEP)), ("sex", list(SEXES)), ("site", list(SITES))):
        block = swept[start:start + len(values)]
        start += len(values)
        out[name] = {"values": values,
                     "probabilities": {c: [float(v) for v in block[:, k]] for k, c in enumerate(CLASSES)}}
    return out
