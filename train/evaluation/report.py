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
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve  # noqa: E402

from lesion_app.clinical_report import age_band  # noqa: E402
from train.data.dataset import DEFAULT_DATA, labels, load_metadata  # noqa: E402
from lesion_app.predictor import Predictor  # noqa: E402
from lesion_app.vocab import CLASSES  # noqa: E402
from lesion_app.weights import MODEL_KEYS, WEIGHTS_DIR  # noqa: E402
from train.release.bundle import coverage_markdown  # noqa: E402
from train.evaluation.cam_localisation import localisation, table as localisation_table  # noqa: E402
from train.evaluation.metrics import classification_metrics, expected_calibration_error, softmax  # noqa: E402
from train.evaluation.stats import (balanced_accuracy, bootstrap_ci, complementarity,  # noqa: E402
                         macro_auc, macro_f1, mcnemar, paired_bootstrap, reliability,
                         sensitivity_at_specificity)
from train import REPO  # noqa: E402

MEL = CLASSES.index("mel")
NAMES = {"fusion": "Fusion", "image_only": "Image-only"}


def logits_of(frame: pd.DataFrame, kind: str, order) -> np.ndarray:
    """A kind's (N, classes) logits from a logits CSV, rows in the given image order."""
    f = frame[frame["model"] == kind].set_index("image_id").loc[list(order)]
    return f[[f"logit_{c}" for c in CLASSES]].to_numpy(np.float64)


def mel_sensitivity(specificity: float):
    """metric(y, probs): melanoma sensitivity at the best threshold with this specificity."""
    def metric(y, probs):
        return sensitivity_at_specificity(y == MEL, probs[:, MEL], specificity)["sensitivity"]
    metric.__name__ = f"mel_sensitivity_at_{int(specificity * 100)}_specificity"
    return metric


HEADLINE = {"balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1, "macro_auc": macro_auc,
            "mel_sensitivity_at_90_specificity": mel_sensitivity(0.90),
            "mel_sensitivity_at_95_specificity": mel_sensitivity(0.95)}


def subgroups(df: pd.DataFrame, y, probs: dict, min_n: int = 20) -> dict:
    out = {}
    for col, key in (("age_band", "age"), ("sex", "sex"), ("localization", "site")):
        rows = []
        for value, idx in df.groupby(col).indices.items():
            row = {"group": str(value), "n": int(len(idx)), "n_mel": int((y[idx] == MEL).sum())}
            for k in MODEL_KEYS:
                pred = probs[k][idx].argmax(1)
                row[f"{k}_accuracy"] = float((pred == y[idx]).mean())
                present = sorted(set(y[idx]))
                row[f"{k}_balanced_accuracy"] = (float(np.mean([(pred[y[idx] == c] == c).mean() for c in present]))
                                                 if len(present) > 1 else None)
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
        f = held[held["model"] == k]
        members = [logits_of(f[f["member"] == m].drop(columns="member"), k, order)
                   for m in sorted(f["member"].unique())]
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


