"""Converts the official HAM10000 or ISIC 2019 download into the project's layout.

    python -m train.data.prepare_data --src <official download> --out <folder> [--size 200x150]
    python -m train.data.prepare_data --data-format isic2019 --src <ISIC 2019 download> --out <folder> [--size 600x450]

HAM10000: HAM10000_metadata.csv and the images in HAM10000_images_part_1/ and
HAM10000_images_part_2/ (600x450). Lesion masks (<image_id>_segmentation.png, e.g.
HAM10000_segmentations_lesion_tschandl/) are copied too when present anywhere under --src.

ISIC 2019: ISIC_2019_Training_GroundTruth.csv (one-hot MEL, NV, BCC, AK, BKL, DF, VASC, SCC,
UNK), ISIC_2019_Training_Metadata.csv (image, age_approx, anatom_site_general, lesion_id, sex)
and the images anywhere under --src (ISIC_2019_Training_Input/). Its classes map onto this
project's seven (AK -> akiec); SCC, which has no class here, is dropped unless --scc akiec
merges it into akiec. lesion_id is kept where the metadata has one, else the image id stands
for the lesion. Sites map onto HAM10000's vocabulary (ISIC2019_SITES). Images vary from
600x450 to 6000x4000 and from 4:3 to square: each is scaled, keeping its aspect ratio, to
cover --size, so the 4:3 crop the models take still has --size pixels.

Output: metadata.csv, images/, masks/ (HAM10000 only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from train.data.dataset import COLUMNS
from lesion_app.classifier.vocab import SEXES, SITES, UNKNOWN

FORMATS = ("ham10000", "isic2019")
ISIC2019_CLASSES = {"AK": "akiec", "BCC": "bcc", "BKL": "bkl", "DF": "df", "MEL": "mel", "NV": "nv", "VASC": "vasc"}
# ISIC 2019's coarser sites onto HAM10000's; head/neck spans four of them (face, scalp, ear, neck).
ISIC2019_SITES = {"anterior torso": "trunk", "lateral torso": "trunk", "posterior torso": "back",
                  "upper extremity": "upper extremity", "lower extremity": "lower extremity",
                  "palms/soles": "acral", "oral/genital": "genital", "head/neck": UNKNOWN}


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


def resize_to_cover(path: Path, size: tuple[int, int]) -> Image.Image:
    """The image scaled, aspect kept, to the smallest size covering size (never enlarged)."""
    with Image.open(path) as im:
        im.draft("RGB", size)     # big JPEGs decode at a reduced scale still covering size
        im = im.convert("RGB")
    scale = min(1.0, max(size[0] / im.width, size[1] / im.height))
    if scale == 1.0:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                     Image.Resampling.LANCZOS)


def isic2019_metadata(src: Path, scc: str = "drop") -> tuple[pd.DataFrame, dict]:
    """The ISIC 2019 ground truth and metadata as the layout's metadata frame (COLUMNS), and
    counts of what was dropped or mapped."""
    truth_path, meta_path = src / "ISIC_2019_Training_GroundTruth.csv", src / "ISIC_2019_Training_Metadata.csv"
    for path in (truth_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --src must be the folder holding the ISIC 2019 "
                                    "download (ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv, "
                                    "ISIC_2019_Training_Input/)")
    truth = pd.read_csv(truth_path, dtype={"image": str})
    meta = pd.read_csv(meta_path, dtype=str)
    for path, df, cols in ((truth_path, truth, ["image", *ISIC2019_CLASSES, "SCC"]),
                           (meta_path, meta, ["image", "age_approx", "anatom_site_general", "sex"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
    classes = {**ISIC2019_CLASSES, **({"SCC": "akiec"} if scc == "akiec" else {})}
    onehot = truth[list(classes)].to_numpy(float)
    labelled = onehot.max(1) > 0.5
    dx = pd.Series([list(classes.values())[k] for k in onehot.argmax(1)], index=truth.index)
    scc_dropped = (truth["SCC"].to_numpy(float) > 0.5) & ~labelled
    counts = {"scc_dropped": int(scc_dropped.sum()), "unlabelled_dropped": int((~labelled & ~scc_dropped).sum())}
    df = pd.DataFrame({"image_id": truth["image"], "dx": dx})[labelled].merge(
        meta.rename(columns={"image": "image_id"}), on="image_id", how="left")
    if "lesion_id" not in df.columns:
        df["lesion_id"] = None
    lesion = df["lesion_id"].fillna("").str.strip()
    df["lesion_id"] = lesion.where(lesion != "", df["image_id"])
    df["age"] = pd.to_numeric(df["age_approx"], errors="coerce")
    sex = df["sex"].fillna(UNKNOWN).str.strip().str.lower()
    df["sex"] = sex.where(sex.isin(SEXES), UNKNOWN)
    site = df["anatom_site_general"].fillna("").str.strip().str.lower()
    df["localization"] = site.map(ISIC2019_SITES).fillna(UNKNOWN)
    assert df["localization"].isin(SITES).all()
    counts["sites"] = {f"{k or '(blank)'} -> {v}": int(n) for (k, v), n in
                       df.groupby([site, df["localization"]]).size().items()}
    df["dx_type"] = ""
    return df[list(COLUMNS)].reset_index(drop=True), counts


def prepare_isic2019(src: Path, out: Path, size: tuple[int, int] = (200, 150), scc: str = "drop") -> int:
    """Writes the layout for the ISIC 2019 download under out; returns the number of images."""
    df, counts = isic2019_metadata(src, scc)
    images = {p.stem: p for p in src.rglob("*.jpg")}
    absent = [i for i in df["image_id"] if i not in images]
    if absent:
        raise FileNotFoundError(f"{len(absent)} images of the ground truth are not under {src}, e.g. {absent[0]}.jpg")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for image_id in tqdm(df["image_id"], desc="resizing", mininterval=5):
        resize_to_cover(images[image_id], size).save(out / "images" / f"{image_id}.jpg", quality=95)
    df.to_csv(out / "metadata.csv", index=False)
    print(f"dropped {counts['scc_dropped']} SCC and {counts['unlabelled_dropped']} unlabelled images; "
          f"{(df['lesion_id'] == df['image_id']).sum()} without a lesion_id stand for their own lesion; sites: "
          + ", ".join(f"{k} ({n})" for k, n in counts["sites"].items()))
    return len(df)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=parse_size, default=(200, 150), help="WxH, default 200x150")
    p.add_argument("--data-format", choices=FORMATS, default="ham10000", help="which download --src holds")
    p.add_argument("--scc", choices=("drop", "akiec"), default="drop",
                   help="isic2019: drop SCC images (no such class here) or merge them into akiec")
    a = p.parse_args(argv)
    try:
        n = (prepare_isic2019(a.src, a.out, a.size, a.scc) if a.data_format == "isic2019"
             else prepare(a.src, a.out, a.size))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} images to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
