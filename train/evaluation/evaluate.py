"""Scores the bundled models on any folder in the HAM10000 layout.

    python -m train.evaluation.evaluate --data DIR --out metrics.json --predictions predictions.csv [--weights DIR]

metrics.json: for `fusion` and `image_only`, balanced accuracy, macro-F1, accuracy, macro
one-vs-rest AUC, per-class precision/recall/F1/AUC/support, the confusion matrix and ECE.
predictions.csv: image_id,model,akiec,bcc,bkl,df,mel,nv,vasc (calibrated probabilities).
When the weights have a similar-cases archive, a third model, `knn`, is scored and written
the same way: the vote of each image's 8 most similar archive lesions, as the app shows it
(lesion_app.evidence.archive; its "probabilities" are vote shares, not calibrated).
--by-lesion: one prediction row per lesion_id from all of its images (each ensemble averages its
logits over them, as the app does with several images of one lesion); the columns stay the same
and image_id holds the lesion's first image (by image_id).
--sets sets.csv (optional): image_id,model,level,set - each model's class-conditional
conformal prediction set at each level (90%, 95%), classes joined by '|'.
--aspect W:H (optional): resize every image to this aspect ratio, keeping its width, before the
app sees it: for a folder stored squashed to a square, as isic2017's is (its README; use 4:3).
A folder from another clinic may hold only some of the 7 classes (isic2017: mel, bkl, nv): balanced
accuracy, macro-F1 and macro AUC run over the classes present (a prediction of an absent class counts
as wrong), and each model also gets `mel_auc`, `mel_vs_nv_auc` (P(mel), melanomas against nevi only)
and, when the weights have prediction-set thresholds, `sets`: each level's coverage and mean size.
--heldout-half HALVES.csv (optional): score only that halves file's held-out half (train.data.make_halves).
Weights that trained on a second source's fit half (the manifest's second_source) are always scored on
the rest of that folder only.
--masks-out DIR (optional): the lesion segmenter's outline of every image as
DIR/<image_id>_segmentation.png, 0/255 at the image's own size (HAM10000's mask layout); when
the folder has masks, metrics.json gains `segmentation` (mean Dice, Jaccard, threshold Jaccard).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from train.data.dataset import (DEFAULT_DATA, DatasetError, folder_image, labels, load_image, load_mask,
                                load_metadata, parse_aspect)
from lesion_app.classifier.metadata import MetadataError
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR, WeightsError
from lesion_app.evidence.conformal import coverage_report
from train.data.splits import load_halves, not_trained_on
from train.evaluation.metrics import classification_metrics, transfer_figures
from train.evaluation.segmentation_metrics import mask_scores


def predict_folder(predictor: Predictor, data: Path, df: pd.DataFrame,
                   batch: int = 16, aspect: float | None = None) -> dict[str, np.ndarray]:
    """Calibrated probabilities of both models (and the archive's vote, `knn`, when the weights
    have an archive) for every row of df, in order."""
    out = {}
    for s in tqdm(range(0, len(df), batch), desc="scoring", unit="batch", mininterval=5,
                  disable=None):
        rows = df.iloc[s:s + batch]
        images = [folder_image(data, i, aspect) for i in rows["image_id"]]
        meta = list(zip(rows["age"], rows["sex"], rows["localization"]))
        for k, p in predictor.probabilities(images, meta, knn=True).items():
            out.setdefault(k, []).append(p)
    return {k: np.concatenate(v) for k, v in out.items()}


def lesion_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per lesion_id (in order of first appearance), the row of its first image by
    image_id, with `images`: all of its image ids, in that order."""
    order = df.sort_values("image_id", kind="stable")
    images = order.groupby("lesion_id", sort=False)["image_id"].agg(list)
    first = order.drop_duplicates("lesion_id").set_index("lesion_id")
    lesions = first.loc[df["lesion_id"].drop_duplicates()].reset_index()
    return lesions.assign(images=lesions["lesion_id"].map(images))