def per_model_figure(out: Path, name: str, draw) -> str:
    """One PNG with a panel per model, side by side; draw(ax, model_key) fills a panel."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, k in zip(axes, MODEL_KEYS):
        draw(ax, k)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def figures(out: Path, y, probs: dict, raw: dict) -> list[str]:
    def confusion(ax, k):
        cm = confusion_matrix(y, probs[k].argmax(1), labels=range(len(CLASSES)))
        ax.imshow(cm / cm.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, v, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(7), CLASSES)
        ax.set_yticks(range(7), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{NAMES[k]} (row-normalised colour, counts)")

    def diagonal_panel(ax, title, xlabel, ylabel):
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)

    def roc(ax, k):
        for c, name in enumerate(CLASSES):
            fpr, tpr, _ = roc_curve(y == c, probs[k][:, c])
            ax.plot(fpr, tpr, label=f"{name} AUC {roc_auc_score(y == c, probs[k][:, c]):.3f}")
        diagonal_panel(ax, f"{NAMES[k]}: one-vs-rest ROC", "1 - specificity", "sensitivity")

    def calibration(ax, k):
        for p, label, style in ((raw[k], "before temperature", "o--"), (probs[k], "after temperature", "s-")):
            bins = [b for b in reliability(p, y, bins=10) if b["n"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                    label=f"{label}, ECE {expected_calibration_error(p, y):.3f}")
        diagonal_panel(ax, f"{NAMES[k]}: reliability (top label)", "confidence", "accuracy")

    return [per_model_figure(out, "confusion_matrices.png", confusion),
            per_model_figure(out, "roc_curves.png", roc),
            per_model_figure(out, "reliability.png", calibration)]


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
    oof = pd.read_csv(a.oof)
    df = md[md["image_id"].isin(set(oof["image_id"]))].reset_index(drop=True)
    df["age_band"] = df["age"].map(age_band)
    y, groups = labels(df), df["lesion_id"].to_numpy()
    Z = {k: logits_of(oof, k, df["image_id"]) for k in MODEL_KEYS}
    P = {k: softmax(Z[k], T[k]) for k in MODEL_KEYS}
    raw = {k: softmax(Z[k]) for k in MODEL_KEYS}

    report = {"weights": predictor.model_info, "evaluation": "out-of-fold", "folds_file": manifest.folds_file,
              "n_images": int(len(df)), "n_lesions": int(df["lesion_id"].nunique()), "models": {}}
    for k in MODEL_KEYS:
        m = {}
        for name, fn in HEADLINE.items():
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
                                                        n_boot=a.n_boot) for name, fn in HEADLINE.items()},
        "per_class_recall": {c: {k: report["models"][k]["per_class"][c]["recall"] for k in MODEL_KEYS}
                             for c in CLASSES},
        "note": "a = image-only, b = fusion; differences are fusion minus image-only"}
    report["complementarity"] = dict(zip(CLASSES, complementarity(y, P["image_only"].argmax(1),
                                                                  P["fusion"].argmax(1), len(CLASSES))))
    report["subgroups"] = subgroups(df, y, P)
    held_ids = pd.read_csv(manifest.heldout_path, dtype=str)["image_id"]
    held_df = md[md["image_id"].isin(set(held_ids))].reset_index(drop=True)
    if a.heldout_logits.is_file():
        report["ensemble_vs_member"] = ensemble_vs_members(pd.read_csv(a.heldout_logits), labels(held_df),
                                                           held_df["lesion_id"].to_numpy(), held_df["image_id"],
                                                           T, a.n_boot)
    report["localisation"] = localisation(predictor, a.data, held_df)
    report["prediction_sets"] = manifest.prediction_sets
    report["figures"] = figures(a.out, y, P, raw)
    report["seconds"] = round(time.time() - t0, 1)
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    (a.out / "report.md").write_text(markdown(report))
    print(f"wrote {a.out} in {report['seconds']} s")


def _ci(m: dict) -> str:
    return f"{m['estimate']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def _opt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(r: dict) -> str:
    M = r["models"]
    lines = [f"# Clinical evaluation report (out-of-fold: {r['n_images']} images, {r['n_lesions']} lesions)", "",
             f"Weights version {r['weights']['version']}. Every image is scored by the cross-validation member "
             f"that never trained on its lesion (folds `{r['folds_file']}`), calibrated with the shipped "
             "temperatures; these are single-member figures, and the shipped ensembles average five members "
             "(see 'Ensemble vs single member'). Confidence intervals: 95% percentile bootstrap resampling "
             "whole lesions.", "",
             "## Headline metrics", "", "| metric | fusion | image-only |", "|---|---|---|"]
    for name in HEADLINE:
        lines.append(f"| {name.replace('_', ' ')} | {_ci(M['fusion'][name])} | {_ci(M['image_only'][name])} |")
    for name in ("ece_before_temperature", "ece_after_temperature", "temperature"):
        lines.append(f"| {name.replace('_', ' ')} | {M['fusion'][name]:.3f} | {M['image_only'][name]:.3f} |")
    pr = r["paired"]
    mc = pr["mcnemar_correctness"]
    lines += ["", "## Fusion vs image-only (paired, out-of-fold)", "",
              f"- McNemar on correctness ({mc['method']}): only image-only right {mc['only_a_correct']}, "
              f"only fusion right {mc['only_b_correct']}, p = {mc['p_value']:.4f}."]
    for name in HEADLINE:
        d = pr[f"{name}_paired_bootstrap"]
        lines.append(f"- {name.replace('_', ' ')}, paired lesion bootstrap: fusion − image-only = "
                     f"{d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}], p = {d['p_value']:.4f}.")
    lines += ["", "## Per class (out-of-fold)", "",
              "| class | support | fusion recall | image-only recall | fusion F1 | image-only F1 | fusion AUC | image-only AUC |",
              "|---|---|---|---|---|---|---|---|"]
    for c in CLASSES:
        f, i = M["fusion"]["per_class"][c], M["image_only"]["per_class"][c]
        lines.append(f"| {c} | {f['support']} | {f['recall']:.3f} | {i['recall']:.3f} | {f['f1']:.3f} | "
                     f"{i['f1']:.3f} | {_opt(f['auc'])} | {_opt(i['auc'])} |")
    if "ensemble_vs_member" in r:
        lines += ["", "## Ensemble vs single member (held-out slice)", "",
                  "The held-out slice is a dx-stratified 5% of lesions that no member trained on, so every member "
                  "and the ensemble can be scored on it, paired. It is small (4 df, 4 vasc images): read the "
                  "intervals.", "",
                  "| model | images | ensemble bal. acc. | mean member bal. acc. | ensemble − member (each member, 95% CI) | "
                  "ensemble macro-F1 | mean member macro-F1 |", "|---|---|---|---|---|---|---|"]
        for k, e in r["ensemble_vs_member"].items():
            diffs = "; ".join(f"{m['ensemble_minus_member_balanced_accuracy']['difference']:+.3f} "
                              f"[{m['ensemble_minus_member_balanced_accuracy']['ci'][0]:+.3f}, "
                              f"{m['ensemble_minus_member_balanced_accuracy']['ci'][1]:+.3f}]" for m in e["members"])
            lines.append(f"| {NAMES[k]} | {e['n']} | {e['ensemble']['balanced_accuracy']:.3f} | "
                         f"{e['mean_member']['balanced_accuracy']:.3f} | {diffs} | {e['ensemble']['macro_f1']:.3f} | "
                         f"{e['mean_member']['macro_f1']:.3f} |")
    lines += ["", "## Melanoma operating points", "",
              "Thresholds on P(mel) chosen on these out-of-fold predictions (the app flags P(mel) at or above them).", "",
              "| model | target specificity | threshold | sensitivity | specificity |", "|---|---|---|---|---|"]
    for k in MODEL_KEYS:
        for spec, o in M[k]["melanoma_operating_points"].items():
            lines.append(f"| {NAMES[k]} | {spec}% | {o['threshold']:.3f} | {o['sensitivity']:.3f} | "
                         f"{o['specificity']:.3f} |")
    lines += ["", "## Modality complementarity", "",
              "| class | support | image-only wrong, fusion right | image-only right, fusion wrong |",
              "|---|---|---|---|"]
    for c, v in r["complementarity"].items():
        lines.append(f"| {c} | {v['support']} | {v['fusion_fixed']} | {v['fusion_broke']} |")
    lines += ["", "## Subgroups (out-of-fold)", "",
              "Balanced accuracy (mean recall over the classes present), accuracy and melanoma recall. "
              f"Largest gap: between groups of at least {r['subgroups']['age']['min_n_for_gap']} images.", ""]
    for key, sg in r["subgroups"].items():
        gap = sg["largest_gap_fusion_bacc"]
        lines += [f"### {key}" + (f" (largest fusion gap {gap['gap']:.3f}: {gap['best']} vs {gap['worst']})"
                                  if gap else ""), "",
                  "| group | n | n mel | fusion bal. acc. | image-only bal. acc. | fusion acc. | "
                  "image-only acc. | fusion mel recall | image-only mel recall |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in sg["rows"]:
            lines.append(f"| {row['group']} | {row['n']} | {row['n_mel']} | {_opt(row['fusion_balanced_accuracy'])} | "
                         f"{_opt(row['image_only_balanced_accuracy'])} | {row['fusion_accuracy']:.3f} | "
                         f"{row['image_only_accuracy']:.3f} | {_opt(row['fusion_mel_recall'])} | "
                         f"{_opt(row['image_only_mel_recall'])} |")
        lines.append("")
    lines += ["## Heatmap localisation against the lesion masks (held-out slice, shipped ensembles)", "",
              "Heatmap for each ensemble's predicted class, one backward pass through its mean logit, for each CAM "
              "method the app offers. Energy inside = share of heatmap mass inside the mask; pointing game = the "
              "heatmap's maximum lies inside the mask.", "", localisation_table(r["localisation"])]
    if r.get("prediction_sets"):
        lines += ["", coverage_markdown(r["prediction_sets"])]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
