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
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, train_test_split

from train.data.dataset import DEFAULT_DATA, load_metadata
from train import SPLITS

DEFAULT_FOLDS = SPLITS / "ham10000_folds.csv"
N_FOLDS = 5
HELDOUT_SHARE = 0.05   # of lesions: ~400 images, enough for a paired ensemble-vs-member check


def heldout_path(folds_csv: Path) -> Path:
    return Path(folds_csv).with_name(Path(folds_csv).name.replace("folds", "heldout"))


def make_folds(df: pd.DataFrame, n_folds: int = N_FOLDS, seed: int = 0) -> pd.DataFrame:
    """image_id, lesion_id, dx, fold (0..n_folds-1), sorted by fold then image_id."""
    if (df.groupby("lesion_id")["dx"].nunique() > 1).any():
        raise ValueError("a lesion_id carries more than one dx")
    out = df[["image_id", "lesion_id", "dx"]].reset_index(drop=True).copy()
    lesions_per_class = out.groupby("dx")["lesion_id"].nunique()
    # Stratifying needs n_folds lesions of every class; tiny folders get grouped folds only.
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed) \
        if lesions_per_class.min() >= n_folds else GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    out["fold"] = -1
    for k, (_, rows) in enumerate(cv.split(out, out["dx"], out["lesion_id"])):
        out.loc[rows, "fold"] = k
    return out.sort_values(["fold", "image_id"]).reset_index(drop=True)


def make_heldout(folds: pd.DataFrame, share: float = HELDOUT_SHARE, seed: int = 0) -> pd.DataFrame:
    """A dx-stratified share of lesions (all their images) that no member trains on."""
    lesions = folds.groupby("lesion_id")["dx"].first()
    # Stratifying needs room for every class in the slice and two lesions of each; tiny folders go without.
    can = lesions.value_counts().min() >= 2 and share * len(lesions) >= lesions.nunique()
    _, picked = train_test_split(lesions.index, test_size=share, stratify=lesions if can else None,
                                 random_state=seed)
    rows = folds[folds["lesion_id"].isin(set(picked))]
    return rows[["image_id", "lesion_id", "dx"]].sort_values("image_id").reset_index(drop=True)


def load_folds(path: Path = DEFAULT_FOLDS) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str, "fold": int})


def load_heldout(folds_csv: Path = DEFAULT_FOLDS) -> pd.DataFrame:
    """The held-out slice next to a folds file; empty when there is none."""
    path = heldout_path(folds_csv)
    if not path.is_file():
        return pd.DataFrame(columns=["image_id", "lesion_id", "dx"])
    return pd.read_csv(path, dtype=str)


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
