import pandas as pd
import pytest

from conftest import DATA, needs_dataset
from train.data.dataset import load_metadata
from train.data.splits import DEFAULT_SPLIT, load_split, make_split


def assert_no_lesion_crosses(split: pd.DataFrame):
    per_lesion = split.groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all(), per_lesion[per_lesion > 1].index[:5].tolist()


def test_committed_split_has_no_lesion_in_two_splits():
    split = load_split(DEFAULT_SPLIT)
    assert set(split["split"]) == {"train", "val", "test"}
    assert split["image_id"].is_unique
    assert_no_lesion_crosses(split)


def test_make_split_groups_lesions_and_stratifies():
    # 600 lesions, several images each, 3 classes of different sizes.
    rows = [{"lesion_id": f"L{l}", "image_id": f"I{l}_{k}", "dx": ["nv", "mel", "df"][l % 3 if l < 150 else 0]}
            for l in range(600) for k in range(1 + l % 3)]
    split = make_split(pd.DataFrame(rows), seed=1)
    assert_no_lesion_crosses(split)
    lesions = split.drop_duplicates("lesion_id")
    share = lesions.groupby("split").size() / len(lesions)
    assert share["test"] == pytest.approx(0.15, abs=0.01) and share["val"] == pytest.approx(0.15, abs=0.01)
    for dx, g in lesions.groupby("dx"):
        assert g["split"].value_counts(normalize=True)["train"] == pytest.approx(0.70, abs=0.05), dx
    assert make_split(pd.DataFrame(rows), seed=1).equals(split)


@needs_dataset
def test_committed_split_is_reproducible_and_covers_the_dataset():
    df = load_metadata(DATA)
    committed = load_split(DEFAULT_SPLIT)
    fresh = make_split(df).astype(str)
    assert set(committed["image_id"]) == set(df["image_id"])
    assert fresh.sort_values("image_id").reset_index(drop=True).equals(
        committed.sort_values("image_id").reset_index(drop=True)[fresh.columns])
