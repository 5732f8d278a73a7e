"""Converts the official HAM10000 download into the project's layout.

    python -m train.prepare_data --src <official download> --out <folder> [--size 200x150]

The official download has HAM10000_metadata.csv and the images in
HAM10000_images_part_1/ and HAM10000_images_part_2/ (600x450). Lesion masks
(<image_id>_segmentation.png, e.g. HAM10000_segmentations_lesion_tschandl/) are copied
too when present anywhere under --src. Output: metadata.csv, images/, masks/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from lesion_app.data import COLUMNS


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def prepare(src: Path, out: Path, size: tuple[int, int] = (200, 150)) -> int:
    """Writes the layout under out; returns the number of images written."""
    meta_path = src / "HAM10000_metadata.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: --src must be the folder holding "
                                "HAM10000_metadata.csv and HAM10000_images_part_1/, part_2/")
    df = pd.read_csv(meta_path, dtype=str)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{meta_path} lacks the column(s) {', '.join(missing)}")
    images = {p.stem: p for d in ("HAM10000_images_part_1", "HAM10000_images_part_2")
              for p in (src / d).glob("*.jpg")}
    masks = {p.stem.removesuffix("_segmentation"): p for p in src.rglob("*_segmentation.png")}
    absent = [i for i in df["image_id"] if i not in images]
    if absent:
        raise FileNotFoundError(f"{len(absent)} images of {meta_path.name} are not in "
                                f"HAM10000_images_part_1/ or part_2/, e.g. {absent[0]}.jpg")
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out / "masks").mkdir(exist_ok=True)
    for image_id in tqdm(df["image_id"], desc="resizing", mininterval=5):
        with Image.open(images[image_id]) as im:
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
                out / "images" / f"{image_id}.jpg", quality=95)
        if image_id in masks:
            with Image.open(masks[image_id]) as m:
                m.convert("L").resize(size, Image.Resampling.NEAREST).save(
                    out / "masks" / f"{image_id}_segmentation.png")
    df[list(COLUMNS)].to_csv(out / "metadata.csv", index=False)
    return len(df)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=parse_size, default=(200, 150), help="WxH, default 200x150")
    a = p.parse_args(argv)
    try:
        n = prepare(a.src, a.out, a.size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} images to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
