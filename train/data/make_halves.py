"""A second source's two halves: one that may be fitted on, one that carries its figures.

    python -m train.data.make_halves [--data ../shared/data/isic2017] [--out train/splits/isic2017_halves.csv]
                                     [--share 0.5] [--seed 0] [--force]

Writes image_id,lesion_id,dx,half (fit or heldout): a dx-stratified share of the folder's lesions is
"fit" (train.fitting.cv --second-source trains every member on it; train.release.fit_ood --other fits
the OOD check on it), the rest "heldout", which nothing fits on. The file is committed; the command
refuses to overwrite it without --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from train import REPO
from train.data.dataset import load_metadata
from train.data.splits import FIT_SHARE, SECOND_SOURCE_HALVES, make_halves

ISIC2017 = REPO.parent / "shared" / "data" / "isic2017"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ISIC2017)
    p.add_argument("--out", type=Path, default=SECOND_SOURCE_HALVES)
    p.add_argument("--share", type=float, default=FIT_SHARE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    a = p.parse_args(argv)
    if a.out.exists() and not a.force:
        sys.exit(f"error: {a.out} exists (the committed halves); pass --force to overwrite it, or --out elsewhere")
    if not 0 < a.share < 1:
        sys.exit(f"error: --share must lie between 0 and 1, not {a.share}")
    halves = make_halves(load_metadata(a.data), a.share, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    halves.to_csv(a.out, index=False)
    print(pd.crosstab(halves["dx"], halves["half"], margins=True))


if __name__ == "__main__":
    main()
