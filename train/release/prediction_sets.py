"""Fits the class-conditional prediction-set thresholds on out-of-fold predictions.

    python -m train.release.prediction_sets [--weights weights] [--oof reports/oof_logits.csv]

Thresholds (lesion_app.evidence.conformal) per kind and level (90%, 95%) from the calibrated
out-of-fold probabilities of every image outside the held-out slice. Their coverage is
measured twice, on cases the thresholds never saw: cross-fitted (thresholds from four
folds, sets on the fifth, over all folds) with single members, and on the held-out slice
with the shipped ensembles (reports/heldout_logits.csv). Writes the thresholds and figures
into weights/manifest.json ("prediction_sets") and the model card (overwrites them).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lesion_app.evidence.conformal import LEVELS, class_thresholds, coverage_report, prediction_sets
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR
from train import REPO
from train.data.logits import kind_logits, kind_rows, member_logits, read_logits
from train.data.splits import load_folds, read_heldout
from train.evaluation.metrics import softmax
from train.release.model_card import model_card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--oof", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--heldout-logits", type=Path, default=REPO / "reports" / "heldout_logits.csv")
    a = p.parse_args(argv)
    manifest = Manifest.load(a.weights)
    dx = load_folds(manifest.folds_path).set_index("image_id")["dx"]
    held_ids = set(read_heldout(manifest.heldout_path)["image_id"])
    oof, held = read_logits(a.oof), read_logits(a.heldout_logits)
    thresholds, crossfit, on_heldout = {}, {}, {}
    for kind in MODEL_KEYS:
        t = manifest.temperature(kind)
        f = kind_rows(oof, kind)
        probs = softmax(kind_logits(oof, kind), t)
        y = f["image_id"].map(dx).map(CLASSES.index).to_numpy()
        calib = ~f["image_id"].isin(held_ids).to_numpy()
        h = kind_rows(held, kind)
        order = h.loc[h["member"] == h["member"].min(), "image_id"]   # the first member's image order
        ens = softmax(np.mean(member_logits(held, kind, order), 0), t)
        yh = order.map(dx).map(CLASSES.index).to_numpy()
        for level in LEVELS:
            cov = float(level)
            thresholds.setdefault(level, {})[kind] = class_thresholds(probs[calib], y[calib], cov).tolist()
            sets = np.zeros_like(probs, dtype=bool)
            for fold in sorted(f["fold"].unique()):
                test = (f["fold"] == fold).to_numpy()
                q = class_thresholds(probs[calib & ~test], y[calib & ~test], cov)
                sets[test] = prediction_sets(probs[test], q)
            crossfit.setdefault(level, {})[kind] = coverage_report(sets, y, CLASSES)
            on_heldout.setdefault(level, {})[kind] = coverage_report(
                prediction_sets(ens, np.array(thresholds[level][kind])), yh, CLASSES)
    manifest = manifest.with_prediction_sets({
        "method": "class-conditional (Mondrian) split conformal; score 1 - p(class); a class is in the set "
                  "when 1 - p <= its threshold",
        "calibrated_on": "calibrated out-of-fold probabilities (single members) of every image outside the "
                         "held-out slice",
        "thresholds": thresholds,
        "coverage_crossfit_out_of_fold": crossfit,
        "coverage_heldout_ensemble": on_heldout,
    })
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))
    for level in LEVELS:
        for kind in MODEL_KEYS:
            c, h = crossfit[level][kind], on_heldout[level][kind]
            print(f"{level} {kind:10s} cross-fit coverage {c['coverage']:.3f} (size {c['mean_size']:.2f}, "
                  f"min per class {min(v['coverage'] for v in c['per_class'].values()):.3f}); held-out ensemble "
                  f"{h['coverage']:.3f} (size {h['mean_size']:.2f})")


if __name__ == "__main__":
    main()
