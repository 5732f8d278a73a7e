"""Several images of one lesion: does averaging over them help? Out-of-fold evidence.

    python -m train.evaluation.multi_image [--data DIR] [--oof reports/oof_logits.csv] [--out reports/multi_image]

On the shared lesions with at least 2 images (all of a lesion's images lie in one fold, so one
member that never saw the lesion scores each of them), each ensemble kind is scored per lesion:
- one image: the lesion's first image (by image_id, as `evaluate --by-lesion` names a lesion);
- all images: the mean of its images' logits, as the app combines them (Predictor.analyze).
Both are calibrated with the shipped temperature. Balanced accuracy, macro-F1 and melanoma AUC,
with 95% bootstrap CIs over lesions and the paired difference (all - one). Writes OUT.json and
OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest
from lesion_app.paths import REPO
from lesion_app.classifier.vocab import CLASSES
from train.data.dataset import DEFAULT_DATA, labels, load_metadata
from train.data.logits import kind_logits, read_logits
from train.evaluation.metrics import balanced_accuracy, class_aucs, macro_f1, softmax
from train.evaluation.stats import bootstrap_ci, paired_bootstrap

METRICS = {"balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1,
           "mel_auc": lambda y, p: class_aucs(y, p)[CLASSES.index("mel")]}


def lesion_logits(df: pd.DataFrame, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """df (one row per image, logits in its order) -> (first image's logits, mean logits, one row
    per lesion: lesion_id, first image_id, dx, n_images), lesions ordered by lesion_id."""
    order = df.assign(row=np.arange(len(df))).sort_values(["lesion_id", "image_id"])
    groups = order.groupby("lesion_id", sort=True)
    first = groups["row"].first().to_numpy()
    mean = np.stack([logits[rows].mean(0) for _, rows in groups["row"]])
    lesions = groups.agg(image_id=("image_id", "first"), dx=("dx", "first"), n_images=("image_id", "size"))
    return logits[first], mean, lesions.reset_index()


def study(data: Path, oof: Path, weights: Path = WEIGHTS_DIR, n_boot: int = 1000) -> dict:
    manifest = Manifest.load(weights)
    md = load_metadata(data)
    frame = read_logits(oof)
    scored = set(frame["image_id"])
    md = md[md["image_id"].isin(scored)]
    multi = md[md.groupby("lesion_id")["image_id"].transform("size") >= 2].reset_index(drop=True)
    result = {"protocol": __doc__.split("\n\n")[2].replace("\n", " "), "n_lesions": int(multi["lesion_id"].nunique()),
              "n_images": int(len(multi)), "images_per_lesion": multi.groupby("lesion_id").size().value_counts()
              .sort_index().astype(int).to_dict(), "models": {}}
    result["images_per_lesion"] = {str(k): v for k, v in result["images_per_lesion"].items()}
    for kind in MODEL_KEYS:
        one, mean, lesions = lesion_logits(multi, kind_logits(frame, kind, multi["image_id"]))
        y = labels(lesions)
        t = manifest.temperature(kind)
        p_one, p_all = softmax(one, t), softmax(mean, t)
        groups = lesions["lesion_id"].to_numpy()
        out = {}
        for name, metric in METRICS.items():
            e1, lo1, hi1 = bootstrap_ci(metric, y, p_one, groups, n_boot)
            ea, loa, hia = bootstrap_ci(metric, y, p_all, groups, n_boot)
            out[name] = {"one_image": [e1, lo1, hi1], "all_images": [ea, loa, hia],
                         "all_minus_one": paired_bootstrap(metric, y, p_one, p_all, groups, n_boot)}
        result["models"][kind] = out
    return result


def markdown(r: dict) -> str:
    lines = ["# Several images of one lesion (out-of-fold)", "", r["protocol"], "",
             f"{r['n_lesions']} lesions with {r['n_images']} images (images per lesion: "
             + ", ".join(f"{k}: {v}" for k, v in r["images_per_lesion"].items()) + ").", "",
             "| model | metric | one image | all images | all - one (95% CI) |", "|---|---|---|---|---|"]
    for kind, metrics in r["models"].items():
        for name, m in metrics.items():
            d = m["all_minus_one"]
            lines.append(f"| {kind} | {name} | {m['one_image'][0]:.3f} [{m['one_image'][1]:.3f}, {m['one_image'][2]:.3f}] "
                         f"| {m['all_images'][0]:.3f} [{m['all_images'][1]:.3f}, {m['all_images'][2]:.3f}] "
                         f"| {d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--oof", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "multi_image")
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    if not a.oof.is_file():
        print(f"error: {a.oof} is missing: run python -m train.fitting.cv first", file=sys.stderr)
        return 2
    r = study(a.data, a.oof, a.weights, a.n_boot)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=1))
    a.out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
