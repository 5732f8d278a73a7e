"""Draws the clinical evaluation report: Markdown from train.evaluation.report's report.json,
PNG figures from its figure data. Computes no statistic; every number comes in computed.

Also the Markdown tables other stages show: the prediction sets' coverage (the release
stage's model card reads coverage_markdown from here) and the CAM localisation table.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lesion_app.classifier.vocab import CLASSES  # noqa: E402
from lesion_app.classifier.weights import MODEL_KEYS  # noqa: E402
from train.evaluation.metrics import HEADLINE_METRICS  # noqa: E402

NAMES = {"fusion": "Fusion", "image_only": "Image-only"}
FIGURES = ("confusion_matrices.png", "roc_curves.png", "reliability.png")


def _f3(x, missing: str) -> str:
    return missing if x is None else f"{x:.3f}"


def _ci(m: dict) -> str:
    return f"{m['estimate']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def _per_model_figure(out: Path, name: str, draw) -> str:
    """One PNG with a panel per model, side by side; draw(ax, model_key) fills a panel."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, k in zip(axes, MODEL_KEYS):
        draw(ax, k)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def draw_figures(out: Path, data: dict) -> list[str]:
    """Writes the report's PNGs into out from train.evaluation.report.figure_data's result;
    returns their file names (FIGURES, in that order)."""
    def confusion(ax, k):
        cm = data[k]["confusion_matrix"]
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
        for name, (fpr, tpr, auc) in zip(CLASSES, data[k]["roc"]):
            ax.plot(fpr, tpr, label=f"{name} AUC {auc:.3f}")
        diagonal_panel(ax, f"{NAMES[k]}: one-vs-rest ROC", "1 - specificity", "sensitivity")

    def calibration(ax, k):
        for (label, (bins, ece)), style in zip(data[k]["reliability"].items(), ("o--", "s-")):
            bins = [b for b in bins if b["n"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                    label=f"{label}, ECE {ece:.3f}")
        diagonal_panel(ax, f"{NAMES[k]}: reliability (top label)", "confidence", "accuracy")

    return [_per_model_figure(out, name, draw) for name, draw in zip(FIGURES, (confusion, roc, calibration))]


def coverage_markdown(ps: dict | None) -> str:
    """The prediction sets' measured coverage and size per class, for the card and the report."""
    if not ps:
        return ""
    lines = ["## Prediction sets (class-conditional conformal)", "",
             f"{ps['method']}. Calibrated on {ps['calibrated_on']}. Coverage measured on cases the "
             "thresholds never saw: cross-fitted out-of-fold (single members, all images) and on the "
             "held-out slice (the shipped ensembles).", "",
             "| level | model | evaluation | coverage | mean size | " + " | ".join(f"{c} cov." for c in CLASSES) + " |",
             "|---|---|---|---|---|" + "---|" * len(CLASSES)]
    for level in ps["thresholds"]:
        for kind in MODEL_KEYS:
            for name, key in (("cross-fit OOF", "coverage_crossfit_out_of_fold"), ("held-out ensemble",
                                                                                  "coverage_heldout_ensemble")):
                r = ps[key][level][kind]
                cells = " | ".join(_f3(r["per_class"][c]["coverage"], "n/a") for c in CLASSES)
                lines.append(f"| {float(level):.0%} | {kind} | {name} | {r['coverage']:.3f} | {r['mean_size']:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def localisation_table(result: dict) -> str:
    """A markdown table of train.evaluation.cam_localisation.localisation's result."""
    lines = ["| method | model | images | empty maps | energy inside mask | pointing-game hit rate | "
             "inside/outside ratio (median) |", "|---|---|---|---|---|---|---|"]
    for method, by_kind in result.items():
        for k, v in by_kind.items():
            ratio = v.get("attention_ratio_median")   # absent from reports made before it was measured
            lines.append(f"| {method} | {NAMES.get(k, k)} | {v['n']} | {v['empty_maps']} | "
                         f"{_f3(v['energy_inside_mask_mean'], '-')} | {_f3(v['pointing_game_hit_rate'], '-')} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def report_markdown(r: dict) -> str:
    """report.md from report.json's dict (its "figures" are linked, not drawn)."""
    M = r["models"]
    lines = [f"# Clinical evaluation report (out-of-fold: {r['n_images']} images, {r['n_lesions']} lesions)", "",
             f"Weights version {r['weights']['version']}. Every image is scored by the cross-validation member "
             f"that never trained on its lesion (folds `{r['folds_file']}`), calibrated with the shipped "
             "temperatures; these are single-member figures, and the shipped ensembles average five members "
             "(see 'Ensemble vs single member'). Confidence intervals: 95% percentile bootstrap resampling "
             "whole lesions.", "",
             "## Headline metrics", "", "| metric | fusion | image-only |", "|---|---|---|"]
    for name in HEADLINE_METRICS:
        lines.append(f"| {name.replace('_', ' ')} | {_ci(M['fusion'][name])} | {_ci(M['image_only'][name])} |")
    for name in ("ece_before_temperature", "ece_after_temperature", "temperature"):
        lines.append(f"| {name.replace('_', ' ')} | {M['fusion'][name]:.3f} | {M['image_only'][name]:.3f} |")
    pr = r["paired"]
    mc = pr["mcnemar_correctness"]
    lines += ["", "## Fusion vs image-only (paired, out-of-fold)", "",
              f"- McNemar on correctness ({mc['method']}): only image-only right {mc['only_a_correct']}, "
              f"only fusion right {mc['only_b_correct']}, p = {mc['p_value']:.4f}."]
    for name in HEADLINE_METRICS:
        d = pr[f"{name}_paired_bootstrap"]
        lines.append(f"- {name.replace('_', ' ')}, paired lesion bootstrap: fusion − image-only = "
                     f"{d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}], p = {d['p_value']:.4f}.")
    lines += ["", "## Per class (out-of-fold)", "",
              "| class | support | fusion recall | image-only recall | fusion F1 | image-only F1 | fusion AUC | image-only AUC |",
              "|---|---|---|---|---|---|---|---|"]
    for c in CLASSES:
        f, i = M["fusion"]["per_class"][c], M["image_only"]["per_class"][c]
        lines.append(f"| {c} | {f['support']} | {f['recall']:.3f} | {i['recall']:.3f} | {f['f1']:.3f} | "
                     f"{i['f1']:.3f} | {_f3(f['auc'], '–')} | {_f3(i['auc'], '–')} |")
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
            lines.append(f"| {row['group']} | {row['n']} | {row['n_mel']} | {_f3(row['fusion_balanced_accuracy'], '–')} | "
                         f"{_f3(row['image_only_balanced_accuracy'], '–')} | {row['fusion_accuracy']:.3f} | "
                         f"{row['image_only_accuracy']:.3f} | {_f3(row['fusion_mel_recall'], '–')} | "
                         f"{_f3(row['image_only_mel_recall'], '–')} |")
        lines.append("")
    lines += ["## Heatmap localisation against the lesion masks (held-out slice, shipped ensembles)", "",
              "Heatmap for each ensemble's predicted class, one backward pass through its mean logit, for each CAM "
              "method the app offers. Energy inside = share of heatmap mass inside the mask; pointing game = the "
              "heatmap's maximum lies inside the mask; inside/outside ratio = mean map value inside the mask over "
              "that outside.", "", localisation_table(r["localisation"])]
    if r.get("prediction_sets"):
        lines += ["", coverage_markdown(r["prediction_sets"])]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]]
    return "\n".join(lines) + "\n"

