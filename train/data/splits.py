"""Every split of the data by lesion: the folds, the held-out slice, the older train/val/test
split and an inner validation split; and the one check that a lesion has one diagnosis.

All images of a lesion always land on the same side (images of one lesion are near copies,
so an image-level split would leak), and every split is dx-stratified where the lesions allow.

- folds (train/splits/ham10000_folds.csv: image_id,lesion_id,dx,fold): the 5-fold
  cross-validation of the whole folder; member k of each ensemble trains on every fold but k.
- held-out slice (ham10000_heldout.csv beside it: image_id,lesion_id,dx): a small share of
  lesions no member trains on; the app's examples come from it.
- the older split (train/splits/ham10000.csv: image_id,lesion_id,dx,split in train/val/test):
  the study's (train.study.compare) and whole-network training's default on the shared data.
- validation_split: a seeded train/val split made on the fly for any other folder.
- a second source's halves (train/splits/isic2017_halves.csv: image_id,lesion_id,dx,half in fit/heldout):
  a dx-stratified half of another clinic's images that training (train.fitting.cv --second-source) and
  the OOD check (train.release.fit_ood --other) may fit on; the other half is never fitted on and
  carries every figure quoted for that source.

Made by `python -m train.data.make_folds` and `python -m train.data.make_split` (committed files).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from lesion_app.classifier.metadata import AgeScaler, encode_frame, unknown_row
from lesion_app.classifier.weights import sha256_file
from lesion_app.paths import repo_path, repo_relative
from train import SPLITS
from train.data.dataset import DEFAULT_DATA, DatasetError, labels, load_metadata

DEFAULT_FOLDS = SPLITS / "ham10000_folds.csv"
DEFAULT_SPLIT = SPLITS / "ham10000.csv"
SECOND_SOURCE_HALVES = SPLITS / "isic2017_halves.csv"
FIT_SHARE = 0.5   # of a second source's images (per class) that may be fitted on
N_FOLDS = 5
HELDOUT_SHARE = 0.05   # of lesions: ~400 images, enough for a paired ensemble-vs-member check
VAL_FOLDS = 7          # an on-the-fly validation split is one of 7 folds: about 15% of the lesions


def check_one_dx_per_lesion(df: pd.DataFrame) -> None:
    """ValueError if a lesion_id carries more than one diagnosis (a split by lesion would be meaningless)."""
    if (df.groupby("lesion_id")["dx"].nunique() > 1).any():
        raise ValueError("a lesion_id carries more than one dx")


# ----------------------------------------------------------------------------- folds and held-out slice

def heldout_path(folds_csv: Path) -> Path:
    return Path(folds_csv).with_name(Path(folds_csv).name.replace("folds", "heldout"))


def make_folds(df: pd.DataFrame, n_folds: int = N_FOLDS, seed: int = 0) -> pd.DataFrame:
    """image_id, lesion_id, dx, fold (0..n_folds-1), sorted by fold then image_id."""
    check_one_dx_per_lesion(df)
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


def draw_fit_half(rows: pd.DataFrame, share: float = FIT_SHARE, seed: int = 0) -> pd.DataFrame:
    """A dx-stratified share of the rows (each class sampled by pandas with this seed), in the order
    drawn: the rule fit_ood has drawn its fitted half of ISIC 2017 with since issue 36."""
    return rows.groupby("dx", group_keys=False).sample(frac=share, random_state=seed)


def make_halves(md: pd.DataFrame, share: float = FIT_SHARE, seed: int = 0) -> pd.DataFrame:
    """image_id, lesion_id, dx, half: a dx-stratified share of lesions ("fit") and the rest ("heldout").

    draw_fit_half over the folder's lesions in the order they first appear. In a folder of one image
    per lesion (ISIC 2017) that is fit_ood's draw over its images, so the classifier and the OOD check
    fit on the same half; a folder whose images share lesions keeps each lesion on one side."""
    check_one_dx_per_lesion(md)
    lesions = md.groupby("lesion_id", sort=False)["dx"].first().reset_index()
    fit = set(draw_fit_half(lesions, share, seed)["lesion_id"])
    out = md[["image_id", "lesion_id", "dx"]].copy()
    out["half"] = out["lesion_id"].map(lambda lesion: "fit" if lesion in fit else "heldout")
    return out.sort_values("image_id").reset_index(drop=True)


def load_halves(path: Path = SECOND_SOURCE_HALVES) -> pd.DataFrame:
    """A second source's halves file (make_halves); ValueError if it is not one."""
    df = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str, "half": str})
    if list(df.columns) != ["image_id", "lesion_id", "dx", "half"] or not set(df["half"]) <= {"fit", "heldout"}:
        raise ValueError(f"{path} is not a halves file (image_id,lesion_id,dx,half with half fit or heldout); "
                         "make one with python -m train.data.make_halves")
    return df


def fit_half(data: Path, halves_file: Path) -> pd.DataFrame:
    """The folder's metadata rows of the halves file's fit half, in the file's order. DatasetError if
    the halves file does not list exactly the folder's images."""
    md = load_metadata(data)
    try:
        halves = load_halves(halves_file)
    except (OSError, ValueError) as e:
        raise DatasetError(str(e)) from None
    if set(halves["image_id"]) != set(md["image_id"]):
        raise DatasetError(f"{halves_file} does not list exactly the images of {data}; make halves for this "
                           f"folder with python -m train.data.make_halves --data {data} --out FILE")
    fit_ids = halves.loc[halves["half"] == "fit", "image_id"]
    return md.set_index("image_id").loc[fit_ids].reset_index()


