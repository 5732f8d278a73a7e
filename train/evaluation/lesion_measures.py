"""The lesion measures' out-of-fold evidence: what each says about melanoma, and whether they help.

    python -m train.evaluation.lesion_measures --run runs/seg [--out reports/lesion_measures.md]

Reads top to bottom: each shared image outside the held-out slice with its out-of-fold outline
(train.fitting.segmentation's oof_masks.npz: drawn by a decoder that never saw the image) ->
the app's own measures of that outline on the image the models see (lesion_app.evidence.lesion)
-> per class, the quartiles the app shows beside a lesion's measures (the `reference`) -> each
measure's AUC for melanoma vs nevus with a lesion-bootstrap CI -> whether the measures add to
the fusion model: one multinomial logistic stacker on the fusion model's out-of-fold logits,
with and without the measures, each scored out-of-fold over lesion-grouped folds, compared
paired on the same images -> out.json (numbers) and out.md (rendered from them).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from lesion_app.classifier.preprocess import InputSpec, fit_to_aspect
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.segmenter import largest_component
from lesion_app.evidence.lesion import SCALAR_MEASURES, measure, no_lesion_reason
from lesion_app.paths import REPO
from train.data.dataset import DEFAULT_DATA, load_image, load_metadata
from train.data.logits import LOGIT_COLUMNS, kind_rows, read_logits
from train.data.splits import DEFAULT_FOLDS, load_folds, load_heldout
from train.evaluation.metrics import classification_metrics
from train.evaluation.stats import bootstrap_ci, paired_bootstrap

REFERENCE_QUANTILES = (0.25, 0.5, 0.75)


def oof_outlines(run: Path) -> dict[str, np.ndarray]:
    """image_id -> its out-of-fold mask at the image's own size (bool)."""
    z = np.load(Path(run) / "oof_masks.npz")
    h, w = z["shape"][0]
    return {i: np.unpackbits(z["mask_" + i])[:h * w].reshape(h, w).astype(bool) for i in z["image_id"]}


def at_input(mask: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A mask of an image of HAM10000's 4:3 shape at the model's input size (bilinear, 0.5),
    as the app's outline is (the segmenter's map, bilinear at the input size)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=(spec.height, spec.width), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5


def measure_all(data: Path, ids, outlines: dict, spec: InputSpec) -> pd.DataFrame:
    """One row per image: found, and every scalar measure of its outline (NaN when none found)."""
    rows = []
    for i in ids:
        rgb = np.asarray(fit_to_aspect(load_image(data, i), spec))
        mask = largest_component(at_input(outlines[i], spec))
        if no_lesion_reason(mask):
            rows.append({"image_id": i, "found": False})
            continue
        m = measure(mask, rgb)
        rows.append({"image_id": i, "found": True, **{k: float(m[k]) for k in SCALAR_MEASURES}})
    return pd.DataFrame(rows)


def reference(frame: pd.DataFrame) -> dict:
    """measure -> class -> [q1, median, q3] over the images with an outline (rounded for display)."""
    out = {}
    for k in SCALAR_MEASURES:
        out[k] = {c: [round(float(q), 3) for q in g[k].dropna().quantile(REFERENCE_QUANTILES)]
                  for c, g in frame[frame["found"]].groupby("dx") if g[k].notna().any()}
    return out


def measure_aucs(frame: pd.DataFrame, n_boot: int) -> dict:
    """Each measure's AUC for melanoma (positive) vs nevus, with a lesion-bootstrap CI."""
    f = frame[frame["found"] & frame["dx"].isin(["mel", "nv"])].dropna(subset=list(SCALAR_MEASURES))
    y = (f["dx"] == "mel").to_numpy().astype(int)
    out = {"n_mel": int(y.sum()), "n_nv": int(len(y) - y.sum())}
    for k in SCALAR_MEASURES:
        est, lo, hi = bootstrap_ci(roc_auc_score, y, f[k].to_numpy(), f["lesion_id"], n_boot)
        out[k] = {"auc": est, "ci": [lo, hi]}
    return out


