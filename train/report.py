"""Writes the clinical evaluation report of the bundled models on the lesion-disjoint test split.

    python -m train.report [--weights weights] [--data DIR] [--out reports] [--n-boot 1000]

reports/report.md (+ PNG figures) and reports/report.json (what the app's "Model report"
tab, melanoma operating points and subgroup rows read). Melanoma thresholds are chosen on
the validation split and then measured on the test split.
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
from PIL import Image  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve  # noqa: E402

from lesion_app.clinical_report import age_band  # noqa: E402
from lesion_app.data import DEFAULT_DATA, labels, load_image, load_mask, load_metadata  # noqa: E402
from lesion_app.gradcam import gradcam  # noqa: E402
from lesion_app.predictor import Predictor  # noqa: E402
from lesion_app.vocab import CLASSES  # noqa: E402
from lesion_app.weights import MODEL_KEYS, WEIGHTS_DIR  # noqa: E402
from train.evaluate import predict_folder  # noqa: E402
from train.metrics import expected_calibration_error  # noqa: E402
from train.stats import (balanced_accuracy, bootstrap_ci, complementarity, energy_inside,  # noqa: E402
                         macro_auc, macro_f1, mcnemar, paired_bootstrap, pointing_game, reliability,
                         sensitivity_at_specificity)

REPO = Path(__file__).resolve().parent.parent
MEL = CLASSES.index("mel")
NAMES = {"fusion": "Fusion", "image_only": "Image-only"}


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Undoes temperature scaling: softmax(T * log p) = softmax(logits)."""
    z = temperature * np.log(np.clip(probs, 1e-12, 1))
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


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