def predict_lesions(predictor: Predictor, data: Path, lesions: pd.DataFrame, batch: int = 16,
                    aspect: float | None = None) -> dict[str, np.ndarray]:
    """predict_folder for lesion_rows(df): each lesion from all of its images."""
    out = {}
    for s in tqdm(range(0, len(lesions), batch), desc="scoring", unit="batch", mininterval=5, disable=None):
        rows = lesions.iloc[s:s + batch]
        images = [[folder_image(data, i, aspect) for i in ids] for ids in rows["images"]]
        meta = list(zip(rows["age"], rows["sex"], rows["localization"]))
        for k, p in predictor.lesion_probabilities(images, meta, knn=True).items():
            out.setdefault(k, []).append(p)
    return {k: np.concatenate(v) for k, v in out.items()}


def predictions_frame(image_ids, probs: dict[str, np.ndarray]) -> pd.DataFrame:
    frames = []
    for k in probs:
        f = pd.DataFrame(probs[k], columns=list(CLASSES))
        f.insert(0, "model", k)
        f.insert(0, "image_id", list(image_ids))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def sets_frame(predictor: Predictor, preds: pd.DataFrame) -> pd.DataFrame:
    """One row per image, model and level: the prediction set's classes joined by '|'."""
    rows = []
    for k in MODEL_KEYS:
        f = preds[preds["model"] == k]
        for level, kinds in predictor.prediction_sets({k: f[list(CLASSES)].to_numpy()}).items():
            rows += [(i, k, level, "|".join(c for c, inside in zip(CLASSES, m) if inside))
                     for i, m in zip(f["image_id"], kinds[k])]
    return pd.DataFrame(rows, columns=["image_id", "model", "level", "set"])


def set_figures(predictor: Predictor, kind: str, y: np.ndarray, probs: np.ndarray) -> dict:
    """Per level, the coverage and mean size of the model's prediction sets on these cases."""
    return {level: {k: v for k, v in coverage_report(sets[kind], y, CLASSES).items() if k != "per_class"}
            for level, sets in predictor.prediction_sets({kind: probs}).items()}


def evaluate(data: Path, weights: Path, predictor: Predictor | None = None,
             image_ids=None, by_lesion: bool = False, aspect: float | None = None) -> tuple[dict, pd.DataFrame]:
    """Metrics and predictions of both models on DIR (or on its rows in image_ids); by_lesion:
    one row per lesion, from all of its images; aspect: see folder_image."""
    df = load_metadata(data)
    if image_ids is not None:
        df = df[df["image_id"].isin(set(image_ids))].reset_index(drop=True)
    predictor = predictor or Predictor(weights)
    t0 = time.time()
    rows = lesion_rows(df) if by_lesion else df
    probs = (predict_lesions(predictor, data, rows, aspect=aspect) if by_lesion
             else predict_folder(predictor, data, df, aspect=aspect))
    y = labels(rows)
    metrics = {k: {**classification_metrics(y, p), **transfer_figures(y, p)} for k, p in probs.items()}
    for k in MODEL_KEYS:
        if predictor.set_thresholds:
            metrics[k]["sets"] = set_figures(predictor, k, y, probs[k])
    metrics["data"] = {"folder": str(data), "n_images": int(len(df)),
                       "n_lesions": int(df["lesion_id"].nunique())}
    if by_lesion:
        metrics["data"]["rows"] = "one per lesion, from all of its images"
    metrics["weights"] = predictor.model_info   # version and every member's sha256
    metrics["seconds"] = round(time.time() - t0, 1)
    return metrics, predictions_frame(rows["image_id"], probs)


