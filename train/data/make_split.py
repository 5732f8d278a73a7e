"""Lesion-grouped, dx-stratified train/val/test split with a fixed seed.

    python -m train.data.make_split [--data DIR] [--out train/splits/ham10000.csv]

The split itself is train.data.splits.make_split: every image of a lesion in the same split
(an image-level split would leak). The CSV is committed so the split is auditable.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from train.data.dataset import DEFAULT_DATA, load_metadata
from train.data.splits import DEFAULT_SPLIT, make_split


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
