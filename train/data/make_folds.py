"""The 5-fold cross-validation split of the whole data folder, and the held-out showcase slice.

    python -m train.data.make_folds [--data DIR] [--out train/splits/ham10000_folds.csv] [--force]

folds.csv: image_id,lesion_id,dx,fold. Folds are grouped by lesion_id (all images of a lesion
in one fold) and stratified by dx, with a fixed seed. Member k of each ensemble trains on
every fold but k, so each image gets an out-of-fold prediction from a model that never saw
its lesion.

heldout.csv (next to it): image_id,lesion_id,dx of a small stratified slice of lesions that
no member trains on, in any fold. It is what the app's examples come from, and where the
ensemble is compared with its single members (every member is out-of-sample there).
Both files are committed; the command refuses to overwrite them without --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from train.data.dataset import DEFAULT_DATA, load_metadata
from train.data.splits import DEFAULT_FOLDS, HELDOUT_SHARE, N_FOLDS, heldout_path, make_folds, make_heldout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--folds", type=int, default=N_FOLDS)
    p.add_argument("--heldout-share", type=float, default=HELDOUT_SHARE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    a = p.parse_args(argv)
    if a.out.exists() and not a.force:
        sys.exit(f"error: {a.out} exists (the committed folds); pass --force to overwrite it, "
                 "or --out elsewhere")
    folds = make_folds(load_metadata(a.data), a.folds, a.seed)
    heldout = make_heldout(folds, a.heldout_share, a.seed) if a.heldout_share > 0 else folds.iloc[:0]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(a.out, index=False)
    heldout.to_csv(heldout_path(a.out), index=False)
    print(pd.crosstab(folds["dx"], folds["fold"], margins=True))
    print(f"held out from every member: {len(heldout)} images of {heldout['lesion_id'].nunique()} lesions")


if __name__ == "__main__":
    main()