def stacked_probabilities(x: np.ndarray, y: np.ndarray, groups, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a class-balanced multinomial logistic stacker on x, over
    5 lesion-grouped folds."""
    out = np.zeros((len(y), len(CLASSES)))
    for fit, score in GroupKFold(5).split(x, y, groups):
        scaler = StandardScaler().fit(x[fit])
        model = LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0, random_state=seed)
        model.fit(scaler.transform(x[fit]), y[fit])
        out[score] = model.predict_proba(scaler.transform(x[score]))
    return out


def added_value(frame: pd.DataFrame, logits: np.ndarray, n_boot: int) -> dict:
    """The fusion logits' stacker with and without the measures (missing measures as the class-free
    median plus a found flag), paired on the same images."""
    y = frame["dx"].map(CLASSES.index).to_numpy()
    groups = frame["lesion_id"].to_numpy()
    measures = frame[list(SCALAR_MEASURES)].to_numpy(float)
    measures = np.where(np.isnan(measures), np.nanmedian(measures, 0), measures)
    base = stacked_probabilities(logits, y, groups)
    both = stacked_probabilities(np.hstack([logits, measures, frame[["found"]].to_numpy(float)]), y, groups)
    mel = CLASSES.index("mel")
    metrics = {
        "balanced_accuracy": lambda yy, p: classification_metrics(yy, p)["balanced_accuracy"],
        "macro_auc": lambda yy, p: classification_metrics(yy, p)["macro_auc"],
        "mel_auc": lambda yy, p: roc_auc_score(yy == mel, p[:, mel]),
    }
    return {"logits_only": {k: float(f(y, base)) for k, f in metrics.items()},
            "logits_and_measures": {k: float(f(y, both)) for k, f in metrics.items()},
            "difference": {k: paired_bootstrap(f, y, base, both, groups, n_boot) for k, f in metrics.items()}}


def render(r: dict) -> str:
    a = r["auc_mel_vs_nv"]
    lines = ["# Lesion measures: out-of-fold evidence", "",
             f"Generated by `{r['command']}`. Each of the {r['n_images']} shared images outside the held-out "
             f"slice, measured on its out-of-fold outline (a segmenter that never saw it) at the model's input "
             f"size, as the app measures an upload. No lesion outlined: {r['n_not_found']} images.", "",
             f"## Each measure: melanoma ({a['n_mel']}) vs nevus ({a['n_nv']}), AUC with lesion-bootstrap 95% CI", "",
             "| measure | AUC | 95% CI |", "|---|---|---|"]
    for k in SCALAR_MEASURES:
        lines.append(f"| {k} | {a[k]['auc']:.3f} | [{a[k]['ci'][0]:.3f}, {a[k]['ci'][1]:.3f}] |")
    v = r["added_value"]
    lines += ["", "AUC 0.5 is no signal; under 0.5 means melanomas score lower than nevi.", "",
              "## Do the measures add to the fusion model?", "",
              "A class-balanced multinomial logistic stacker on the fusion model's out-of-fold logits, with and "
              "without the measures, each scored out-of-fold over 5 lesion-grouped folds; paired differences "
              "with lesion-bootstrap 95% CIs.", "",
              "| metric | logits only | logits + measures | difference | 95% CI |", "|---|---|---|---|---|"]
    for k, d in v["difference"].items():
        lines.append(f"| {k} | {v['logits_only'][k]:.4f} | {v['logits_and_measures'][k]:.4f} | "
                     f"{d['difference']:+.4f} | [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] |")
    lines += ["", f"Decision: {r['decision']}", "",
              "## The reference the app shows (median [quartiles] by class)", "",
              "| measure | " + " | ".join(CLASSES) + " |", "|---|" + "---|" * len(CLASSES)]
    for k in SCALAR_MEASURES:
        cells = [r["reference"][k].get(c) for c in CLASSES]
        lines.append(f"| {k} | " + " | ".join("–" if q is None else f"{q[1]:.3g} [{q[0]:.3g}–{q[2]:.3g}]"
                                              for q in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a train.fitting.segmentation output folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--logits", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "lesion_measures.md")
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    t0 = time.time()
    md = load_metadata(a.data)
    held = set(load_heldout(a.folds)["image_id"])
    md = md[md["image_id"].isin(set(load_folds(a.folds)["image_id"]) - held)].reset_index(drop=True)
    frame = md[["image_id", "lesion_id", "dx"]].merge(measure_all(a.data, md["image_id"], oof_outlines(a.run),
                                                                  InputSpec()), on="image_id")
    fusion = kind_rows(read_logits(a.logits), "fusion").set_index("image_id").loc[frame["image_id"], LOGIT_COLUMNS]
    value = added_value(frame, fusion.to_numpy(float), a.n_boot)
    helps = all(d["ci"][0] > 0 for k, d in value["difference"].items() if k in ("balanced_accuracy", "mel_auc"))
    result = {
        "command": f"python -m train.evaluation.lesion_measures --run {a.run}",
        "n_images": int(len(frame)), "n_not_found": int((~frame["found"]).sum()),
        "reference": reference(frame), "auc_mel_vs_nv": measure_aucs(frame, a.n_boot), "added_value": value,
        "decision": ("the measures raise balanced accuracy and melanoma AUC out-of-fold: worth a fusion input"
                     if helps else "no clear gain out-of-fold, so the measures stay out of the model: they are "
                     "shown for the clinician to check, beside the archive's reference"),
        "seconds": round(time.time() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.out.write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
