"""Metadata encoding shared by training, evaluation and the app.

Layout of one encoded row (length ``META_DIM``):
  [age_z, age_missing, sex one-hot (3), site one-hot (15)]
A missing age is encoded as age_z = 0 with age_missing = 1; unknown sex and site are
their own one-hot columns, so "not entered" is an ordinary, trained input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

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


class Metadata(NamedTuple):
    """One patient's (age, sex, site) as the models take them: None / 'unknown' for what was not
    entered. Made by `parse` (from form, API or CSV values, once) or from values already parsed;
    `encode` does not parse them again."""
    age: float | None = None
    sex: str = UNKNOWN
    site: str = UNKNOWN

    @classmethod
    def parse(cls, age, sex, site) -> "Metadata":
        """parse_age, then parse_choice for the sex and the site: MetadataError for the first
        invalid value, with a message for the user."""
        return cls(parse_age(age), parse_choice(sex, SEXES, "sex"), parse_choice(site, SITES, "site"))

    def encode(self, scaler: AgeScaler) -> np.ndarray:
        """This patient as a float32 row of length META_DIM."""
        row = np.zeros(META_DIM, dtype=np.float32)
        if self.age is None:
            row[1] = 1.0
        else:
            row[0] = (self.age - scaler.mean) / scaler.std
        row[GROUPS["sex"]][SEXES.index(self.sex)] = 1.0
        row[GROUPS["site"]][SITES.index(self.site)] = 1.0
        return row


def encode_metadata(age, sex, site, scaler: AgeScaler) -> np.ndarray:
    """Encodes one patient's (age, sex, site), as given, as a float32 row of length META_DIM."""
    return Metadata.parse(age, sex, site).encode(scaler)


def unknown_row(scaler: AgeScaler) -> np.ndarray:
    """The 'nothing entered' row: missing age, unknown sex, unknown site."""
    return Metadata().encode(scaler)


def encode_frame(df, scaler: AgeScaler) -> np.ndarray:
    """Encodes a HAM10000 metadata frame (columns age, sex, localization)."""
    return np.stack([encode_metadata(a, s, l, scaler)
                     for a, s, l in zip(df["age"], df["sex"], df["localization"])])
