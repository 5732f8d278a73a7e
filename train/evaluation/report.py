"""Writes the clinical evaluation report of the bundled ensembles from out-of-fold predictions.

    python -m train.evaluation.report [--weights weights] [--data DIR] [--out reports] [--n-boot 1000]

Every figure comes from images whose lesion the scoring model never trained on:
- reports/oof_logits.csv (written by train.release.bundle from the train.fitting.cv run): each image scored
  by the member of its own fold; calibrated with the manifest's temperatures. Metrics with
  lesion-bootstrap CIs, fusion vs image-only paired tests, per class, melanoma operating
  points (thresholds chosen on these predictions), subgroups and reliability.
- reports/heldout_logits.csv: every member on the held-out slice that no member trained on:
  the ensemble against its single members.
- Heatmap localisation (each CAM method) of the shipped ensembles against the lesion masks, on that slice.
Writes reports/report.md (+ PNG figures) and reports/report.json, what the app's "Model
report" tab, melanoma operating points and similar-patient rows read. Overwrites them.
This module computes report.json (and the figures' data); train.evaluation.report_render
draws report.md from it and the figures from that data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_curve

from lesion_app.evidence.clinical_report import age_band
from train.data.dataset import DEFAULT_DATA, labels, load_metadata
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR
from train.data.logits import kind_logits, member_logits, read_logits
from train.data.splits import read_heldout
from train.evaluation.cam_localisation import localisation
from train.evaluation.metrics import (HEADLINE_METRICS, MEL, balanced_accuracy, class_aucs,
                                      classification_metrics, expected_calibration_error, macro_f1, softmax)
from train.evaluation.report_render import draw_figures, report_markdown
from train.evaluation.stats import (bootstrap_ci, complementarity, mcnemar, paired_bootstrap,
                                    reliability, sensitivity_at_specificity)
from train import REPO


def subgroups(df: pd.DataFrame, y, probs: dict, min_n: int = 20) -> dict:
    """Per age band, sex and site: accuracy, balanced accuracy and melanoma recall of each model,
    and the largest fusion balanced-accuracy gap between groups of at least min_n images."""
    out = {}
    for col, key in (("age_band", "age"), ("sex", "sex"), ("localization", "site")):
        rows = []
        for value, idx in df.groupby(col).indices.items():
            row = {"group": str(value), "n": int(len(idx)), "n_mel": int((y[idx] == MEL).sum())}
            for k in MODEL_KEYS:
                pred = probs[k][idx].argmax(1)
                row[f"{k}_accuracy"] = float((pred == y[idx]).mean())
                present = sorted(set(y[idx]))
                row[f"{k}_balanced_accuracy"] = balanced_accuracy(y[idx], probs[k][idx]) if len(present) > 1 else None
                row[f"{k}_mel_recall"] = float((pred[y[idx] == MEL] == MEL).mean()) if row["n_mel"] else None
            rows.append(row)
        big = [r for r in rows if r["n"] >= min_n and r["fusion_balanced_accuracy"] is not None]
        gap = None
        if len(big) > 1:
            lo = min(big, key=lambda r: r["fusion_balanced_accuracy"])
            hi = max(big, key=lambda r: r["fusion_balanced_accuracy"])
            gap = {"best": hi["group"], "worst": lo["group"],
                   "gap": hi["fusion_balanced_accuracy"] - lo["fusion_balanced_accuracy"]}
        out[key] = {"rows": sorted(rows, key=lambda r: -r["n"]), "largest_gap_fusion_bacc": gap,
                    "min_n_for_gap": min_n}
    return out


def ensemble_vs_members(held: pd.DataFrame, y, groups, order, temperature: dict, n_boot: int) -> dict:
    """On the held-out slice: the ensemble (mean logits) against each single member, paired."""
    out = {}
    for k in MODEL_KEYS:
        members = member_logits(held, k, order)
        ens = softmax(np.mean(members, 0), temperature[k])
        rows = []
        for m, z in enumerate(members):
            p = softmax(z, temperature[k])
            rows.append({"member": m, **{name: fn(y, p) for name, fn in
                                         (("balanced_accuracy", balanced_accuracy), ("macro_f1", macro_f1))},
                         "ensemble_minus_member_balanced_accuracy":
                             paired_bootstrap(balanced_accuracy, y, p, ens, groups, n_boot=n_boot),
                         "ensemble_minus_member_macro_f1": paired_bootstrap(macro_f1, y, p, ens, groups,
                                                                            n_boot=n_boot)})
        out[k] = {"n": int(len(y)), "ensemble": {"balanced_accuracy": balanced_accuracy(y, ens),
                                                 "macro_f1": macro_f1(y, ens),
                                                 "ece": expected_calibration_error(ens, y)},
                  "members": rows,
                  "mean_member": {m: float(np.mean([r[m] for r in rows])) for m in ("balanced_accuracy", "macro_f1")}}
    return out


def figure_data(y, probs: dict, raw: dict) -> dict:
    """What the figures plot, per model: the confusion matrix (counts, rows true, columns
    predicted), each class's one-vs-rest ROC curve as (fpr, tpr, AUC), and the top-label
    reliability bins (10) with the ECE, before and after temperature (raw vs probs)."""
    out = {}
    for k in MODEL_KEYS:
        aucs = class_aucs(y, probs[k])
        out[k] = {"confusion_matrix": confusion_matrix(y, probs[k].argmax(1), labels=range(len(CLASSES))),
                  "roc": [(*roc_curve(y == c, probs[k][:, c])[:2], aucs[c]) for c in range(len(CLASSES))],
                  "reliability": {label: (reliability(p, y, bins=10), expected_calibration_error(p, y))
                                  for label, p in (("before temperature", raw[k]), ("after temperature", probs[k]))}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "reports")
    p.add_argument("--oof", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--heldout-logits", type=Path, default=REPO / "reports" / "heldout_logits.csv")
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(a.weights)
    manifest = predictor.manifest
    T = predictor.temperature
    md = load_metadata(a.data)
    oof = read_logits(a.oof)
    df = md[md["image_id"].isin(set(oof["image_id"]))].reset_index(drop=True)
    df["age_band"] = df["age"].map(age_band)
    y, groups = labels(df), df["lesion_id"].to_numpy()
    Z = {k: kind_logits(oof, k, df["image_id"]) for k in MODEL_KEYS}
    P = {k: softmax(Z[k], T[k]) for k in MODEL_KEYS}
    raw = {k: softmax(Z[k]) for k in MODEL_KEYS}

    report = {"weights": predictor.model_info, "evaluation": "out-of-fold", "folds_file": manifest.folds_file,
              "n_images": int(len(df)), "n_lesions": int(df["lesion_id"].nunique()), "models": {}}
    for k in MODEL_KEYS:
        m = {}
        for name, fn in HEADLINE_METRICS.items():
            est, lo, hi = bootstrap_ci(fn, y, P[k], groups, n_boot=a.n_boot)
            m[name] = {"estimate": est, "ci95": [lo, hi]}
        m["ece_before_temperature"] = expected_calibration_error(raw[k], y)
        m["ece_after_temperature"] = expected_calibration_error(P[k], y)
        m["temperature"] = T[k]
        m["per_class"] = classification_metrics(y, P[k])["per_class"]
        # Melanoma operating points: thresholds chosen on these out-of-fold predictions.
        ops = {}
        for spec in (0.90, 0.95):
            o = sensitivity_at_specificity(y == MEL, P[k][:, MEL], spec)
            ops[f"{int(spec * 100)}"] = {"threshold": o["threshold"], "sensitivity": o["sensitivity"],
                                         "specificity": o["specificity"]}
        m["melanoma_operating_points"] = ops
        report["models"][k] = m
    report["paired"] = {
        "mcnemar_correctness": mcnemar(P["image_only"].argmax(1) == y, P["fusion"].argmax(1) == y),
        **{f"{name}_paired_bootstrap": paired_bootstrap(fn, y, P["image_only"], P["fusion"], groups,
                                                        n_boot=a.n_boot) for name, fn in HEADLINE_METRICS.items()},
        "per_class_recall": {c: {k: report["models"][k]["per_class"][c]["recall"] for k in MODEL_KEYS}
                             for c in CLASSES},
        "note": "a = image-only, b = fusion; differences are fusion minus image-only"}
    report["complementarity"] = dict(zip(CLASSES, complementarity(y, P["image_only"].argmax(1),
                                                                  P["fusion"].argmax(1), len(CLASSES))))
    report["subgroups"] = subgroups(df, y, P)
    held_ids = read_heldout(manifest.heldout_path)["image_id"]
    held_df = md[md["image_id"].isin(set(held_ids))].reset_index(drop=True)
    if a.heldout_logits.is_file():
        report["ensemble_vs_member"] = ensemble_vs_members(read_logits(a.heldout_logits), labels(held_df),
                                                           held_df["lesion_id"].to_numpy(), held_df["image_id"],
                                                           T, a.n_boot)
    report["localisation"] = localisation(predictor, a.data, held_df)
    report["prediction_sets"] = manifest.prediction_sets
    report["figures"] = draw_figures(a.out, figure_data(y, P, raw))
    report["seconds"] = round(time.time() - t0, 1)
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    (a.out / "report.md").write_text(report_markdown(report))
    print(f"wrote {a.out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
