"""5-fold cross-validated ensembles on one shared frozen trunk, with out-of-fold predictions.

    python -m train.fitting.cv --out runs/cv [--data DIR] [--folds train/splits/ham10000_folds.csv]
                       [--kinds image_only fusion] [--split-block 5] [--arch tf_efficientnet_lite0]
                       [--device cpu] [--threads 2] [recipe flags]
                       [--views carry --colour-constancy 6 --field-of-view --source-width 200]
                       [--second-source ../shared/data/isic2017 --second-aspect 4:3]

Reads top to bottom: the folds and the held-out slice -> the lower-stage cache of every
image (train.data.features, computed once and shared by all members) -> per fold, the
curriculum's difficulty ranking of that fold's training cases -> per kind and fold, a member
fine-tuned on every other fold (minus the held-out slice) with a fixed schedule, so no
choice looks at the fold it will score -> its logits on its own fold (out-of-fold) and on
the held-out slice -> out/oof_logits.csv, out/heldout_logits.csv and out/cv.json.

--views carry (issue 37) caches, per image, the flips of the app's input and 4 random views of other
devices' looks instead of the zoomed centre's flips; the input-spec flags apply at training and are
recorded in cv.json, which train.release.bundle serves them from. --second-source (issue 37) adds
another clinic's fit half to every member's training rows (train.fitting.second_source); the
out-of-fold figures stay HAM10000's.

Resumable per member: a finished member (its logits.npz) is skipped, an interrupted one
continues from its last finished epoch; --minutes stops cleanly before the next member and
the same command continues. Members are saved as fp16 upper stages + head (what ships),
and their logits are computed from those fp16 weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lesion_app.classifier.metadata import AgeScaler, encode_frame, unknown_row
from lesion_app.classifier.models import ARCH, IMAGENET_PACKAGES, SPLIT_BLOCK, imagenet_state_dict
from lesion_app.paths import repo_relative
from lesion_app.classifier.vocab import CLASSES
from train.data.dataset import DEFAULT_DATA, DatasetError, labels, load_metadata, parse_aspect
from train.data.features import DEFAULT_CACHE, build_cache, build_pooled_imagenet
from train.data.splits import DEFAULT_FOLDS, fit_half, fit_half_record, load_folds, load_heldout
from train.evaluation.metrics import classification_metrics, softmax
from train.fitting.recipe import Config, Log, add_config_arguments, case_roles_of, command_line, train_member, tta_logits
from train.fitting.members import KINDS, collect, fold_frames, member_dir, round_to_fp16, upper_state
from train.fitting.pooled_heads import difficulty_rank
from train.fitting.second_source import add_second_source_arguments, load_second_source
from train.fitting.view_flags import add_view_arguments, input_spec_of, views_record

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p, skip=("model", "seed"))
    p.add_argument("--seed", type=int, default=0, help="member k uses seed + k")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--split-block", type=int, default=SPLIT_BLOCK,
                   help="blocks[:N] form the frozen, cached trunk; the rest is fine-tuned")
    p.add_argument("--arch", default=ARCH, choices=list(IMAGENET_PACKAGES),
                   help="the backbone (one whose ImageNet weights a package ships; default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="image-decoding threads for the cache")
    add_view_arguments(p)
    add_second_source_arguments(p)
    p.add_argument("--minutes", type=float, default=None,
                   help="stop cleanly after about this long; the same command continues")
    a = p.parse_args(argv)
    try:
        imagenet_state_dict(a.arch)   # its package installed, before anything is cached or trained
    except ModuleNotFoundError as e:
        p.error(str(e))
    t0 = time.time()
    deadline = t0 + a.minutes * 60 if a.minutes else None
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = Log(a.out)

    if not a.folds.is_file():
        p.error(f"{a.folds} not found: make it with python -m train.data.make_folds --data DIR --out {a.folds}")
    md = load_metadata(a.data)
    folds, heldout = load_folds(a.folds), load_heldout(a.folds)
    df = fold_frames(md, folds, heldout)
    n_folds = int(df["fold"].max()) + 1
    y = labels(df)
    recipe = {k: getattr(a, k) for k in asdict(Config()) if k not in ("model", "seed")}
    try:
        role = case_roles_of(Config(**recipe), df)     # None unless the melanoma options are on
    except DatasetError as e:
        p.error(str(e))
    second_rows = None
    if a.second_source is not None:
        if role is not None:
            p.error("the melanoma options read how each diagnosis was confirmed (dx_type), which --second-source "
                    "folders lack; train with one or the other")
        try:
            parse_aspect(a.second_aspect)
            second_rows = fit_half(a.second_source, a.second_halves)
        except (DatasetError, ValueError) as e:
            p.error(str(e))
    # A run continues only on the rows it began on: its second source (or none) is kept beside its members.
    trained_on = None if second_rows is None else fit_half_record(a.second_source, a.second_halves,
                                                                  a.second_aspect, second_rows)
    began = a.out / "second_source.json"
    same = lambda r: None if r is None else {k: v for k, v in r.items() if k != "data"}  # noqa: E731 (paths may be spelt otherwise)
    if began.is_file() and same(json.loads(began.read_text())) != same(trained_on):
        p.error(f"{a.out} began with another second source ({began.read_text().strip()}); continue it with the same "
                "--second-source, --second-halves and --second-aspect, or use another --out")
    began.write_text(json.dumps(trained_on))
    # One age scaler for every member (a standardisation of an input, from the non-held-out ages).
    scaler = AgeScaler.fit(df.loc[~df["heldout"], "age"])
    meta = torch.from_numpy(encode_frame(df, scaler))
    unknown = torch.from_numpy(unknown_row(scaler))
    times = json.loads((a.out / "times.json").read_text()) if (a.out / "times.json").exists() else {}

    def timed(name, fn):
        t = time.time()
        result = fn()
        times.setdefault(name, round(time.time() - t, 1))
        (a.out / "times.json").write_text(json.dumps(times, indent=1))
        return result

    ids = list(df["image_id"])
    spec = input_spec_of(a)
    cache_of = lambda data, ids, aspect=None: build_cache(  # noqa: E731
        data, ids, a.cache, spec, split_block=a.split_block, arch=a.arch, device=a.device, workers=a.workers,
        batch_images=32 if a.device != "cpu" else 2, kind=a.views, aspect=aspect)
    pooled_of = lambda data, ids, aspect=None: build_pooled_imagenet(  # noqa: E731
        data, ids, a.cache, spec, split_block=a.split_block, arch=a.arch, device=a.device, kind=a.views, aspect=aspect)
    cached = timed("feature_cache", lambda: cache_of(a.data, ids))
    feats = torch.from_numpy(np.asarray(cached)).to(a.device) if a.device != "cpu" else cached
    log(f"lower-stage cache {tuple(cached.shape)} ready ({times['feature_cache']:.0f} s)")
    pooled = None
    if a.sampler == "curriculum":
        pooled = timed("pooled_imagenet", lambda: pooled_of(a.data, ids))
    second = None
    if second_rows is not None:
        second = timed("second_source_cache", lambda: load_second_source(
            a, second_rows, scaler, cache_of, pooled_of if a.sampler == "curriculum" else None, a.device))
        log(f"second source: {second.record['n_fit']} images of {a.second_source} ({second.record['fit_by_class']}) "
            "join every member's training rows")
    # A member's training rows: its HAM10000 folds, then the second source's fit half (if any).
    with_second = (lambda x, part: x) if second is None else second.extend  # noqa: E731

    for fold in range(n_folds):
        train_rows = np.flatnonzero((df["fold"] != fold).to_numpy() & ~df["heldout"].to_numpy())
        score_rows = np.flatnonzero((df["fold"] == fold).to_numpy())
        held_rows = np.flatnonzero(df["heldout"].to_numpy())
        rank = None
        if a.sampler == "curriculum":
            rank_file = a.out / f"rank_fold{fold}.npy"
            if not rank_file.exists():
                t = time.time()
                r = difficulty_rank(with_second(pooled[train_rows], "pooled"), with_second(meta[train_rows], "meta"),
                                    with_second(y[train_rows], "y"),
                                    with_second(df["lesion_id"].to_numpy()[train_rows], "lesion_id"),
                                    unknown, a.seed + fold, a.device)
                np.save(rank_file, r)
                times[f"curriculum_rank_fold{fold}"] = round(time.time() - t, 1)
                (a.out / "times.json").write_text(json.dumps(times, indent=1))
                log(f"fold {fold}: curriculum difficulty ranked in {time.time() - t:.0f} s")
            rank = np.load(rank_file)
            if len(rank) != len(train_rows) + (0 if second is None else len(second.y)):
                p.error(f"{rank_file} ranks {len(rank)} cases, fold {fold} trains on another number; it belongs to "
                        "another run: delete it or use another --out")
        for kind in a.kinds:
            d = member_dir(a.out, kind, fold)
            if (d / "logits.npz").exists():
                continue
            if deadline and time.time() > deadline:
                log("time budget reached; run the same command again to continue")
                return 3
            cfg = Config(**recipe, model=kind, seed=a.seed + fold)
            t = time.time()
            stop = None
            model = train_member(cfg, with_second(feats[train_rows] if torch.is_tensor(feats)
                                                  else np.asarray(cached[train_rows]), "feats"),
                                 with_second(meta[train_rows], "meta"), with_second(y[train_rows], "y"), unknown, d,
                                 rank=rank,
                                 role=None if role is None else role[train_rows], device=a.device,
                                 split_block=a.split_block, arch=a.arch, resume=True, stop_after=stop,
                                 log=lambda m, kf=f"{kind} fold {fold}": log(f"{kf}: {m}"))
            seconds = time.time() - t
            save_file(upper_state(model), d / "member.safetensors")
            round_to_fp16(model)
            sub = lambda rows: feats[rows] if torch.is_tensor(feats) else np.asarray(cached[rows])  # noqa: E731
            m = meta if model.uses_metadata else None
            oof = tta_logits(model, sub(score_rows), None if m is None else m[score_rows])
            held = tta_logits(model, sub(held_rows), None if m is None else m[held_rows]) if len(held_rows) \
                else np.zeros((0, len(CLASSES)), np.float32)
            np.savez(d / "logits.npz", oof_rows=score_rows, oof=oof, heldout_rows=held_rows, heldout=held)
            bacc = classification_metrics(y[score_rows], softmax(oof))["balanced_accuracy"]
            (d / "member.json").write_text(json.dumps({
                "kind": kind, "fold": fold, "config": asdict(cfg), "split_block": a.split_block, "arch": a.arch,
                "n_train": int(len(train_rows)) + (0 if second is None else len(second.y)),
                **({} if second is None else {"n_train_second_source": len(second.y)}), "train_seconds": round(seconds, 1),
                "oof_balanced_accuracy": bacc, "history": model.history}, indent=1))
            (d / "checkpoint.pt").unlink(missing_ok=True)   # 40 MB each; the member file is what ships
            log(f"{kind} fold {fold}: trained in {seconds:.0f} s, out-of-fold balanced accuracy {bacc:.4f}")

    summary = collect(a.out, df, y, a.kinds, n_folds)
    summary.update({"command": command_line("train.fitting.cv", argv),
                    "recipe": {k: getattr(a, k) for k in asdict(Config()) if k not in ("model",)},
                    "split_block": a.split_block, "arch": a.arch, "folds_file": repo_relative(a.folds),
                    **views_record(a.views, spec),
                    **({} if second is None else {"second_source": second.record}),
                    "age_scaler": asdict(scaler),
                    "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else
                    f"cpu ({a.threads} threads)", "wall_time_seconds": times,
                    "total_seconds_this_invocation": round(time.time() - t0, 1)})
    (a.out / "cv.json").write_text(json.dumps(summary, indent=1))
    for kind in a.kinds:
        s = summary["out_of_fold"][kind]
        log(f"{kind}: out-of-fold balanced accuracy {s['balanced_accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  "
            f"AUC {s['macro_auc']:.4f}  ECE {s['ece_before_temperature']:.4f} -> {s['ece']:.4f} (T={s['temperature']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
