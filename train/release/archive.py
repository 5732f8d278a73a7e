"""Builds the similar-cases archive beside the weights: weights/archive.safetensors and its
manifest entry (and the model card's section).

    python -m train.release.archive [--weights weights] [--data DIR] [--study reports/retrieval.json]

The archive is every image the shipped members trained on: the data folder minus the held-out
slice. Each image gets the chosen embedding (reports/retrieval.json's `chosen`, from the
shipped ensembles' features, as the app computes them: no extra network pass at serving
time), projected onto the archive's top principal directions; a 160x120 WebP thumbnail;
and its diagnosis, age, sex and site. Rows are grouped by lesion, so that a query returns
each lesion once. Overwrites the file and the entry.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lesion_app.evidence.archive import (ATTRIBUTION, DEFAULT_K, EMBEDDINGS, Archive, Projection, lesion_groups,
    thumbnail_bytes)
from lesion_app.classifier.manifest import Manifest
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from train.data.dataset import DEFAULT_DATA, load_image, load_metadata
from train.data.splits import read_heldout
from train.evaluation.retrieval import DEFAULT_OUT as DEFAULT_STUDY, DIMS, cached_features, embed
from train.release.model_card import model_card

FILE = "archive.safetensors"
MAX_BYTES = 16 * 1024 * 1024   # one weights file at most (the Hub and the device transfer limits)
THUMBNAIL = (160, 120)


def build(weights: Path, data: Path, embedding: str, weighting: str = "class_weighted") -> Archive:
    """The archive of the data folder minus the held-out slice, for the weights in `weights`."""
    predictor = Predictor(weights, with_ood=False)
    md = load_metadata(data)
    feats = cached_features(predictor, data, md["image_id"].tolist())   # the retrieval study's cache
    held = set(read_heldout(predictor.manifest.heldout_path)["image_id"])
    rows = np.flatnonzero(~md["image_id"].isin(held).to_numpy())
    order, _ = lesion_groups(md["lesion_id"].to_numpy()[rows])
    rows = rows[order]
    df = md.iloc[rows].reset_index(drop=True)
    raw = embed(embedding, feats, rows)
    projection = Projection.fit(raw, min(DIMS, raw.shape[1]))
    table = {"image_id": df["image_id"].tolist(), "lesion_id": df["lesion_id"].tolist(), "dx": df["dx"].tolist(),
             "age": [None if np.isnan(a) else float(a) for a in df["age"].astype(float)],
             "sex": df["sex"].tolist(), "site": df["localization"].tolist()}
    thumbs = [thumbnail_bytes(load_image(data, i), THUMBNAIL) for i in df["image_id"]]
    return Archive(embedding, projection, projection(raw), table, thumbs, weighting)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--study", type=Path, default=DEFAULT_STUDY,
                   help="train.evaluation.retrieval's JSON: its chosen embedding is used")
    p.add_argument("--embedding", choices=EMBEDDINGS, default=None, help="override the study's choice")
    a = p.parse_args(argv)
    if not a.study.is_file() and a.embedding is None:
        p.error(f"{a.study} not found: run python -m train.evaluation.retrieval first, or pass --embedding")
    study = json.loads(a.study.read_text()) if a.study.is_file() else None
    embedding = a.embedding or study["chosen"]
    t0 = time.time()
    archive = build(a.weights, a.data, embedding)
    path = a.weights / FILE
    archive.save(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        sys.exit(f"error: the archive would be {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB a "
                 "weights file may be; use smaller thumbnails")
    entry = {"file": FILE, "sha256": sha256_file(path), "embedding": embedding, "dims": int(archive.vectors.shape[1]),
             "vote_weighting": archive.weighting, "default_k": DEFAULT_K, "n_images": len(archive),
             "n_lesions": archive.n_lesions, "thumbnail": f"{THUMBNAIL[0]}x{THUMBNAIL[1]} WebP",
             "covers": "every image the shipped members trained on: the data folder minus the held-out slice",
             "attribution": ATTRIBUTION, "bytes": size, "build_seconds": round(time.time() - t0, 1)}
    if study is not None:
        entry["evidence"] = {"study": "reports/retrieval.md", "selection": study["selection"],
                             "out_of_fold": {n: {k: s[k] for k in ("class_balanced_mAP", "mAP", "precision@1",
                                                                  "precision@8", "precision@16")}
                                             | {"vote_class_weighted_k8": s["votes"]["class_weighted_k8"]}
                                             for n, s in study["candidates"].items()}}
    manifest = Manifest.load(a.weights).with_archive(entry)
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"archive: {len(archive)} images of {archive.n_lesions} lesions, embedding {embedding} "
          f"({entry['dims']}-d), {size / 2**20:.1f} MiB, {entry['build_seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
