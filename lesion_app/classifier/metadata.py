"""Metadata encoding shared by training, evaluation and the app.

Layout of one encoded row (length ``META_DIM``):
  [age_z, age_missing, sex one-hot (3), site one-hot (15)]
A missing age is encoded as age_z = 0 with age_missing = 1; unknown sex and site are
their own one-hot columns, so "not entered" is an ordinary, trained input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .vocab import AGE_RANGE, SEXES, SITES, UNKNOWN

META_DIM = 2 + len(SEXES) + len(SITES)
# Column ranges of the three Shapley groups inside an encoded row.
GROUPS = {
    "age": slice(0, 2),
    "sex": slice(2, 2 + len(SEXES)),
    "site": slice(2 + len(SEXES), META_DIM),
}


class MetadataError(ValueError):
    """A metadata value outside the vocabulary or the valid age range."""


@dataclass(frozen=True)
class AgeScaler:
    """Standardises age with the training split's mean and standard deviation."""
    mean: float
    std: float

    @classmethod
    def fit(cls, ages) -> "AgeScaler":
        a = np.asarray([x for x in ages if x is not None and not _isnan(x)], dtype=float)
        return cls(mean=float(a.mean()), std=float(a.std()))


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def parse_age(age) -> float | None:
    """Age in years from a form or API value.

    Blank means not entered: None, NaN, '' and whitespace-only strings -> None. A number, or a
    string holding one (padding ignored, e.g. ' 63 '), within AGE_RANGE -> float. Anything else
    (text, booleans, out of range, infinite) raises MetadataError with a message for the user.
    """
    if age is None or _isnan(age) or (isinstance(age, str) and not age.strip()):
        return None
    if isinstance(age, bool):  # float(True) == 1.0: a checkbox value is not an age
        raise MetadataError(f"Age must be a number of years, got {age!r}.")
    try:
        value = float(age)
    except (TypeError, ValueError):
        raise MetadataError(f"Age must be a number of years, got {age!r}.") from None
    if not (AGE_RANGE[0] <= value <= AGE_RANGE[1]):
        raise MetadataError(
            f"Age must be between {AGE_RANGE[0]:g} and {AGE_RANGE[1]:g} years, got {value:g}.")
    return value


def parse_choice(value, vocabulary, what: str) -> str:
    """A sex or site from a form or API value, as its vocabulary entry.

    Blank means not entered: None, NaN, '' and whitespace-only strings -> 'unknown'. Otherwise
    surrounding whitespace and case are ignored (' Back ' -> 'back'); a value that is still not
    in `vocabulary` raises MetadataError listing the accepted values.
    """
    if value is None or _isnan(value) or (isinstance(value, str) and not value.strip()):
        return UNKNOWN
    v = str(value).strip().lower()
    if v not in vocabulary:
        raise MetadataError(f"Unknown {what} {value!r}; expected one of: {', '.join(vocabulary)}.")
    return v


def parse_metadata(age, sex, site) -> tuple[float | None, str, str]:
    """(age, sex, site) as the models take them: None / 'unknown' for what was not entered."""
    return parse_age(age), parse_choice(sex, SEXES, "sex"), parse_choice(site, SITES, "site")


def encode_metadata(age, sex, site, scaler: AgeScaler) -> np.ndarray:
    """Encodes one patient's (age, sex, site) as a float32 row of length META_DIM."""
    a = parse_age(age)
    row = np.zeros(META_DIM, dtype=np.float32)
    if a is None:
        row[1] = 1.0
    else:
        row[0] = (a - scaler.mean) / scaler.std
    row[GROUPS["sex"]][SEXES.index(parse_choice(sex, SEXES, "sex"))] = 1.0
    row[GROUPS["site"]][SITES.index(parse_choice(site, SITES, "site"))] = 1.0
    return row


def unknown_row(scaler: AgeScaler) -> np.ndarray:
    """The 'nothing entered' row: missing age, unknown sex, unknown site."""
    return encode_metadata(None, UNKNOWN, UNKNOWN, scaler)


def encode_frame(df, scaler: AgeScaler) -> np.ndarray:
    """Encodes a HAM10000 metadata frame (columns age, sex, localization)."""
    return np.stack([encode_metadata(a, s, l, scaler)
                     for a, s, l in zip(df["age"], df["sex"], df["localization"])])
