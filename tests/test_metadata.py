import math

import numpy as np
import pytest

from lesion_app.classifier.metadata import (GROUPS, META_DIM, AgeScaler, Metadata, MetadataError,
                                             encode_metadata, parse_age, unknown_row)
from lesion_app.classifier.vocab import SEXES, SITES

SCALER = AgeScaler(mean=50.0, std=20.0)


def test_layout_is_age_pair_then_one_hots():
    row = encode_metadata(70, "female", "back", SCALER)
    assert row.shape == (META_DIM,) and row.dtype == np.float32
    assert row[0] == pytest.approx(1.0) and row[1] == 0.0
    assert row[GROUPS["sex"]].tolist() == [float(s == "female") for s in SEXES]
    assert row[GROUPS["site"]].tolist() == [float(s == "back") for s in SITES]


@pytest.mark.parametrize("age", [None, "", "  ", float("nan")])
def test_missing_age_sets_the_indicator(age):
    row = encode_metadata(age, "male", "face", SCALER)
    assert row[0] == 0.0 and row[1] == 1.0


@pytest.mark.parametrize("sex,site", [("unknown", "unknown"), (None, None), ("", " "),
                                      (float("nan"), float("nan"))])
def test_unknown_sex_and_site_are_their_own_columns(sex, site):
    row = encode_metadata(40, sex, site, SCALER)
    assert row[GROUPS["sex"]][SEXES.index("unknown")] == 1.0
    assert row[GROUPS["site"]][SITES.index("unknown")] == 1.0
    assert row[GROUPS["sex"]].sum() == 1.0 and row[GROUPS["site"]].sum() == 1.0


def test_case_and_whitespace_are_normalised():
    assert np.array_equal(encode_metadata(30, " Female ", "Lower Extremity", SCALER),
                          encode_metadata(30, "female", "lower extremity", SCALER))


def test_site_is_one_hot_never_ordinal():
    rows = np.stack([encode_metadata(40, "male", s, SCALER)[GROUPS["site"]] for s in SITES])
    assert np.array_equal(rows, np.eye(len(SITES)))


@pytest.mark.parametrize("blank", [None, "", "   ", "\t\n", float("nan")])
def test_blank_means_not_entered(blank):
    assert Metadata.parse(blank, blank, blank) == (None, "unknown", "unknown")


@pytest.mark.parametrize("age,sex,site", [(" 63 ", " male ", " back "), ("63", "Male", "BACK"),
                                          (63, "male\t", "\nback"), (63.0, "male", "back")])
def test_padded_values_are_their_vocabulary_entries(age, sex, site):
    assert Metadata.parse(age, sex, site) == (63.0, "male", "back")


def test_age_zero_is_an_age_not_a_blank():
    assert parse_age(0) == 0.0 and parse_age("0") == 0.0


@pytest.mark.parametrize("age", [-1, 121, "abc", "forty", math.inf, True, "6 3"])
def test_invalid_age_is_refused(age):
    with pytest.raises(MetadataError, match="[Aa]ge"):
        encode_metadata(age, "male", "back", SCALER)


@pytest.mark.parametrize("sex,site", [("other", "back"), ("male", "elbow")])
def test_values_outside_the_vocabulary_are_refused(sex, site):
    with pytest.raises(MetadataError, match="expected one of"):
        encode_metadata(40, sex, site, SCALER)


def test_unknown_row_is_nothing_entered():
    assert np.array_equal(unknown_row(SCALER), encode_metadata(None, None, None, SCALER))


def test_age_scaler_ignores_missing():
    s = AgeScaler.fit([10.0, 30.0, float("nan"), None])
    assert s.mean == 20.0 and s.std == 10.0