def write_masks(predictor: Predictor, data: Path, image_ids, out: Path, batch: int = 32) -> dict | None:
    """Writes each image's predicted mask to out; returns the mean Dice, Jaccard and threshold
    Jaccard against the folder's own masks (None when it has none)."""
    out.mkdir(parents=True, exist_ok=True)
    predicted, truth = [], []
    ids = list(image_ids)
    for s in tqdm(range(0, len(ids), batch), desc="outlining", unit="batch", mininterval=5, disable=None):
        chunk = ids[s:s + batch]
        for i, m in zip(chunk, predictor.lesion_masks([load_image(data, i) for i in chunk])):
            Image.fromarray(m.astype(np.uint8) * 255).save(out / f"{i}_segmentation.png")
            t = load_mask(data, i)
            if t is not None:
                predicted.append(m), truth.append(t)
    if not truth:
        return None
    scores = mask_scores(predicted, truth)
    return {"n": len(truth), **{k: float(v.mean()) for k, v in scores.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--predictions", type=Path, required=True, help="predictions CSV to write")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sets", type=Path, default=None, help="also write each model's prediction sets here")
    p.add_argument("--by-lesion", action="store_true",
                   help="one row per lesion_id from all of its images (image_id: its first image)")
    p.add_argument("--aspect", default=None, metavar="W:H",
                   help="resize each image to this aspect (same width) first: 4:3 for a folder stored squashed")
    p.add_argument("--heldout-half", type=Path, default=None, metavar="HALVES.csv",
                   help="score only this halves file's held-out half (train.data.make_halves), e.g. to compare "
                        "earlier weights with weights that trained on the fit half, on the same images")
    p.add_argument("--masks-out", type=Path, default=None,
                   help="write the predicted lesion mask of every image here (<image_id>_segmentation.png)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        aspect = parse_aspect(a.aspect)
    except ValueError as e:
        p.error(str(e))
    try:
        predictor = Predictor(a.weights)
        # A folder the members trained part of (a second source) is scored on the rest only.
        untrained, which = not_trained_on(load_metadata(a.data), predictor.manifest.second_source)
        if a.heldout_half is not None:
            halves = load_halves(a.heldout_half)
            if set(halves["image_id"]) != set(untrained["image_id"]) and which == "all":
                raise ValueError(f"{a.heldout_half} does not list exactly the images of {a.data}")
            untrained = untrained[untrained["image_id"].isin(set(halves.loc[halves["half"] == "heldout", "image_id"]))]
            which = f"the held-out half of {a.heldout_half}"
        metrics, preds = evaluate(a.data, a.weights, predictor, by_lesion=a.by_lesion, aspect=aspect,
                                  image_ids=None if which == "all" else untrained["image_id"])
        metrics["data"]["images"] = which
        if aspect is not None:
            metrics["data"]["aspect"] = a.aspect
        if a.masks_out:
            seg = write_masks(predictor, a.data, load_metadata(a.data)["image_id"], a.masks_out)
            if seg:
                metrics["segmentation"] = seg
    except (DatasetError, WeightsError, MetadataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in (a.out, a.predictions, *([a.sets] if a.sets else [])):
        path.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(metrics, indent=1))
    preds.to_csv(a.predictions, index=False, float_format="%.6f")
    if a.sets:
        if not predictor.set_thresholds:
            print("error: these weights have no prediction-set thresholds (python -m train.release.prediction_sets)",
                  file=sys.stderr)
            return 2
        sets_frame(predictor, preds).to_csv(a.sets, index=False)
    for k in (*MODEL_KEYS, *(["knn"] if "knn" in metrics else [])):
        m = metrics[k]
        print(f"{k:10s} bacc {m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
              f"acc {m['accuracy']:.4f}  AUC {m['macro_auc']:.4f}  ECE {m['ece']:.4f}"
              + "".join(f"  {name} {m[key]:.4f}" for name, key in (("mel AUC", "mel_auc"),
                                                                    ("mel-vs-nv AUC", "mel_vs_nv_auc"))
                        if m.get(key) is not None)
              + "".join(f"  {float(level):.0%} sets cover {s['coverage']:.3f} (size {s['mean_size']:.2f})"
                        for level, s in m.get("sets", {}).items()))
    classes = metrics["fusion"]["classes_present"]
    if len(classes) < len(CLASSES):
        print(f"classes present: {', '.join(classes)}; balanced accuracy, macro-F1 and macro AUC run over these")
    what = f"{metrics['data']['n_lesions']} lesions from " if a.by_lesion else ""
    if "segmentation" in metrics:
        m = metrics["segmentation"]
        print(f"outlines  Dice {m['dice']:.4f}  Jaccard {m['jaccard']:.4f}  threshold Jaccard "
              f"{m['threshold_jaccard']:.4f} ({m['n']} masks)")
    if metrics["data"]["images"] != "all":
        print(f"scored {metrics['data']['images']}")
    print(f"scored {what}{metrics['data']['n_images']} images in {metrics['seconds']} s; "
          f"wrote {a.out} and {a.predictions}" + (f"; masks in {a.masks_out}" if a.masks_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
