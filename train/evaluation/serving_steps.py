"""Which input steps at serving carry the shipped models to other clinics' images (issue 36).

    python -m train.evaluation.serving_steps --out reports/serving_steps [--steps scale fov colour]
                                             [--other DIR --aspect 4:3] [--weights DIR]

A step is a change of the input spec (lesion_app.classifier.preprocess.InputSpec) that needs no
training: `scale` brings wider inputs down to the training images' 200 px width, `fov` crops a
dermatoscope's black frame, `colour` applies Shades-of-Gray colour constancy (p = 6). Each step,
and all of them together, is scored paired against today's input path with the shipped weights:

- on the other clinics' folder (default ../shared/data/isic2017, un-squashed to 4:3; no model
  trained on it): the fusion ensemble as the app runs it, over the classes present;
- on HAM10000 out-of-fold: each image scored by the fusion member that did not train on its fold
  (the shipped members are the cross-validation members, fusion_fold{k} trained without fold k).
  Only the images whose model input the step changes are run again, in both arms; the others keep
  their logits from reports/oof_logits.csv in both arms, so the paired difference is exact.

Balanced accuracy and melanoma AUC get paired 95% CIs (1,000 resamples: lesions on HAM10000,
images on the other folder, which gives no lesion ids). Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.preprocess import InputSpec, fit_to_aspect, to_tensor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import WEIGHTS_DIR
from train import REPO
from train.data.dataset import DEFAULT_DATA, labels, load_image, load_metadata
from train.data.splits import DEFAULT_FOLDS, load_folds
from train.data.dataset import folder_image, parse_aspect
from train.evaluation.metrics import balanced_accuracy, mel_auc, mel_vs_nv_auc, softmax
from train.evaluation.stats import paired_bootstrap

OTHER = REPO.parent / "shared" / "data" / "isic2017"
STEPS = {"scale": {"source_width": 200}, "fov": {"field_of_view": True}, "colour": {"colour_constancy": 6.0}}
KIND = "fusion"
FIGURES = {"balanced_accuracy": balanced_accuracy, "mel_auc": mel_auc}


def member_logits(predictor: Predictor, images, metadata, spec: InputSpec, batch: int = 16) -> np.ndarray:
    """(members, N, classes) fusion logits, each member's mean over the flip views, of images
    preprocessed with spec (not the predictor's own)."""
    ens = predictor.models[KIND]
    out = []
    for s in tqdm(range(0, len(images), batch), desc="scoring", mininterval=10, disable=None):
        x = torch.stack([to_tensor(im, spec) for im in images[s:s + batch]])
        meta = torch.stack([predictor.encode(*m) for m in metadata[s:s + batch]])
        with predictor._lock, torch.inference_mode():
            low = predictor.trunk_features(x)                           # (B * V, C, h, w): the flip views
            b, v = len(x), len(low) // len(x)
            z = ens.member_logits(ens.pooled(low), meta.to(predictor.device).repeat_interleave(v, 0))
            out.append(z.view(len(ens.members), b, v, -1).mean(2).cpu().numpy())
    return np.concatenate(out, axis=1)


def changed(images, base: InputSpec, spec: InputSpec) -> np.ndarray:
    """Which images' model input (before normalisation) differs between the two specs; colour
    constancy changes every image."""
    if spec.colour_constancy != base.colour_constancy:
        return np.ones(len(images), bool)
    return np.array([not np.array_equal(np.asarray(fit_to_aspect(im, base)), np.asarray(fit_to_aspect(im, spec)))
                     for im in images])


def paired(y, probs_a, probs_b, groups, metric) -> dict:
    return paired_bootstrap(metric, y, probs_a, probs_b, groups, n_boot=1000, seed=0)


def figures(y, probs) -> dict:
    return {"balanced_accuracy": balanced_accuracy(y, probs), "mel_auc": mel_auc(y, probs),
            "mel_vs_nv_auc": mel_vs_nv_auc(y, probs)}


def score_other(a, predictor: Predictor, base: InputSpec, arms: dict, temperature: float) -> dict:
    """Each arm against today's input path on the other clinic's folder, the ensemble as the app runs it."""
    other = load_metadata(a.other)
    aspect = parse_aspect(a.aspect)
    images = [folder_image(a.other, i, aspect) for i in other["image_id"]]
    meta = list(zip(other["age"], other["sex"], other["localization"]))
    y_other = labels(other)
    logits = {"base": member_logits(predictor, images, meta, base).mean(0)}
    for name, spec in arms.items():
        logits[name] = member_logits(predictor, images, meta, spec).mean(0)
    probs = {k: softmax(v, temperature) for k, v in logits.items()}
    groups = np.arange(len(other))
    return {"folder": str(a.other), "n": int(len(other)), "base": figures(y_other, probs["base"]),
            "arms": {name: {**figures(y_other, probs[name]), "changed": int(changed(images, base, arms[name]).sum()),
                            **{f"{k}_difference": paired(y_other, probs["base"], probs[name], groups, m)
                               for k, m in FIGURES.items()}}
                     for name in arms}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--oof", type=Path, default=REPO / "reports" / "oof_logits.csv")
    p.add_argument("--other", type=Path, default=OTHER)
    p.add_argument("--aspect", default="4:3")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-ham", action="store_true", help="score the other folder only")
    p.add_argument("--skip-other", action="store_true", help="score HAM10000 out-of-fold only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    predictor = Predictor(a.weights, with_ood=False)
    base = predictor.spec
    arms = {s: dataclasses.replace(base, **STEPS[s]) for s in a.steps}
    if len(a.steps) > 1:
        arms["+".join(a.steps)] = dataclasses.replace(base, **{k: v for s in a.steps for k, v in STEPS[s].items()})
    temperature = predictor.temperature[KIND]
    result = {"weights": predictor.model_info, "steps": {k: dataclasses.asdict(v) for k, v in arms.items()},
              "base": dataclasses.asdict(base)}

    # Other clinics: the ensemble as the app runs it.
    if not a.skip_other:
        result["other"] = score_other(a, predictor, base, arms, temperature)
        print(json.dumps(result["other"], indent=1))

    if not a.skip_ham:
        md = load_metadata(a.data)
        folds = load_folds(a.folds)[["image_id", "fold"]]
        oof = pd.read_csv(a.oof)
        oof = oof[oof["model"] == KIND].set_index("image_id")
        df = md.merge(folds, on="image_id")
        y = labels(df)
        stored = oof.loc[df["image_id"], [f"logit_{c}" for c in CLASSES]].to_numpy()
        ham_images = [load_image(a.data, i) for i in df["image_id"]]
        ham_meta = list(zip(df["age"], df["sex"], df["localization"]))
        fold = df["fold"].to_numpy()
        result["ham_oof"] = {"n": int(len(df)), "arms": {}}
        for name, spec in arms.items():
            rows = np.flatnonzero(changed(ham_images, base, spec))
            arm_a, arm_b = stored.copy(), stored.copy()
            if len(rows):
                sub = lambda s: member_logits(predictor, [ham_images[i] for i in rows],   # noqa: E731
                                              [ham_meta[i] for i in rows], s)[fold[rows], np.arange(len(rows))]
                arm_a[rows], arm_b[rows] = sub(base), sub(spec)
            pa, pb = softmax(arm_a), softmax(arm_b)
            result["ham_oof"]["arms"][name] = {
                "changed": int(len(rows)), "base": figures(y, pa), **figures(y, pb),
                **{f"{k}_difference": paired(y, pa, pb, df["lesion_id"].to_numpy(), m) for k, m in FIGURES.items()}}
            print(name, json.dumps(result["ham_oof"]["arms"][name]))
    result["seconds"] = round(time.time() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.out.with_suffix(".md").write_text(render(result))
    print(f"wrote {a.out.with_suffix('.json')} and {a.out.with_suffix('.md')} in {result['seconds']:.0f} s")
    return 0


def _diff(d: dict) -> str:
    lo, hi = d["ci"]
    return f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def render(r: dict) -> str:
    lines = ["# Input steps at serving, shipped weights (train.evaluation.serving_steps)", ""]
    if "other" in r:
        o = r["other"]
        lines += [f"Other clinics: `{o['folder']}` ({o['n']} images, un-squashed to 4:3; fusion ensemble). "
                  f"Today's input path: balanced accuracy {o['base']['balanced_accuracy']:.3f}, melanoma AUC "
                  f"{o['base']['mel_auc']:.3f}, melanoma-vs-nevus AUC {o['base']['mel_vs_nv_auc']:.3f}.", "",
                  "| step | images changed | bal. acc. | difference | mel AUC | difference | mel-vs-nv AUC |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in o["arms"].items():
            lines.append(f"| {name} | {m['changed']} | {m['balanced_accuracy']:.3f} | "
                         f"{_diff(m['balanced_accuracy_difference'])} | {m['mel_auc']:.3f} | "
                         f"{_diff(m['mel_auc_difference'])} | {m['mel_vs_nv_auc']:.3f} |")
    if "ham_oof" in r:
        h = r["ham_oof"]
        lines += ["", f"HAM10000 out-of-fold ({h['n']} images; each scored by the fusion member that did not "
                  "train on its fold; unchanged images keep their stored logits in both arms):", "",
                  "| step | images changed | bal. acc. | difference | mel AUC | difference |", "|---|---|---|---|---|---|"]
        for name, m in h["arms"].items():
            lines.append(f"| {name} | {m['changed']} | {m['balanced_accuracy']:.3f} | "
                         f"{_diff(m['balanced_accuracy_difference'])} | {m['mel_auc']:.3f} | {_diff(m['mel_auc_difference'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
