"""Builds the reader mode's cases beside the weights: weights/reader_cases.safetensors and its
manifest entry.

    python -m train.release.reader_cases [--weights weights] [--data DIR]

The cases are every image of the held-out slice the manifest names (no shipped member trained on
it), each with its lesion, confirmed diagnosis, how HAM10000 confirmed it (dx_type), age, sex and
site. An image that is already 200x150 JPEG is stored as the dataset's own bytes (so the app
predicts exactly what the held-out figures were computed from); any other is resized and stored as
JPEG. Overwrites the file and the entry.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.reader_cases import COLUMNS, ReaderCases
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from train.data.dataset import DEFAULT_DATA, image_path, load_image, load_metadata
from train.data.splits import read_heldout

FILE = "reader_cases.safetensors"
SIZE = (200, 150)
MAX_BYTES = 4 * 1024 * 1024   # "a few MB": the app ships it
ATTRIBUTION = "HAM10000 (Tschandl P, Rosendahl C, Kittler H, Sci Data 5, 180161, 2018), CC BY-NC 4.0"


def image_bytes(data: Path, image_id: str) -> bytes:
    """The dataset's own file when it is a 200x150 JPEG, else the image resized and saved as JPEG."""
    path = image_path(data, image_id)
    raw = path.read_bytes()
    image = load_image(data, image_id)
    if image.size == SIZE and raw.startswith(b"\xff\xd8\xff"):
        return raw
    buf = io.BytesIO()
    image.resize(SIZE, resample=3).save(buf, "JPEG", quality=92)   # 3: bicubic
    return buf.getvalue()


def build(manifest: Manifest, data: Path) -> ReaderCases:
    """Every image of the manifest's held-out slice, in the slice file's order (by image_id)."""
    held = read_heldout(manifest.heldout_path)
    md = load_metadata(data).set_index("image_id")
    missing = sorted(set(held["image_id"]) - set(md.index))
    if missing:
        raise SystemExit(f"error: {len(missing)} held-out image(s) are not in {data}, e.g. {missing[0]}")
    rows = md.loc[held["image_id"]].reset_index()
    if (rows["dx"].to_numpy() != held["dx"].to_numpy()).any() or "dx_type" not in rows:
        raise SystemExit(f"error: {data}'s metadata disagrees with {manifest.heldout_path} (dx) or lacks dx_type")
    table = {c: rows[c].tolist() for c in COLUMNS if c != "age"}
    table["age"] = [None if np.isnan(a) else float(a) for a in rows["age"].astype(float)]
    return ReaderCases(table, [image_bytes(data, i) for i in rows["image_id"]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    a = p.parse_args(argv)
    t0 = time.time()
    manifest = Manifest.load(a.weights)
    cases = build(manifest, a.data)
    path = a.weights / FILE
    cases.save(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        sys.exit(f"error: the reader cases would be {size / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB")
    counts = {c: cases.dx.count(c) for c in sorted(set(cases.dx))}
    entry = {"file": FILE, "sha256": sha256_file(path), "n_images": len(cases),
             "n_lesions": len(set(cases.lesion_id)), "per_class": counts,
             "covers": f"every image of the held-out slice ({manifest.heldout_file}): no shipped member trained on it",
             "image": f"{SIZE[0]}x{SIZE[1]} JPEG (the dataset's own file)",
             "columns": list(COLUMNS), "attribution": ATTRIBUTION, "bytes": size,
             "build_seconds": round(time.time() - t0, 1)}
    Manifest.load(a.weights).with_reader_cases(entry).save(a.weights)   # re-read: the latest manifest
    print(f"reader cases: {len(cases)} images of {entry['n_lesions']} lesions ({counts}), "
          f"{size / 2**20:.2f} MiB; wrote {path} and its manifest entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
