"""Prints what a recipe would cost to serve: one full analysis through a bundle of its shape against the
shipped bundle, on the same image, timed in turns (issue 24's analysis budget, before a run finishes).

    python -m train.release.recipe_cost [--recipe tf_efficientnet_lite2:5] [--recipe tf_efficientnet_lite0:4]
        [--repeats 12]

A recipe is BACKBONE:SPLIT (SPLIT a block index, or whole_network). Its bundle is written by
train.release.bundle.ship into a temporary folder: 5 + 5 members of that shape at ImageNet weights
with seeded random heads (a member's cost does not depend on its training), and the shipped bundle's
OOD check, archive (with 5 members, which it embeds), segmenter and reader cases beside them: what
they answer is meaningless here, what they cost is not.
Medians of Predictor.analyze after two warm-up calls each. The machine is shared and noisy: read
the ratios, within one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest
from lesion_app.classifier.models import WHOLE_NETWORK, LesionClassifier, imagenet_state_dict
from lesion_app.files.image_input import load_upload
from train import REPO
from train.release import bundle

EXAMPLE = REPO / "lesion_app" / "examples" / "images" / "ISIC_0024394.jpg"
METADATA = (55, "male", "back")
HEADS = {"fusion": "concat", "image_only": "image_only"}


def parse_recipe(text: str) -> tuple[str, int | str]:
    arch, _, split = text.partition(":")
    if not arch or not split:
        raise argparse.ArgumentTypeError(f"{text!r}: a recipe is BACKBONE:SPLIT, e.g. tf_efficientnet_lite2:5")
    return arch, split if split == WHOLE_NETWORK else int(split)


def recipe_bundle(arch: str, split, out: Path, n_members: int = 5) -> Path:
    """A weights folder of this recipe's shape (see the module's docstring); returns it."""
    imagenet = {k: v for k, v in imagenet_state_dict(arch).items() if not k.startswith("classifier.")}
    run = out / "run"
    for kind in MODEL_KEYS:
        for fold in range(n_members):
            torch.manual_seed(fold)
            m = LesionClassifier(HEADS[kind], arch=arch, pretrained=False, split_block=split)
            m.backbone.load_state_dict(imagenet)
            d = run / f"{kind}_fold{fold}"
            d.mkdir(parents=True)
            save_file({k: (v.half() if v.is_floating_point() else v).contiguous()
                       for k, v in m.state_dict().items() if not m.is_lower_key(k)}, d / "member.safetensors")
            (d / "member.json").write_text(json.dumps({"kind": kind, "fold": fold, "split_block": split,
                                                       "arch": arch, "n_train": 0, "train_seconds": 0.0,
                                                       "oof_balanced_accuracy": 0.0}))
    weights = out / "weights"
    members, splits, trunk = bundle.ship(run, weights)
    base = Manifest.load(WEIGHTS_DIR)
    # The archive embeds every image-only member's features: it fits only as many members as shipped.
    drop = () if n_members == len(base.members("image_only")) else ("archive",)
    for key in ("ood", "archive", "segmentation", "reader_cases", "shift"):
        entry = getattr(base, key)
        if entry and key not in drop:
            shutil.copyfile(WEIGHTS_DIR / entry["file"], weights / entry["file"])
    manifest = dataclasses.replace(
        base, trunk=trunk, **{key: None for key in drop},
        architecture={**base.architecture, "backbone": arch,
                      "frozen_lower_stages": bundle.frozen_lower_stages(trunk and trunk["split_block"], splits)},
        models={k: {**base.models[k], "split_block": splits[k], "members": members[k]} for k in MODEL_KEYS})
    manifest.save(weights)
    return weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=parse_recipe, action="append", default=None,
                   help="BACKBONE:SPLIT (repeatable; default: issue 24's variants a and b)")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    recipes = a.recipe or [("tf_efficientnet_lite0", 4), ("tf_efficientnet_lite2", 5)]
    image = load_upload(EXAMPLE)
    with tempfile.TemporaryDirectory(prefix="recipe-cost-") as tmp:
        predictors = {"shipped": Predictor()}
        for arch, split in recipes:
            predictors[f"{arch}:{split}"] = Predictor(recipe_bundle(arch, split, Path(tmp) / f"{arch}_{split}"))
        for p_ in predictors.values():
            for _ in range(2):
                p_.analyze(image, *METADATA)
        times = {k: [] for k in predictors}
        for _ in range(a.repeats):
            for k, p_ in predictors.items():
                t0 = time.perf_counter()
                p_.analyze(image, *METADATA)
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["shipped"])
    print(f"full analysis, median of {a.repeats} (s), and its ratio to the shipped bundle's:")
    for k, v in times.items():
        print(f"  {k:32s} {statistics.median(v):.3f}  {statistics.median(v) / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
