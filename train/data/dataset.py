"""Reads a dataset folder in the project's HAM10000 layout.

  DIR/metadata.csv                      lesion_id,image_id,dx,dx_type,age,sex,localization
  DIR/images/<image_id>.jpg             the dermoscopic image
  DIR/masks/<image_id>_segmentation.png optional lesion mask (255 = lesion)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lesion_app.classifier.vocab import CLASSES, SEXES, SITES, UNKNOWN

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ham10000"
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


class DatasetError(RuntimeError):
    """The folder is not in the expected layout."""


def load_metadata(root: Path, require_labels: bool = True) -> pd.DataFrame:
    """Reads DIR/metadata.csv, checks columns and labels, normalises sex and site.

    Values of sex or site outside the vocabulary become 'unknown' (how the app treats
    a value nobody entered) rather than failing a whole evaluation.
    """
    root = Path(root)
    path = root / "metadata.csv"
    if not path.is_file():
        raise DatasetError(f"{path} not found: expected the HAM10000 layout "
                           "(metadata.csv, images/<image_id>.jpg).")
    df = pd.read_csv(path, dtype={"lesion_id": str, "image_id": str, "dx": str,
                                  "sex": str, "localization": str})
    needed = ["image_id", "age", "sex", "localization"] + (["dx"] if require_labels else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(f"{path} lacks the column(s) {', '.join(missing)}.")
    if require_labels:
        bad = sorted(set(df["dx"]) - set(CLASSES))
        if bad:
            raise DatasetError(f"{path} has unknown dx value(s) {bad}; expected {CLASSES}.")
    df["age"] = pd.to_numeric(df["age"], errors="coerce")
    for col, vocab in (("sex", SEXES), ("localization", SITES)):
        v = df[col].fillna(UNKNOWN).str.strip().str.lower()
        df[col] = v.where(v.isin(vocab), UNKNOWN)
    if "lesion_id" not in df.columns:
        df["lesion_id"] = df["image_id"]
    absent = [i for i in df["image_id"] if not image_path(root, i).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} image(s) listed in {path} are missing from "
                           f"{root / 'images'}, e.g. {absent[0]}.jpg")
    return df.reset_index(drop=True)


def image_path(root: Path, image_id: str) -> Path:
    return Path(root) / "images" / f"{image_id}.jpg"


def mask_path(root: Path, image_id: str) -> Path:
    return Path(root) / "masks" / f"{image_id}_segmentation.png"


def load_image(root: Path, image_id: str) -> Image.Image:
    with Image.open(image_path(root, image_id)) as im:
        return im.convert("RGB")


def load_mask(root: Path, image_id: str) -> np.ndarray | None:
    """The lesion mask as a bool array, or None when the folder has none."""
    p = mask_path(root, image_id)
    if not p.is_file():
        return None
    with Image.open(p) as im:
        return np.asarray(im.convert("L")) > 127


def parse_aspect(text: str | None) -> float | None:
    """'4:3' -> 4/3 (None stays None); ValueError for anything else."""
    if text is None:
        return None
    w, _, h = text.partition(":")
    try:
        ratio = float(w) / float(h)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--aspect takes W:H, such as 4:3, not {text!r}") from None
    if not ratio > 0:
        raise ValueError(f"--aspect takes W:H with both positive, not {text!r}")
    return ratio


def folder_image(data: Path, image_id: str, aspect: float | None = None) -> Image.Image:
    """The folder's image as the app is given it; with aspect, first resized to that aspect ratio
    (same width), which undoes a folder's squashing to a square."""
    return restore_aspect(load_image(data, image_id), aspect)


def restore_aspect(image: Image.Image, aspect: float | None) -> Image.Image:
    """image resized to this aspect ratio at its width (None: as it is)."""
    if aspect is None:
        return image
    w = image.width
    return image.resize((w, max(1, round(w / aspect))), Image.Resampling.LANCZOS)


def labels(df: pd.DataFrame) -> np.ndarray:
    return df["dx"].map(CLASSES.index).to_numpy()


def dx_types(df: pd.DataFrame) -> np.ndarray:
    """How each row's diagnosis was confirmed (HAM10000's dx_type: histo, follow_up, consensus or
    confocal), stripped and lower-cased, 'unknown' where blank. DatasetError if the column is absent."""
    if "dx_type" not in df.columns:
        raise DatasetError("the metadata has no dx_type column (how each diagnosis was confirmed), "
                           "which --mel-margin-weight and --follow-up-weight need")
    return df["dx_type"].fillna(UNKNOWN).astype(str).str.strip().str.lower().replace("", UNKNOWN).to_numpy(dtype=object)