def fit_half_record(data: Path, halves_file: Path, aspect: str | None, fit: pd.DataFrame) -> dict:
    """What a run records of the second source it trained on (cv.json's second_source)."""
    return {"data": repo_relative(data), "halves_file": repo_relative(halves_file),
            "halves_sha256": sha256_file(halves_file), "aspect": aspect, "n_fit": len(fit),
            "fit_by_class": {k: int(v) for k, v in fit["dx"].value_counts().sort_index().items()},
            "role": "every member trains on the fit half; never scored out of fold; the held-out half is "
                    "never trained on"}


def not_trained_on(md: pd.DataFrame, second_source: dict | None) -> tuple[pd.DataFrame, str]:
    """md less the images that a run's (or a manifest's) second_source record says its members trained
    on, and what the rows are ("all", or "the held-out half of FILE"). ValueError if the recorded halves
    file cannot be read or has changed since (its held-out half would no longer be sure)."""
    if not second_source:
        return md, "all"
    path = repo_path(second_source["halves_file"])
    try:
        halves = load_halves(path)
    except OSError as e:
        raise ValueError(f"the members trained on the fit half of {second_source['halves_file']}, which cannot be "
                         f"read ({e})") from None
    if sha256_file(path) != second_source["halves_sha256"]:
        raise ValueError(f"{second_source['halves_file']} has changed since the members trained on its fit half; "
                         "restore it (git checkout) so its held-out half is the one no member trained on")
    fit = set(halves.loc[halves["half"] == "fit", "image_id"])
    if not fit & set(md["image_id"]):
        return md, "all"
    return (md[~md["image_id"].isin(fit)].reset_index(drop=True),
            f"the held-out half of {second_source['halves_file']} (the members trained on the other half)")


def load_folds(path: Path = DEFAULT_FOLDS) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str, "fold": int})


def read_heldout(path: Path) -> pd.DataFrame:
    """A held-out slice file (image_id, lesion_id, dx), such as the one a manifest names."""
    return pd.read_csv(path, dtype=str)


def load_heldout(folds_csv: Path = DEFAULT_FOLDS) -> pd.DataFrame:
    """The held-out slice next to a folds file; empty when there is none."""
    path = heldout_path(folds_csv)
    if not path.is_file():
        return pd.DataFrame(columns=["image_id", "lesion_id", "dx"])
    return read_heldout(path)


# ----------------------------------------------------------------------------- single splits

def make_split(df: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """The older split: image_id, lesion_id, dx, split with split in {train, val, test}."""
    check_one_dx_per_lesion(df)
    lesions = df.groupby("lesion_id")["dx"].first()
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


def validation_split(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A seeded train/val split of a metadata frame: lesion-grouped (every image of a lesion on
    one side) and dx-stratified as far as the lesions allow. Columns image_id, lesion_id, dx, split."""
    folds = min(VAL_FOLDS, df["lesion_id"].nunique())
    if folds < 2:
        raise ValueError("a validation split needs at least 2 lesions")
    if df["dx"].value_counts().max() >= folds:
        with warnings.catch_warnings():   # small folders have classes with fewer lesions than folds
            warnings.simplefilter("ignore", UserWarning)
            _, val_rows = next(StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
                               .split(df, df["dx"], df["lesion_id"]))
    else:   # too few images of any class to stratify: lesion-grouped only
        _, val_rows = next(GroupShuffleSplit(1, test_size=1 / folds, random_state=seed)
                           .split(df, groups=df["lesion_id"]))
    out = df[["image_id", "lesion_id", "dx"]].copy()
    out["split"] = "train"
    out.iloc[val_rows, out.columns.get_loc("split")] = "val"
    return out.sort_values(["split", "image_id"]).reset_index(drop=True)


def resolve_split(data: Path, split: Path | None, seed: int = 0) -> tuple[Path | pd.DataFrame, str]:
    """What to train on and how run.json names it: the given split file; the committed split for
    the shared data folder; for any other folder, validation_split made now."""
    if split is not None:
        return split, str(split)
    if Path(data).resolve() == DEFAULT_DATA.resolve():
        return DEFAULT_SPLIT, str(DEFAULT_SPLIT)
    return (validation_split(load_metadata(data), seed),
            f"made on the fly: lesion-grouped validation split of {data}, seed {seed} (out/split.csv)")


@dataclass
class SplitData:
    """A single split's frames, encoded metadata and labels, plus each split's rows in the data
    folder's image order (the order of the feature caches)."""
    image_ids: list
    frames: dict
    meta: dict
    y: dict
    rows: dict
    scaler: AgeScaler
    unknown: torch.Tensor

    @classmethod
    def load(cls, data: Path, split_csv, splits=("train", "val")) -> "SplitData":
        """split_csv: a split file, or a split frame (image_id, split) such as validation_split's.
        Age is standardised with the train split's statistics."""
        meta_df = load_metadata(data).set_index("image_id")
        split = split_csv if isinstance(split_csv, pd.DataFrame) else load_split(split_csv)
        frames = {s: meta_df.loc[split.loc[split["split"] == s, "image_id"]].reset_index()
                  for s in splits}
        scaler = AgeScaler.fit(frames["train"]["age"])
        row_of = {image_id: k for k, image_id in enumerate(meta_df.index)}
        return cls(list(meta_df.index), frames,
                   {s: torch.from_numpy(encode_frame(f, scaler)) for s, f in frames.items()},
                   {s: labels(f) for s, f in frames.items()},
                   {s: [row_of[i] for i in f["image_id"]] for s, f in frames.items()},
                   scaler, torch.from_numpy(unknown_row(scaler)))
