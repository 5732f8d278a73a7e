"""Lesion-grouped, dx-stratified train/val/test split with a fixed seed.

    python -m train.data.make_split [--data DIR] [--out train/splits/ham10000.csv]

Every image of a lesion lands in the same split (images of one lesion are near copies,
so an image-level split would leak). The CSV is committed so the split is auditable.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from train.data.dataset import DEFAULT_DATA, load_metadata
from train import SPLITS

DEFAULT_SPLIT = SPLITS / "ham10000.csv"


def make_split(df: pd.DataFrame, val: float = 0.15, test: float = 0.15,
               seed: int = 0) -> pd.DataFrame:
    """Returns image_id, lesion_id, dx, split with split in {train, val, test}."""
    lesions = df.groupby("lesion_id")["dx"].first()
    if (df.groupby("lesion_id")["dx"].nunique() > 1).any():
        raise ValueError("a lesion_id carries more than one dx")
    rest, test_ids = train_test_split(lesions.index, test_size=test, stratify=lesions,
                                      random_state=seed)
    train_ids, val_ids = train_test_split(rest, test_size=val / (1 - test),
                                          stratify=lesions[rest], random_state=seed)
    which = {**{l: "train" for l in train_ids}, **{l: "val" for l in val_ids},
             **{l: "test" for l in test_ids}}
    out = df[["image_id", "lesion_id", "dx"]].copy()
    out["split"] = out["lesion_id"].map(which)
    return out.sort_values(["split", "image_id"]).reset_index(drop=True)


def load_split(path: Path = DEFAULT_SPLIT) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    split = make_split(load_metadata(a.data), seed=a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(a.out, index=False)
    print(pd.crosstab(split["dx"], split["split"], margins=True))


if __name__ == "__main__":
    main()