def localisation(predictor: Predictor, data: Path, df: pd.DataFrame, probs: dict) -> dict:
    """Grad-CAM (predicted class) vs the lesion mask: energy inside and pointing-game hits."""
    spec = predictor.spec
    res = {k: {"energy": [], "hits": [], "empty": 0} for k in MODEL_KEYS}
    for i, image_id in enumerate(df["image_id"]):
        mask = load_mask(data, image_id)
        if mask is None:
            continue
        mask = np.asarray(Image.fromarray(mask).resize((spec.width, spec.height), Image.Resampling.NEAREST))
        x = predictor.image_tensor(load_image(data, image_id))[None]
        meta = predictor.encode(*df.loc[i, ["age", "sex", "localization"]])[None]
        for k in MODEL_KEYS:
            heat, empty = gradcam(predictor.models[k], x, meta if k == "fusion" else None,
                                  int(probs[k][i].argmax()))
            if empty:
                res[k]["empty"] += 1
                continue
            res[k]["energy"].append(energy_inside(heat, mask))
            res[k]["hits"].append(pointing_game(heat, mask))
    return {k: {"n": len(v["hits"]) + v["empty"], "empty_maps": v["empty"],
                "energy_inside_mask_mean": float(np.mean(v["energy"])) if v["energy"] else None,
                "pointing_game_hit_rate": float(np.mean(v["hits"])) if v["hits"] else None}
            for k, v in res.items()}


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
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(a.weights)
    manifest = predictor.manifest
    split = pd.read_csv(REPO / manifest["split_file"])
    md = load_metadata(a.data)
    frames = {s: md[md["image_id"].isin(split.loc[split["split"] == s, "image_id"])].reset_index(drop=True)
              for s in ("val", "test")}
    probs = {s: predict_folder(predictor, a.data, f) for s, f in frames.items()}
    df, y, P = frames["test"], labels(frames["test"]), probs["test"]
    df["age_band"] = df["age"].map(age_band)
    raw = {k: uncalibrated(P[k], predictor.temperature[k]) for k in MODEL_KEYS}
    groups = df["lesion_id"].to_numpy()

    report = {"weights": predictor.model_info, "split_file": manifest["split_file"],
              "n_images": int(len(df)), "n_lesions": int(df["lesion_id"].nunique()), "models": {}}
    for k in MODEL_KEYS:
        m = {}
        for name, fn in (("balanced_accuracy", balanced_accuracy), ("macro_f1", macro_f1), ("macro_auc", macro_auc)):
            est, lo, hi = bootstrap_ci(fn, y, P[k], groups, n_boot=a.n_boot)
            m[name] = {"estimate": est, "ci95": [lo, hi]}
        m["ece_before_temperature"] = expected_calibration_error(raw[k], y)
        m["ece_after_temperature"] = expected_calibration_error(P[k], y)
        m["temperature"] = predictor.temperature[k]
        # Melanoma operating points: threshold from validation, measured on test.
        yv, pv = labels(frames["val"]) == MEL, probs["val"][k][:, MEL]
        ops = {}
        for spec in (0.90, 0.95):
            thr = sensitivity_at_specificity(yv, pv, spec)["threshold"]
            pos, yt = P[k][:, MEL] >= thr, y == MEL
            ops[f"{int(spec * 100)}"] = {
                "threshold_from_validation": thr,
                "test_sensitivity": float(pos[yt].mean()), "test_specificity": float((~pos[~yt]).mean()),
                "test_oracle": sensitivity_at_specificity(yt, P[k][:, MEL], spec)}
        m["melanoma_operating_points"] = ops
        report["models"][k] = m
    report["paired"] = {
        "mcnemar_correctness": mcnemar(P["image_only"].argmax(1) == y, P["fusion"].argmax(1) == y),
        "macro_auc_paired_bootstrap": paired_bootstrap(macro_auc, y, P["image_only"], P["fusion"], groups,
                                                       n_boot=a.n_boot),
        "balanced_accuracy_paired_bootstrap": paired_bootstrap(balanced_accuracy, y, P["image_only"],
                                                               P["fusion"], groups, n_boot=a.n_boot),
        "note": "a = image-only, b = fusion; differences are fusion minus image-only"}
    report["complementarity"] = dict(zip(CLASSES, complementarity(y, P["image_only"].argmax(1),
                                                                  P["fusion"].argmax(1), len(CLASSES))))
    report["subgroups"] = subgroups(df, y, P)
    report["localisation"] = localisation(predictor, a.data, df, P)
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
    lines = [f"# Clinical evaluation report (test split: {r['n_images']} images, {r['n_lesions']} lesions)", "",
             f"Weights version {r['weights']['version']}. Lesion-disjoint test split `{r['split_file']}`. "
             "Confidence intervals: 95% percentile bootstrap resampling whole lesions.", "",
             "## Headline metrics", "", "| metric | fusion | image-only |", "|---|---|---|"]
    for name in ("balanced_accuracy", "macro_f1", "macro_auc"):
        lines.append(f"| {name.replace('_', ' ')} | {_ci(M['fusion'][name])} | {_ci(M['image_only'][name])} |")
    for name in ("ece_before_temperature", "ece_after_temperature", "temperature"):
        lines.append(f"| {name.replace('_', ' ')} | {M['fusion'][name]:.3f} | {M['image_only'][name]:.3f} |")
    pr = r["paired"]
    mc, au, ba = pr["mcnemar_correctness"], pr["macro_auc_paired_bootstrap"], pr["balanced_accuracy_paired_bootstrap"]
    lines += ["", "## Fusion vs image-only (paired)", "",
              f"- McNemar on correctness ({mc['method']}): only image-only right {mc['only_a_correct']}, "
              f"only fusion right {mc['only_b_correct']}, p = {mc['p_value']:.4f}.",
              f"- Macro AUC, paired lesion bootstrap: fusion − image-only = {au['difference']:+.4f} "
              f"[{au['ci'][0]:+.4f}, {au['ci'][1]:+.4f}], p = {au['p_value']:.4f}.",
              f"- Balanced accuracy, paired lesion bootstrap: {ba['difference']:+.4f} "
              f"[{ba['ci'][0]:+.4f}, {ba['ci'][1]:+.4f}], p = {ba['p_value']:.4f}.", "",
              "## Melanoma operating points", "",
              "Thresholds on P(mel) chosen on the validation split, then measured on test "
              "(in brackets: the best achievable on test, for reference).", "",
              "| model | target specificity | threshold | test sensitivity | test specificity | (test oracle sens.) |",
              "|---|---|---|---|---|---|"]
    for k in MODEL_KEYS:
        for spec, o in M[k]["melanoma_operating_points"].items():
            lines.append(f"| {NAMES[k]} | {spec}% | {o['threshold_from_validation']:.3f} | "
                         f"{o['test_sensitivity']:.3f} | {o['test_specificity']:.3f} | "
                         f"({o['test_oracle']['sensitivity']:.3f}) |")
    lines += ["", "## Modality complementarity", "",
              "| class | support | image-only wrong, fusion right | image-only right, fusion wrong |",
              "|---|---|---|---|"]
    for c, v in r["complementarity"].items():
        lines.append(f"| {c} | {v['support']} | {v['fusion_fixed']} | {v['fusion_broke']} |")
    lines += ["", "## Subgroups", "",
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
    lines += ["## Grad-CAM localisation against the lesion masks", "",
              "Heatmap for the predicted class. Energy inside = share of heatmap mass inside the mask; "
              "pointing game = the heatmap's maximum lies inside the mask.", "",
              "| model | images | empty maps | energy inside mask | pointing-game hit rate |", "|---|---|---|---|---|"]
    for k, v in r["localisation"].items():
        lines.append(f"| {NAMES[k]} | {v['n']} | {v['empty_maps']} | {_opt(v['energy_inside_mask_mean'])} | "
                     f"{_opt(v['pointing_game_hit_rate'])} |")
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
