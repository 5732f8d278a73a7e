"""Fits the graded shift score and measures what each band of it did to the shipped models.

    python -m train.release.fit_shift [--weights weights] [--data DIR] [--other DIR --other-aspect 4:3]

The score (lesion_app.evidence.shift): the Mahalanobis distance of the frozen ImageNet trunk's
features to a Gaussian of HAM10000 images (at most --fit-per-class per class, outside the held-out
slice), as a percentile of the distances of other HAM10000 images (--reference of them, neither
fitted on nor in the held-out slice). The trunk is frozen ImageNet, so no image is "seen" by it;
only the Gaussian's fit sample is kept apart.

Each band then carries what the shipped ensembles did on images of that band that no member
trained on: HAM10000's held-out slice and the other clinic's folder (ISIC 2017 by default, no model
trained on it): the fusion model's balanced accuracy (over the classes present), melanoma AUC where
both kinds are present, and how often the 90% and 95% prediction sets held the right class.
Writes weights/shift.safetensors, its manifest entry (with every figure) and the model card.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from lesion_app.evidence.conformal import coverage_report
from lesion_app.evidence.ood import OODDetector
from lesion_app.evidence.shift import FEATURES, ShiftScore, empty_bands
from train import REPO
from train.data.dataset import DEFAULT_DATA, labels, load_image, load_metadata
from train.data.splits import not_trained_on, read_heldout
from train.data.dataset import folder_image, parse_aspect
from train.evaluation.metrics import balanced_accuracy, mel_auc, mel_vs_nv_auc
from train.release.fit_ood import trunk_features
from train.release.model_card import model_card

OTHER = REPO.parent / "shared" / "data" / "isic2017"


def scored(predictor: Predictor, images, metadata, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) trunk features and (N, classes) fusion probabilities, as the app computes both."""
    feats, _ = trunk_features(predictor, images)
    probs = [predictor.probabilities(images[s:s + batch], metadata[s:s + batch])["fusion"]
             for s in range(0, len(images), batch)]
    return feats.numpy(), np.concatenate(probs)


def band_figures(y: np.ndarray, probs: np.ndarray, source: np.ndarray, predictor: Predictor) -> dict:
    """What the fusion model did on these images."""
    out = {"n": int(len(y)), "sources": {str(s): int((source == s).sum()) for s in sorted(set(source))}}
    if not len(y):
        return out
    out["classes_present"] = [CLASSES[k] for k in sorted(set(y.tolist()))]
    out["balanced_accuracy"] = balanced_accuracy(y, probs)
    out["mel_auc"] = mel_auc(y, probs)
    for level, sets in predictor.prediction_sets({"fusion": probs}).items():
        r = coverage_report(sets["fusion"], y, CLASSES)
        out[f"coverage_{level}"] = r["coverage"]
        out[f"mean_size_{level}"] = r["mean_size"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--other", type=Path, default=OTHER)
    p.add_argument("--other-aspect", default="4:3", metavar="W:H")
    p.add_argument("--fit-per-class", type=int, default=300)
    p.add_argument("--reference", type=int, default=2000)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    predictor = Predictor(a.weights)
    manifest = predictor.manifest
    md = load_metadata(a.data)
    held_ids = set(read_heldout(manifest.heldout_path)["image_id"])
    held = md[md["image_id"].isin(held_ids)].reset_index(drop=True)
    rest = md[~md["image_id"].isin(held_ids)]
    fit = pd.concat([g.sample(min(len(g), a.fit_per_class), random_state=0) for _, g in rest.groupby("dx")])
    unused = rest[~rest["image_id"].isin(set(fit["image_id"]))]
    ref = unused.sample(min(len(unused), a.reference), random_state=1)

    f_fit, _ = trunk_features(predictor, [load_image(a.data, i) for i in fit["image_id"]])
    det = OODDetector.fit(f_fit.numpy())
    f_ref, _ = trunk_features(predictor, [load_image(a.data, i) for i in ref["image_id"]])
    reference = torch.sort(det.score(f_ref)).values
    score = ShiftScore(det.mean, det.projection, reference, empty_bands())

    # Images no member trained on: the held-out slice and the other clinic's folder.
    aspect = parse_aspect(a.other_aspect)
    try:
        other, which = not_trained_on(load_metadata(a.other), manifest.second_source)
    except ValueError as e:
        p.error(str(e))
    sources, ys, feats, probs = [], [], [], []
    for name, frame, image_of in (("HAM10000 held-out", held, lambda i: load_image(a.data, i)),
                                  (a.other.name, other, lambda i: folder_image(a.other, i, aspect))):
        f, pr = scored(predictor, [image_of(i) for i in frame["image_id"]],
                       list(zip(frame["age"], frame["sex"], frame["localization"])))
        sources += [name] * len(frame)
        ys.append(labels(frame)), feats.append(f), probs.append(pr)
    y, feats, probs, sources = np.concatenate(ys), np.concatenate(feats), np.concatenate(probs), np.array(sources)
    pct = score.percentile(torch.from_numpy(feats))
    for band in score.bands:
        last = band is score.bands[-1]
        inside = (pct >= band["from"]) & ((pct <= band["to"]) if last else (pct < band["to"]))
        band["measured"] = band_figures(y[inside], probs[inside], sources[inside], predictor)
    by_source = {s: {**band_figures(y[sources == s], probs[sources == s], sources[sources == s], predictor),
                     "mel_vs_nv_auc": mel_vs_nv_auc(y[sources == s], probs[sources == s]),
                     "n": int((sources == s).sum()), "median_percentile": float(np.median(pct[sources == s])),
                     "share_by_band": {b["name"]: float(np.mean([ShiftScore.band_of(q, score.bands) is b
                                                                  for q in pct[sources == s]]))
                                       for b in score.bands}}
                 for s in sorted(set(sources))}
    path = a.weights / "shift.safetensors"
    score.save(path)
    manifest = manifest.with_shift({
        "file": path.name, "sha256": sha256_file(path), "features": FEATURES,
        "method": "Mahalanobis distance of the frozen ImageNet trunk's output (each channel's mean over positions "
                  "and the 4 flip views) to a Gaussian of HAM10000 images, as a percentile of other HAM10000 "
                  "images' distances",
        "fitted_on": f"{len(fit)} HAM10000 images outside the held-out slice (at most {a.fit_per_class} per class)",
        "reference": f"{len(ref)} other HAM10000 images outside the held-out slice",
        "bands": score.bands, "by_source": by_source,
        "measured_on": f"HAM10000's held-out slice ({len(held)}) and {a.other.name} ({len(other)}, other clinics"
                       + ("" if which == "all" else f"; {which}") + "), "
                       "images no shipped model trained on; the fusion ensemble as the app runs it",
        "fit_seconds": round(time.perf_counter() - t0, 1)})
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))
    for b in score.bands:
        m = b["measured"]
        print(f"{b['name']:8s} [{b['from']:.0f}, {b['to']:.0f}) n={m['n']} {m['sources']}  "
              + (f"bal. acc. {m['balanced_accuracy']:.3f}  90% sets cover {m['coverage_0.9']:.3f}" if m["n"] else ""))
    for s, r in by_source.items():
        print(f"{s}: median percentile {r['median_percentile']:.1f}; by band "
              + ", ".join(f"{k} {v:.0%}" for k, v in r["share_by_band"].items()))
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
