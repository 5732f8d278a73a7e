"""Out-of-fold melanoma errors: which melanomas the ensembles miss, where, and what they call melanoma.

    python -m train.evaluation.melanoma_errors [--data DIR] [--oof reports/oof_logits.csv]
        [--folds train/splits/ham10000_folds.csv] [--weights weights] [--out reports/melanoma_errors.md]
        [--n-boot 300]

Research for the next recipe, from reports/oof_logits.csv: every shared image scored by the
member of its fold (which never saw its lesion), calibrated with the manifest's temperature
(softmax(logits / T)). Melanoma is missed at the top class (argmax is not mel) or at the 90%
specificity operating point (one threshold on p(mel), chosen on all out-of-fold images, giving
90% specificity among non-melanomas). Subgroups (site, age band, sex, dx_type, single- vs
multi-image lesion) keep that one threshold. Every 95% CI resamples whole lesions; all groups,
kinds and differences share the same resamples, so differences (group minus the rest, fusion
minus image-only, multi minus single) are paired. Lever probes refit small models on the
out-of-fold logits, cross-fitted over the folds (fit on four, score the fifth). Writes OUT (.md)
and OUT with .json: the numbers first, the Markdown drawn from them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest
from lesion_app.classifier.metadata import AgeScaler, encode_frame
from lesion_app.classifier.vocab import CLASSES, SITES
from lesion_app.evidence.clinical_report import AGE_BANDS, age_band
from train import REPO
from train.data.dataset import DEFAULT_DATA, labels, load_metadata
from train.data.logits import kind_logits, read_logits
from train.data.splits import DEFAULT_FOLDS, load_folds
from train.evaluation.metrics import MEL, class_aucs, softmax
from train.evaluation.stats import (auc_and_draws, interval, paired_bootstrap, recall_and_draws, resample_counts,
                                    sensitivity_at_specificity, share_and_draws)

SPECIFICITY = 0.90
NV, BKL = CLASSES.index("nv"), CLASSES.index("bkl")
FACTORS = {"site": "localization", "age_band": "age_band", "sex": "sex", "dx_type": "dx_type",
           "lesion_images": "lesion_images"}
MIN_MEL_AUC = 5      # melanomas (and non-melanomas) a group needs for an AUC
MIN_MEL_VS_REST = 20  # ... and for the group-minus-rest comparison
N_WORST = 15


def _mean(x) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _mel_auc(y, probs) -> float:
    return class_aucs(y, probs)[MEL]


def _binary_auc(y_binary, score) -> float:
    return float(roc_auc_score(y_binary, score))


def _binary_sens(y_binary, score) -> float:
    return sensitivity_at_specificity(y_binary, score, SPECIFICITY)["sensitivity"]


# ----------------------------------------------------------------------------- the frame

def scored_frame(md: pd.DataFrame, frame: pd.DataFrame, folds: pd.DataFrame | None = None) -> pd.DataFrame:
    """The metadata rows of the scored images (metadata order), with age_band, the lesion's image
    count (lesion_images: 'single' or 'multi'), and fold (the folds file's, checked against the
    logits file's)."""
    ids = frame.drop_duplicates("image_id").set_index("image_id")["fold"]
    df = md[md["image_id"].isin(ids.index)].reset_index(drop=True)
    df["age_band"] = df["age"].map(age_band)
    n = df.groupby("lesion_id")["image_id"].transform("size")
    df["n_lesion_images"] = n
    df["lesion_images"] = np.where(n >= 2, "multi", "single")
    df["fold"] = ids.loc[df["image_id"]].to_numpy()
    if folds is not None:
        fold_file = folds.set_index("image_id")["fold"].reindex(df["image_id"]).to_numpy()
        if not np.array_equal(fold_file, df["fold"].to_numpy()):
            raise ValueError("the logits file's folds disagree with the folds file")
    return df


# ----------------------------------------------------------------------------- the questions

def missed_melanomas(df, y, P, W, thresholds) -> dict:
    """Q1: which classes take the missed melanomas, at the top class and at the operating point."""
    mel = y == MEL
    out = {}
    for k, p in P.items():
        pred, pm = p.argmax(1), p[:, MEL]
        second = np.argsort(-p, 1)[:, 1]
        top_miss = mel & (pred != MEL)
        op_miss = mel & (pm < thresholds[k])
        r = {"n_mel": int(mel.sum()), "n_mel_lesions": int(df.loc[mel, "lesion_id"].nunique())}
        for name, miss in (("top_class", top_miss), ("operating_point", op_miss)):
            taken = {}
            for c in np.argsort(-np.bincount(pred[miss], minlength=len(CLASSES))):
                count = int((miss & (pred == c)).sum())
                if count:
                    est, draws = share_and_draws(pred == c, miss, W)
                    taken[CLASSES[c]] = {"n": count, "share": interval(est, draws)}
            r[name] = {"n_missed": int(miss.sum()), "missed_share": interval(*share_and_draws(miss, mel, W)),
                       "taken_by": taken,
                       "p_mel_of_missed_quartiles": [float(q) for q in np.quantile(pm[miss], [0.25, 0.5, 0.75])]
                       if miss.any() else None}
        r["top_class"]["mel_second_choice_share"] = float((second[top_miss] == MEL).mean()) \
            if top_miss.any() else None
        r["operating_point"]["threshold"] = float(thresholds[k])
        r["operating_point"]["top_class_mel_but_below_threshold"] = int((op_miss & (pred == MEL)).sum())
        # Lesion level: a lesion is missed when every one of its images is.
        by_lesion = pd.DataFrame({"miss": op_miss[mel], "lesion": df.loc[mel, "lesion_id"].to_numpy()}) \
            .groupby("lesion")["miss"].agg(["all", "any", "size"])
        several = by_lesion["size"] >= 2
        r["operating_point"]["lesions_missed"] = {
            "single_image": int((by_lesion["all"] & ~several).sum()),
            "multi_image_all_images": int((by_lesion["all"] & several).sum()),
            "multi_image_some_images": int((by_lesion["any"] & ~by_lesion["all"]).sum()),
            "multi_image_lesions": int(several.sum())}
        worst = np.flatnonzero(op_miss)[np.argsort(pm[op_miss])[:N_WORST]]
        r["operating_point"]["most_confident_misses"] = [
            {"image_id": df.at[i, "image_id"], "lesion_id": df.at[i, "lesion_id"], "site": df.at[i, "localization"],
             "age": None if pd.isna(df.at[i, "age"]) else float(df.at[i, "age"]), "sex": df.at[i, "sex"],
             "top_class": CLASSES[pred[i]], "p_top": float(p[i, pred[i]]), "p_mel": float(pm[i])} for i in worst]
        out[k] = r
    if {"fusion", "image_only"} <= set(P):
        miss = {k: mel & (P[k][:, MEL] < thresholds[k]) for k in ("fusion", "image_only")}
        out["overlap_at_operating_point"] = {
            "both": int((miss["fusion"] & miss["image_only"]).sum()),
            "fusion_only": int((miss["fusion"] & ~miss["image_only"]).sum()),
            "image_only_only": int((~miss["fusion"] & miss["image_only"]).sum())}
    return out


def subgroups(df, y, P, W, thresholds) -> dict:
    """Q2 and Q4: per group of each factor, melanoma recall (top class), sensitivity at the
    global operating point and melanoma AUC against the group's other images; the group minus
    the rest of the data; fusion minus image-only."""
    mel = y == MEL
    kinds = list(P)
    out = {}
    for factor, col in FACTORS.items():
        rows = []
        values = df[col].astype(str).to_numpy()
        order = [b for _, _, b in AGE_BANDS] + ["missing"] if factor == "age_band" else \
            list(pd.Series(values).value_counts().index)
        for g in [v for v in order if v in set(values)]:
            m = values == g
            row = {"group": g, "n": int(m.sum()), "n_mel": int((m & mel).sum()),
                   "n_mel_lesions": int(df.loc[m & mel, "lesion_id"].nunique()),
                   "n_non_mel": int((m & ~mel).sum())}
            auc_draws = {}
            own = (m & mel) | ~mel     # the group's melanomas against every non-melanoma
            others = (~m & mel) | ~mel
            for k in kinds:
                p = P[k]
                pm, pred = p[:, MEL], p.argmax(1)
                rec, rec_d = recall_and_draws(mel, pred == MEL, m, W)
                sens, sens_d = recall_and_draws(mel, pm >= thresholds[k], m, W)
                fpr, fpr_d = recall_and_draws(~mel, pm >= thresholds[k], m, W)
                auc, auc_d = auc_and_draws(mel, pm, m, W, MIN_MEL_AUC)
                auc_all, auc_all_d = auc_and_draws(mel, pm, own, W, MIN_MEL_AUC)
                auc_draws[k] = auc_d
                taken = np.bincount(pred[m & mel & (pred != MEL)], minlength=len(CLASSES))
                r = {"recall": interval(rec, rec_d), "sensitivity_at_op": interval(sens, sens_d),
                     "false_mel_rate_at_op": interval(fpr, fpr_d), "auc_within_group": interval(auc, auc_d),
                     "auc_vs_all_non_mel": interval(auc_all, auc_all_d),
                     "top_class_misses_taken_by": {CLASSES[c]: int(taken[c]) for c in np.argsort(-taken) if taken[c]}}
                if row["n_mel"] >= MIN_MEL_VS_REST and (mel & ~m).sum() >= MIN_MEL_VS_REST:
                    rest_rec, rest_rec_d = recall_and_draws(mel, pred == MEL, ~m, W)
                    rest_auc, rest_auc_d = auc_and_draws(mel, pm, ~m, W, MIN_MEL_AUC)
                    rest_all, rest_all_d = auc_and_draws(mel, pm, others, W, MIN_MEL_AUC)
                    r["recall_minus_rest"] = interval(rec - rest_rec, rec_d - rest_rec_d)
                    r["auc_within_group_minus_rest"] = interval(auc - rest_auc, auc_d - rest_auc_d)
                    r["auc_vs_all_non_mel_minus_rest"] = interval(auc_all - rest_all, auc_all_d - rest_all_d)
                row[k] = r
            if {"fusion", "image_only"} <= set(kinds) and row["fusion"]["auc_within_group"][0] is not None:
                row["auc_within_group_fusion_minus_image_only"] = interval(
                    row["fusion"]["auc_within_group"][0] - row["image_only"]["auc_within_group"][0],
                    auc_draws["fusion"] - auc_draws["image_only"])
            rows.append(row)
        out[factor] = rows
    return out


def pairwise(df, y, P, W) -> dict:
    """Melanoma against one kind of negative at a time: AUC of p(mel) on melanomas plus that
    class's images (nevi also split by how they were confirmed)."""
    mel = y == MEL
    negatives = {CLASSES[c]: y == c for c in range(len(CLASSES)) if c != MEL}
    for t in ("histo", "follow_up", "consensus"):
        negatives[f"nv ({t})"] = (y == NV) & (df["dx_type"].to_numpy() == t)
    out = {}
    for k, p in P.items():
        out[k] = {name: {"n": int(neg.sum()),
                         "auc": interval(*auc_and_draws(mel, p[:, MEL], mel | neg, W, MIN_MEL_AUC))}
                  for name, neg in negatives.items()}
    return out


def false_melanomas(df, y, P, thresholds) -> dict:
    """Q3: the non-melanomas called melanoma (top class, and at the operating point), by true class."""
    mel = y == MEL
    out = {}
    for k, p in P.items():
        r = {}
        for name, called in (("top_class", p.argmax(1) == MEL), ("operating_point", p[:, MEL] >= thresholds[k])):
            fm = called & ~mel
            rows = [{"dx": CLASSES[c], "n": int((fm & (y == c)).sum()), "share_of_false_mel":
                     float((fm & (y == c)).sum() / max(fm.sum(), 1)), "rate": _mean(fm[y == c])}
                    for c in range(len(CLASSES)) if c != MEL]
            for t in ("histo", "follow_up", "consensus"):
                nvt = (y == NV) & (df["dx_type"].to_numpy() == t)
                rows.append({"dx": f"nv ({t})", "n": int((fm & nvt).sum()), "share_of_false_mel":
                             float((fm & nvt).sum() / max(fm.sum(), 1)), "rate": _mean(fm[nvt])})
            r[name] = {"n_false_mel": int(fm.sum()), "n_called_mel": int(called.sum()),
                       "precision": float((called & mel).sum() / max(called.sum(), 1)),
                       "by_true_class": sorted(rows, key=lambda d: (d["dx"].startswith("nv ("), -d["n"]))}
        out[k] = r
    return out


def _stack_features(Z: np.ndarray, df: pd.DataFrame, with_metadata: bool) -> np.ndarray:
    """A kind's logits; with metadata also the app's age/sex/site encoding and site x and
    age-band x (mel, nv, bkl) logit interactions."""
    if not with_metadata:
        return Z
    meta = encode_frame(df, AgeScaler.fit(df["age"]))
    site = np.stack([(df["localization"] == s).to_numpy(float) for s in SITES], 1)
    bands = np.stack([(df["age_band"] == b).to_numpy(float) for _, _, b in AGE_BANDS], 1)
    key = Z[:, [MEL, NV, BKL]]
    inter = [(g[:, :, None] * key[:, None, :]).reshape(len(Z), -1) for g in (site, bands)]
    return np.hstack([Z, meta, *inter])


def cross_fitted_mel_score(X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """P(mel) of a standardised logistic regression (mel vs rest) fitted on the other folds."""
    out = np.zeros(len(y))
    for f in np.unique(folds):
        test = folds == f
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        with threadpool_limits(1):   # a small fit: threads only contend on a shared 2-core machine
            model.fit(X[~test], y[~test] == MEL)
        out[test] = model.predict_proba(X[test])[:, 1]
    return out


def probes(df, y, Z, T, groups, n_boot, seed) -> dict:
    """Lever probes that need no training of the network, paired against the shipped fusion
    p(mel): (a) the mean of both kinds' logits; (b) a mel-vs-rest logistic regression on the
    fusion logits (how much a melanoma-specific decision on the same features could give);
    (c) the same plus age, sex, site and site/age-band x logit interactions (site-aware)."""
    if "fusion" not in Z:
        return {}
    yb = y == MEL
    base = softmax(Z["fusion"], T["fusion"])[:, MEL]
    scores = {}
    if "image_only" in Z:
        scores["mean_of_kinds_logits"] = softmax((Z["fusion"] + Z["image_only"]) / 2,
                                                 (T["fusion"] + T["image_only"]) / 2)[:, MEL]
    folds = df["fold"].to_numpy()
    scores["stack_fusion_logits"] = cross_fitted_mel_score(_stack_features(Z["fusion"], df, False), y, folds)
    scores["stack_fusion_logits_site_age_sex"] = cross_fitted_mel_score(
        _stack_features(Z["fusion"], df, True), y, folds)
    out = {"fusion": {"auc": _binary_auc(yb, base), "sensitivity_at_op": _binary_sens(yb, base)}}
    for name, s in scores.items():
        out[name] = {"auc": _binary_auc(yb, s), "sensitivity_at_op": _binary_sens(yb, s),
                     "auc_minus_fusion": paired_bootstrap(_binary_auc, yb, base, s, groups, n_boot, seed),
                     "sensitivity_minus_fusion": paired_bootstrap(_binary_sens, yb, base, s, groups, n_boot, seed)}
    if {"stack_fusion_logits", "stack_fusion_logits_site_age_sex"} <= set(scores):
        out["site_age_sex_minus_logits_only"] = paired_bootstrap(
            _binary_auc, yb, scores["stack_fusion_logits"], scores["stack_fusion_logits_site_age_sex"],
            groups, n_boot, seed)
    return out


def study(md: pd.DataFrame, frame: pd.DataFrame, temperatures: dict, folds: pd.DataFrame | None = None,
          n_boot: int = 300, seed: int = 0) -> dict:
    """All the numbers, from a metadata frame, an out-of-fold logits frame and each kind's temperature."""
    df = scored_frame(md, frame, folds)
    y, groups = labels(df), df["lesion_id"].to_numpy()
    kinds = [k for k in MODEL_KEYS if k in set(frame["model"])]
    Z = {k: kind_logits(frame, k, df["image_id"]) for k in kinds}
    P = {k: softmax(Z[k], temperatures[k]) for k in kinds}
    W = resample_counts(y, groups, n_boot, seed).astype(float)
    ops = {k: sensitivity_at_specificity(y == MEL, P[k][:, MEL], SPECIFICITY) for k in kinds}
    thresholds = {k: ops[k]["threshold"] for k in kinds}
    mel = y == MEL
    overall = {}
    for k in kinds:
        fold_auc = {int(f): _mel_auc(y[df["fold"] == f], P[k][df["fold"] == f]) for f in sorted(df["fold"].unique())}
        overall[k] = {"temperature": float(temperatures[k]),
                      "mel_recall": interval(*recall_and_draws(mel, P[k].argmax(1) == MEL, np.ones(len(y), bool), W)),
                      "mel_auc": interval(*auc_and_draws(mel, P[k][:, MEL], np.ones(len(y), bool), W, MIN_MEL_AUC)),
                      "operating_point": ops[k], "mel_auc_by_fold": fold_auc}
    if {"fusion", "image_only"} <= set(kinds):
        everything = np.ones(len(y), bool)
        (ef, df_), (ei, di) = (auc_and_draws(mel, P[k][:, MEL], everything, W, MIN_MEL_AUC)
                               for k in ("fusion", "image_only"))
        overall["mel_auc_fusion_minus_image_only"] = interval(ef - ei, df_ - di)
    return {"protocol": " ".join(__doc__.split("\n\n")[2].split()), "n_images": len(df),
            "n_lesions": int(df["lesion_id"].nunique()), "n_mel": int(mel.sum()),
            "n_mel_lesions": int(df.loc[mel, "lesion_id"].nunique()), "n_boot": len(W),
            "specificity": SPECIFICITY, "overall": overall,
            "missed": missed_melanomas(df, y, P, W, thresholds),
            "subgroups": subgroups(df, y, P, W, thresholds),
            "pairwise_auc": pairwise(df, y, P, W),
            "false_melanomas": false_melanomas(df, y, P, thresholds),
            "probes": probes(df, y, Z, temperatures, groups, n_boot, seed)}


# ----------------------------------------------------------------------------- Markdown

def _c(v, signed=False) -> str:
    """[est, lo, hi] -> '0.123 [0.100, 0.150]' ('-' when absent)."""
    if v is None or v[0] is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(v[0]) + ("" if v[1] is None else f" [{f.format(v[1])}, {f.format(v[2])}]")


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _d(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def _excludes_zero(v) -> bool:
    return v is not None and v[1] is not None and (v[1] > 0 or v[2] < 0)


SUBGROUP_LEGEND = (
    "Recall: top class is mel (in brackets, the classes that take the top-class misses); sensitivity: "
    "p(mel) at or above the global 90%-specificity threshold; AUC within group: the group's melanomas "
    "against the group's other images (it depends on which negatives the group has: follow-up nevi are "
    "easy, histology-confirmed nevi hard); AUC vs all non-mel: the group's melanomas against every "
    "non-melanoma image (the same negatives for every group, so it compares how well each group's "
    "melanomas are ranked); − rest: the group minus all other groups together, paired; false-mel rate: "
    "the share of the group's non-melanomas at or above the threshold. A '–' is too few melanomas "
    f"(under {MIN_MEL_AUC} for an AUC, under {MIN_MEL_VS_REST} for a difference).")
SUBGROUP_TITLES = {"site": "2a. By body site", "age_band": "2b. By age band", "sex": "2c. By sex",
                   "dx_type": "2d. By how the diagnosis was confirmed (dx_type)",
                   "lesion_images": "4. Lesions with one image vs several (image-level)"}


def _subgroup_table(r: dict, factor: str, kinds: list) -> list[str]:
    rows, titles = r["subgroups"][factor], SUBGROUP_TITLES
    L = ["", f"{'##' if factor == 'lesion_images' else '###'} {titles[factor]}", "",
          ("| group | images | mel (lesions) | kind | recall (misses taken by) | recall − rest | sensitivity at op. | "
           "AUC within group | − rest | AUC vs all non-mel | − rest | false-mel rate at op. |"),
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for i, k in enumerate(kinds):
            g = row[k]
            head = f"| {row['group']} | {row['n']} | {row['n_mel']} ({row['n_mel_lesions']}) " if i == 0 else "| | | "
            taken = ", ".join(f"{c} {n}" for c, n in list(g["top_class_misses_taken_by"].items())[:3])
            L.append(head + f"| {k} | {_c(g['recall'])}{f' ({taken})' if taken else ''} | "
                     f"{_c(g.get('recall_minus_rest'), True)} | {_c(g['sensitivity_at_op'])} | "
                     f"{_c(g['auc_within_group'])} | {_c(g.get('auc_within_group_minus_rest'), True)} | "
                     f"{_c(g['auc_vs_all_non_mel'])} | {_c(g.get('auc_vs_all_non_mel_minus_rest'), True)} | "
                     f"{_c(g['false_mel_rate_at_op'])} |")
    diffs = [(row["group"], row["auc_within_group_fusion_minus_image_only"]) for row in rows
             if row.get("auc_within_group_fusion_minus_image_only")
             and row["auc_within_group_fusion_minus_image_only"][1] is not None]
    if diffs:
        L += ["", "Melanoma AUC within group, fusion minus image-only: "
              + "; ".join(f"{g} {_c(v, True)}" for g, v in diffs) + "."]
    return L


def markdown(r: dict) -> str:
    kinds = [k for k in r["overall"] if k in MODEL_KEYS]
    L = ["# Melanoma errors, out-of-fold", "", r["protocol"], "",
         (f"{r['n_images']} images of {r['n_lesions']} lesions; {r['n_mel']} melanoma images of "
          f"{r['n_mel_lesions']} lesions. {r['n_boot']} lesion resamples. Fusion first, image-only beside it."), "",
         ("| kind | mel recall (top class) | mel AUC | threshold on p(mel) at 90% spec. | sensitivity there | "
          "mel AUC per fold |"), "|---|---|---|---|---|---|"]
    for k in kinds:
        o = r["overall"][k]
        L.append(f"| {k} | {_c(o['mel_recall'])} | {_c(o['mel_auc'])} | {o['operating_point']['threshold']:.3f} | "
                 f"{o['operating_point']['sensitivity']:.3f} | "
                 + ", ".join(f"{a:.3f}" for a in o["mel_auc_by_fold"].values()) + " |")
    if "mel_auc_fusion_minus_image_only" in r["overall"]:
        L += ["", "Melanoma AUC, fusion minus image-only (paired): "
              + _c(r["overall"]["mel_auc_fusion_minus_image_only"], True) + "."]

    L += ["", "## 1. Missed melanomas: which classes take them", ""]
    for name, title in (("top_class", "top class not mel"), ("operating_point", "p(mel) below the 90%-specificity threshold")):
        L += [f"**{title}** (share of the missed images, 95% CI):", "",
              "| kind | missed | " + " | ".join(["taken by " + c for c in ("nv", "bkl", "akiec", "bcc", "df", "vasc", "mel")])
              + " |", "|---|---|" + "---|" * 7]
        for k in kinds:
            m = r["missed"][k][name]
            cells = [f"{m['taken_by'][c]['n']}: {_c(m['taken_by'][c]['share'])}" if c in m["taken_by"] else "0"
                     for c in ("nv", "bkl", "akiec", "bcc", "df", "vasc", "mel")]
            L.append(f"| {k} | {m['n_missed']} of {r['missed'][k]['n_mel']} ({_c(m['missed_share'])}) | "
                     + " | ".join(cells) + " |")
        L.append("")
    for k in kinds:
        m = r["missed"][k]
        op = m["operating_point"]
        q = op["p_mel_of_missed_quartiles"]
        L.append(f"- {k}: of the top-class misses, mel is the second choice in "
                 f"{m['top_class']['mel_second_choice_share']:.0%}; p(mel) of an operating-point miss: quartiles "
                 f"{q[0]:.3f}, {q[1]:.3f}, {q[2]:.3f} against the threshold {op['threshold']:.3f}. Lesions missed at the "
                 f"operating point: {op['lesions_missed']['single_image']} single-image melanomas; of the "
                 f"{op['lesions_missed']['multi_image_lesions']} multi-image melanomas, "
                 f"{op['lesions_missed']['multi_image_all_images']} in every image and "
                 f"{op['lesions_missed']['multi_image_some_images']} in some of their images only.")
    if "overlap_at_operating_point" in r["missed"]:
        o = r["missed"]["overlap_at_operating_point"]
        L.append(f"- Operating-point misses shared by both kinds: {o['both']}; fusion only {o['fusion_only']}; "
                 f"image-only only {o['image_only_only']}.")
    k0 = kinds[0]
    L += ["", f"The {N_WORST} most confident misses of {k0} at the operating point (lowest p(mel)):", "",
          "| image | lesion | site | age | sex | top class (p) | p(mel) |", "|---|---|---|---|---|---|---|"]
    for w in r["missed"][k0]["operating_point"]["most_confident_misses"]:
        L.append(f"| {w['image_id']} | {w['lesion_id']} | {w['site']} | "
                 f"{'–' if w['age'] is None else int(w['age'])} | {w['sex']} | {w['top_class']} ({w['p_top']:.2f}) | "
                 f"{w['p_mel']:.3f} |")

    L += ["", "## 2. Melanoma by site, age, sex and confirmation", "", SUBGROUP_LEGEND]
    for factor in ("site", "age_band", "sex", "dx_type"):
        L += _subgroup_table(r, factor, kinds)
    L += ["", "### 2e. Melanoma against one class at a time (AUC of p(mel))", "",
          "| negatives | images | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for name in r["pairwise_auc"][k0]:
        L.append(f"| {name} | {r['pairwise_auc'][k0][name]['n']} | "
                 + " | ".join(_c(r["pairwise_auc"][k][name]["auc"]) for k in kinds) + " |")

    L += ["", "## 3. False melanomas: what is called melanoma", ""]
    for name, title in (("top_class", "top class mel"), ("operating_point", "p(mel) at or above the threshold")):
        L += [f"**{title}**: " + "; ".join(
              f"{k} {r['false_melanomas'][k][name]['n_false_mel']} false of {r['false_melanomas'][k][name]['n_called_mel']} "
              f"called (precision {r['false_melanomas'][k][name]['precision']:.3f})" for k in kinds), "",
              "| true class | " + " | ".join(f"{k}: n (share of false mel, rate in class)" for k in kinds) + " |",
              "|---|" + "---|" * len(kinds)]
        for i, row in enumerate(r["false_melanomas"][k0][name]["by_true_class"]):
            cells = []
            for k in kinds:
                d = r["false_melanomas"][k][name]["by_true_class"][i]
                cells.append(f"{d['n']} ({d['share_of_false_mel']:.0%}, {_f(d['rate'])})")
            L.append(f"| {row['dx']} | " + " | ".join(cells) + " |")
        L.append("")

    L += _subgroup_table(r, "lesion_images", kinds)
    L += ["", "Columns as in section 2."]

    p = r["probes"]
    if p:
        L += ["## 5. Lever probes on the out-of-fold logits (no network retrained)", "",
              "Paired against the shipped fusion p(mel) on the same lesion resamples.", "",
              "| score | mel AUC | AUC − fusion | sensitivity at 90% spec. | sensitivity − fusion |",
              "|---|---|---|---|---|",
              f"| fusion (shipped) | {p['fusion']['auc']:.3f} | | {p['fusion']['sensitivity_at_op']:.3f} | |"]
        names = {"mean_of_kinds_logits": "mean of fusion and image-only logits",
                 "stack_fusion_logits": "mel-vs-rest regression on the fusion logits",
                 "stack_fusion_logits_site_age_sex": "… plus age, sex, site and site/age x logit terms"}
        for key, label in names.items():
            if key in p:
                L.append(f"| {label} | {p[key]['auc']:.3f} | {_d(p[key]['auc_minus_fusion'])} | "
                         f"{p[key]['sensitivity_at_op']:.3f} | {_d(p[key]['sensitivity_minus_fusion'])} |")
        if "site_age_sex_minus_logits_only" in p:
            L += ["", "Site, age and sex terms on top of the logits-only regression: mel AUC "
                  + _d(p["site_age_sex_minus_logits_only"]) + "."]

    L += ["", "## Reading", ""] + findings(r) + [
        ("- Not measurable from these logits: test-time views beyond the 4 flips, a head that also pools the "
         "16x12 stage, and any loss or sampler change; each needs the network retrained or rerun. The probes "
         "bound only what a new decision on the existing outputs could give.")]
    return "\n".join(L) + "\n"


def _groups(rows: list, kind: str, key: str, sign: int) -> str:
    """The groups whose difference `key` has the given sign with a 95% CI excluding zero."""
    return ", ".join(row["group"] for row in rows if kind in row and _excludes_zero(row[kind].get(key))
                     and np.sign(row[kind][key][0]) == sign) or "no group"


def findings(r: dict) -> list[str]:
    """Short statements drawn from the numbers (which CIs exclude zero); the judgement on levers
    that the logits cannot measure is left to the reader."""
    out = []
    k = "fusion" if "fusion" in r["overall"] else next(k for k in r["overall"] if k in MODEL_KEYS)
    m = r["missed"][k]
    tb = m["top_class"]["taken_by"]
    big = sorted(tb, key=lambda c: -tb[c]["n"])[:2]
    out.append(f"- {k}: {m['top_class']['n_missed']} of {m['n_mel']} melanoma images are missed at the top class; "
               + " and ".join(f"{c} takes {tb[c]['n']} ({tb[c]['share'][0]:.0%})" for c in big) + ".")
    for factor, rows in r["subgroups"].items():
        out.append(f"- {factor}: below the rest (95% CI excludes 0) in top-class recall: "
                   f"{_groups(rows, k, 'recall_minus_rest', -1)}; in AUC vs all non-mel: "
                   f"{_groups(rows, k, 'auc_vs_all_non_mel_minus_rest', -1)}; in AUC within group: "
                   f"{_groups(rows, k, 'auc_within_group_minus_rest', -1)}. Above it in AUC vs all non-mel: "
                   f"{_groups(rows, k, 'auc_vs_all_non_mel_minus_rest', 1)}.")
    p = r["probes"]
    for key in ("mean_of_kinds_logits", "stack_fusion_logits", "stack_fusion_logits_site_age_sex"):
        if key in p:
            d = p[key]["auc_minus_fusion"]
            verdict = "CI excludes 0" if d["ci"][0] > 0 or d["ci"][1] < 0 else "CI includes 0"
            out.append(f"- probe {key}: mel AUC {_d(d)} against the shipped fusion ({verdict}).")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--oof", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "melanoma_errors.md")
    p.add_argument("--n-boot", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.oof.is_file():
        print(f"error: {a.oof} is missing: run python -m train.fitting.cv first", file=sys.stderr)
        return 2
    manifest = Manifest.load(a.weights)
    frame = read_logits(a.oof)
    temperatures = {k: manifest.temperature(k) for k in MODEL_KEYS if k in set(frame["model"])}
    folds = load_folds(a.folds) if a.folds.is_file() else None
    r = study(load_metadata(a.data), frame, temperatures, folds, a.n_boot, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=1, allow_nan=False))
    a.out.with_suffix(".md").write_text(markdown(r))
    print(f"wrote {a.out.with_suffix('.md')} and {a.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
