"""Both 5-fold ensembles trained on one GPU in one command, from images decoded once onto it.

    python -m train.fitting.gpu_cv --data runs/ham10000_pack.safetensors --out $OUT
                                   [--split-block whole|N] [--epochs E] [recipe flags as train.fitting.cv]
                                   [--views carry --colour-constancy 6 --field-of-view --source-width 200]
                                   [--second-source DIR --second-aspect 4:3]   (with a folder; a pack carries its own)
    python -m train.fitting.gpu_files $OUT --to runs/cv_gpu        (back on the CPU: cv's run folder)

Every member of every fold and kind (fusion, image_only), each fine-tuned from blocks[N] upward
(--split-block: 5 is the shipped recipe, 4 the "blocks[4]" variant, whole or 0 the whole network
with its stem), trained on every fold but its own minus the held-out slice, on a fixed schedule.
The recipe is train.fitting.cv's, through the same code: Config and its flags, the heads, the
loss and class weights, metadata dropout, the samplers and curriculum (EpochPlan, with each fold's
difficulty ranked by pooled_heads.difficulty_rank on frozen ImageNet features of the same 8 views),
AdamW one-cycle, the epoch skeleton and loop (recipe.train_epochs), the fp16 member files and
fp16-rounded scoring (members.upper_state, members.round_to_fp16), and members.collect's temperatures and metrics
(at unpacking). What differs is where the views come from: instead of a cache of 8 fixed views,
every step draws train.data.augment's training view (crop, rotation, flips, colour jitter) on the
device (train.data.device_views), since nothing is cached; --views carry draws its carry view
instead (issue 37: also a round black field of view, lower resolution, JPEG, another light), and
the input-spec flags (train.fitting.view_flags) apply at decoding, training and scoring alike and
are recorded for the bundle, as cv records them. A second source (issue 37: a pack made with
train.data.pack --second-source, or --second-source with a folder) adds its fit half to every
member's training rows, as cv --second-source does; it is never scored out of fold.

Reads top to bottom: the data (a folder, or a pack from train.data.pack) -> all images decoded
once into one uint8 tensor on the device -> each fold's curriculum ranking -> per fold and kind, a
member trained under bf16 autocast in channels_last (fp32 on the CPU), scored in fp32 over the
app's 4 flips on its own fold (out-of-fold) and on the held-out slice -> its files
(train.fitting.gpu_files: at most 8 files of at most 16 MiB, what the lent machine brings back).

Resumable per member: a member run.json names is skipped, so the same command continues;
--minutes and --members stop cleanly before the next member (exit 3). On a fresh machine, put the
earlier part's run.json and run_arrays.safetensors into the new --out first (train.fitting.gpu_files).

The lent GPU machine (the `run` tool) receives the working tree, at most 64 MiB with what is
carried, and not ../shared, and has no efficientnet-lite0 package. So the data travels as one pack
file with the ImageNet weights inside (python -m train.data.pack, about 41 MB, carried), and the
tree must be under 64 MiB: today's tracked files are about 75 MB (weights/ 69 MB), so weights/
must be out of the tree that travels for such a run (nothing here reads them).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from lesion_app.classifier.metadata import AgeScaler, encode_frame, unknown_row
from lesion_app.classifier.models import ARCH, IMAGENET_PACKAGES, SPLIT_BLOCK, LesionClassifier, imagenet_state_dict
from lesion_app.classifier.preprocess import VIEWS, InputSpec, flip_views, mean_over_views
from lesion_app.classifier.vocab import CLASSES
from train.data.augment import CARRY_AUGMENT, Augment, Carry, Normalise
from train.data.dataset import DatasetError, labels
from train.data.device_views import cache_views, carry_views, decode_images, eval_batch, train_views
from train.data.pack import PackedData, SecondPart
from train.evaluation.metrics import classification_metrics, softmax
from train.fitting.recipe import (Config, Log, add_config_arguments, case_roles_of, command_line, make_optimizer,
                                recipe_loss, train_epochs)
from train.fitting.curriculum import EpochPlan
from train.fitting.members import KINDS, fold_frames, round_to_fp16, upper_state
from train.fitting.distributed import RankShare, rank_seed
from train.fitting.gpu_files import MAX_FILE_BYTES, MAX_FILES, RunFiles, member_name
from train.fitting.loop import Step
from train.fitting.objectives import drop_metadata
from train.fitting.pooled_heads import difficulty_rank
from train.fitting.second_source import add_second_source_arguments
from train.fitting.view_flags import add_view_arguments, input_spec_of

FORMAT = "gpu_cv/1"
# How run.json, cv.json and member.json record --split-block whole: the value lesion_app's models give a
# member that holds its whole network (its own trained stem), so that no reader takes it for cv's split 0
# (a frozen, shared stem).
WHOLE_NETWORK = "whole_network"
VIEWS_NOTE = {
    "flips": ("training: train.data.augment's training view of the app's 256x192 input, drawn on the device "
              "(train.data.device_views); scoring: the app's 4 flips, fp32"),
    "carry": ("training: train.data.augment's carry view of the app's 256x192 input (other devices' looks: "
              "a round black field of view, lower resolution, JPEG, another light, then the training view's warp "
              "and a stronger jitter), drawn on the device (train.data.device_views.carry_views); the curriculum "
              "ranks on the flips of the input and its zoomed centre; scoring: the app's 4 flips, fp32")}


def split_block_arg(value: str) -> int:
    """--split-block: whole (or 0) = the whole network with its stem, N = blocks[N:] and above."""
    if value == "whole":
        return 0
    n = int(value)
    if not 0 <= n <= 7:
        raise argparse.ArgumentTypeError("--split-block takes whole or 0..7 (tf_efficientnet_lite0 has 7 blocks)")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p, skip=("model", "seed"))
    p.add_argument("--seed", type=int, default=0, help="member k uses seed + k")
    p.add_argument("--data", type=Path, required=True, help="a data pack (train.data.pack) or a folder")
    p.add_argument("--folds", type=Path, default=None,
                   help="with a folder: its folds file (default: the committed one); a pack carries its own")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--split-block", type=split_block_arg, default=SPLIT_BLOCK,
                   help=f"fine-tune from blocks[N] up; whole (= 0) trains the stem too (default {SPLIT_BLOCK})")
    p.add_argument("--arch", default=ARCH, choices=list(IMAGENET_PACKAGES),
                   help="the backbone (a pack carries one backbone's weights; default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="image-decoding threads")
    p.add_argument("--ranks", type=Path, default=None,
                   help="a folder with rank_fold<k>.npy from an earlier run of the same folds and seed "
                        "(train.fitting.cv writes them): skips the curriculum ranking")
    p.add_argument("--ranks-only", action="store_true", help="decode and rank, then stop (e.g. on a CPU first)")
    add_view_arguments(p)
    add_second_source_arguments(p)
    p.add_argument("--minutes", type=float, default=None, help="stop cleanly before a member after this long")
    p.add_argument("--members", type=int, default=None, help="stop after training this many members")
    return p


# ----------------------------------------------------------------------------- the model

def build_member(head: str, split_block: int, imagenet: dict[str, torch.Tensor], arch: str = ARCH) -> LesionClassifier:
    """The classifier (backbone arch) at the ImageNet weights; the head from the global RNG."""
    model = LesionClassifier(head, arch=arch, pretrained=False, split_block=split_block)
    missing, unexpected = model.backbone.load_state_dict(imagenet, strict=False)
    if unexpected or any("num_batches_tracked" not in k for k in missing):
        raise ValueError(f"the ImageNet weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def frozen_modules(model: LesionClassifier, split_block: int) -> list[torch.nn.Module]:
    """What stays at ImageNet weights (and BatchNorm statistics): the stem and blocks[:N], none when whole."""
    b = model.backbone
    return [b.conv_stem, b.bn1, *b.blocks[:split_block]] if split_block > 0 else []


def member_state(model: LesionClassifier, split_block: int) -> dict[str, torch.Tensor]:
    """What a member file holds, fp16: cv's upper stages and head, or the whole network."""
    if split_block > 0:
        return upper_state(model)
    return {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- views and scores

@torch.inference_mode()
def pooled_imagenet(imagenet: dict, images: torch.Tensor, batch: int = 64, arch: str = ARCH,
                    spec: InputSpec = InputSpec()) -> np.ndarray:
    """(N, 8, F) fp16 pooled features of the whole ImageNet backbone over the 8 cached views, what
    train.data.features.build_pooled_imagenet gives the curriculum's ranking."""
    model = build_member("image_only", SPLIT_BLOCK, imagenet, arch).to(images.device, memory_format=torch.channels_last)
    model.eval()
    out = []
    for s in range(0, len(images), batch):
        v = cache_views(images[s:s + batch], spec)
        with autocast(images.device):
            f = model.features(v.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        out.append(f.float().view(len(v), v.shape[1], -1).cpu().numpy().astype(np.float16))
    return np.concatenate(out)


@torch.inference_mode()
def tta_logits(model: LesionClassifier, images: torch.Tensor, rows: np.ndarray, meta: torch.Tensor | None,
               batch: int = 128, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Mean logits over the app's 4 flips of the rows' images, in fp32 (no TF32), as the app scores."""
    model.eval()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        out = [np.zeros((0, len(CLASSES)), np.float32)]
        for s in range(0, len(rows), batch):
            r = torch.as_tensor(rows[s:s + batch], device=images.device)
            x = flip_views(eval_batch(images[r, 0], spec)).flatten(0, 1).contiguous(memory_format=torch.channels_last)
            m = None if meta is None else meta[r].repeat_interleave(len(VIEWS), 0)
            out.append(mean_over_views(model(x, m), len(VIEWS)).float().cpu().numpy())
        return np.concatenate(out)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


# ----------------------------------------------------------------------------- one member

def train_member(cfg: Config, model: LesionClassifier, images: torch.Tensor, rows: np.ndarray, meta: torch.Tensor,
                 y: np.ndarray, unknown: torch.Tensor, *, rank: np.ndarray | None, split_block: int,
                 role: np.ndarray | None = None, spec: InputSpec = InputSpec(), views: str = "flips",
                 log=print) -> list:
    """Fine-tunes model on images[rows] for cfg.epochs (fixed schedule) with a training view drawn
    on the device per case and step (views: the training view, flips, or the carry view), under
    the app's input spec; returns the epoch history. meta, y and role (each case's role
    in the loss, recipe.case_roles_of; None at the melanoma options' defaults) cover every image.
    Every draw comes from cfg.seed: the plan and each case's view from RankShare's (row, seed) keys,
    dropout and metadata dropout from a generator seeded per epoch, so the same member comes out
    on the same device."""
    dev = images.device
    frozen = frozen_modules(model, split_block)
    for m in frozen:
        m.requires_grad_(False)
    model.to(dev, memory_format=torch.channels_last)
    share = RankShare(EpochPlan(cfg.sampler, y[rows], cfg.epochs, rank), cfg.seed)
    opt, sched = make_optimizer(cfg, model, math.ceil(len(share) / cfg.batch))
    criterion = recipe_loss(cfg, y[rows], dev)
    rows_t = torch.as_tensor(rows, device=dev)
    meta_t, y_t, unknown = meta[rows].to(dev), torch.as_tensor(y[rows], device=dev), unknown.to(dev)
    role_t = None if role is None else torch.as_tensor(role[rows], device=dev)
    aug, norm = Augment(), Normalise()
    if views == "carry":
        view_of = lambda u8, seeds: carry_views(u8, seeds, spec, normalise=norm)   # noqa: E731
    else:
        view_of = lambda u8, seeds: train_views(u8, seeds, aug, norm, spec)        # noqa: E731

    def start_epoch(epoch):
        torch.manual_seed(rank_seed(cfg.seed, epoch, 0))
        share.set_epoch(epoch)
        for m in frozen:
            m.eval()
        keys = list(share)
        return (keys[s:s + cfg.batch] for s in range(0, len(keys), cfg.batch))

    def loss_of(batch):
        pos = torch.as_tensor([r for r, _ in batch], device=dev)
        x = view_of(images[rows_t[pos], 0], [s for _, s in batch])
        m = meta_t[pos]
        if model.uses_metadata and cfg.meta_dropout > 0:
            m = drop_metadata(m, unknown, cfg.meta_dropout)
        with autocast(dev):
            logits = model(x.contiguous(memory_format=torch.channels_last), m)
        return criterion(logits.float(), y_t[pos], None if role_t is None else role_t[pos]), len(batch)

    return train_epochs(cfg, model, Step(opt, sched), first=0, history=[], start_epoch=start_epoch, loss_of=loss_of,
                        end_epoch=lambda epoch, loss_sum, seen, t0: {
                            "train_loss": loss_sum / seen, "images_per_second": seen / (time.time() - t0)},
                        checkpoint=lambda epoch, history: None, log=log)


# ----------------------------------------------------------------------------- the run

def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no GPU")
    return torch.device(name)


def settings(run: dict) -> dict:
    """What a continued run must share with the run in its folder (the threads and the data's path may differ).
    A run recorded before a recipe field existed ran at that field's default."""
    recipe = {**{k: v for k, v in asdict(Config()).items() if k != "model"}, **run["recipe"]}
    return {"format": run.get("format"), "recipe": {k: v for k, v in recipe.items() if k != "threads"},
            **{k: run.get(k) for k in ("split_block", "kinds", "n_folds")}, "arch": run.get("arch", ARCH),
            "input": run.get("input", InputSpec().to_dict()), "view_kind": run.get("view_kind", "flips"),
            "data": {k: v for k, v in run["data"].items() if k != "source"}}


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    t0 = time.time()
    deadline = t0 + a.minutes * 60 if a.minutes else None
    try:
        second = (SecondPart.from_folder(a.second_source, a.second_halves, a.second_aspect)
                  if a.second_source is not None else None)
        data = PackedData.open(a.data, a.folds, second)
    except (ValueError, OSError, DatasetError) as e:
        p.error(str(e))
    df = fold_frames(data.metadata, data.folds, data.heldout)
    n_folds = int(df["fold"].max()) + 1
    y = labels(df)
    scaler = AgeScaler.fit(df.loc[~df["heldout"], "age"])    # as train.fitting.cv: the non-held-out ages
    meta, unknown = torch.from_numpy(encode_frame(df, scaler)), torch.from_numpy(unknown_row(scaler))
    recipe = {k: getattr(a, k) for k in asdict(Config()) if k != "model"}
    spec = input_spec_of(a)
    try:
        role = case_roles_of(Config(**recipe), df)     # None unless the melanoma options are on
    except DatasetError as e:
        p.error(str(e))
    if role is not None and data.second is not None:
        p.error("the melanoma options read how each diagnosis was confirmed (dx_type), which a second source "
                "lacks; train with one or the other")
    split_recorded = WHOLE_NETWORK if a.split_block == 0 else a.split_block
    if data.imagenet is not None and data.arch != a.arch:
        p.error(f"{a.data} carries {data.arch}'s ImageNet weights, not {a.arch}'s: pass --arch {data.arch} "
                f"to train that backbone, or pack {a.arch}'s with python -m train.data.pack --arch {a.arch}")
    try:
        imagenet = data.imagenet or {k: v for k, v in imagenet_state_dict(a.arch).items()
                                     if not k.startswith("classifier.")}
    except ModuleNotFoundError as e:
        p.error(f"{e}; or carry the weights in a pack (python -m train.data.pack --arch {a.arch})")
    header = {"format": FORMAT, "recipe": recipe, "split_block": split_recorded, "arch": a.arch,
              "kinds": a.kinds, "n_folds": n_folds, "data": data.describe(), "age_scaler": asdict(scaler),
              "views": VIEWS_NOTE[a.views], "view_kind": a.views, "input": spec.to_dict(),
              "augment": (CARRY_AUGMENT if a.views == "carry" else Augment()).to_dict(),
              **({"carry": Carry().to_dict()} if a.views == "carry" else {})}

    files = RunFiles(a.out)
    run = files.run
    if run:
        if settings(run) != settings(header):
            p.error(f"{a.out} holds a run with other settings or data; use another --out "
                    f"(it has {json.dumps({k: run.get(k) for k in ('recipe', 'split_block', 'kinds')})})")
    dev = device_of(a.device)
    torch.set_num_threads(a.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True    # one input size throughout
    log = Log(None)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({a.threads} threads)"
    precision = "bf16 autocast, channels_last" if dev.type == "cuda" else "fp32, channels_last"
    if not run:
        run.update({**header, "command": command_line("train.fitting.gpu_cv", argv), "device": device_name,
                    "precision": precision, "members": {}, "invocations": [], "wall_time_seconds": {},
                    "total_seconds": 0.0})
    invocation = {"device": device_name, "precision": precision, "torch": torch.__version__,
                  "command": command_line("train.fitting.gpu_cv", argv), "trained": [], "seconds": 0.0}
    run["invocations"].append(invocation)
    times = run["wall_time_seconds"]

    def record_time():
        invocation["seconds"] = round(time.time() - t0, 1)
        run["total_seconds"] = round(sum(i["seconds"] for i in run["invocations"]), 1)
        files.save_run()

    files.arrays_meta["image_ids"] = json.dumps(list(df["image_id"]))
    files.arrays.update({"image_fold": torch.tensor(df["fold"].to_numpy(), dtype=torch.int64),
                         "label": torch.tensor(y, dtype=torch.int64),
                         "heldout": torch.tensor(df["heldout"].to_numpy(), dtype=torch.uint8)})

    t = time.time()
    images = decode_images(data.image, len(df), spec, workers=a.workers).to(dev)
    times.setdefault("decode", round(time.time() - t, 1))
    log(f"{len(df)} images decoded into {tuple(images.shape)} uint8 on {device_name} in {time.time() - t:.1f} s")
    # Training reads rows of images, meta_all and y_all: HAM10000's, then the second source's fit half (if any).
    meta_all, y_all, lesion_ids = meta, y, df["lesion_id"].to_numpy()
    if data.second is not None:
        sd = data.second.metadata
        t = time.time()
        images = torch.cat([images, decode_images(data.second.image, len(sd), spec, workers=a.workers).to(dev)])
        times.setdefault("decode_second_source", round(time.time() - t, 1))
        meta_all = torch.cat([meta, torch.from_numpy(encode_frame(sd, scaler))])
        y_all, lesion_ids = np.concatenate([y, labels(sd)]), np.concatenate([lesion_ids, sd["lesion_id"].to_numpy()])
        log(f"second source: {len(sd)} images of {data.second.record['data']} join every member's training rows")
    second_rows = np.arange(len(df), len(images))

    train_rows = {f: np.concatenate([np.flatnonzero((df["fold"] != f).to_numpy() & ~df["heldout"].to_numpy()),
                                     second_rows]) for f in range(n_folds)}
    if a.sampler == "curriculum":
        missing = [f for f in range(n_folds) if f"rank_fold{f}" not in files.arrays]
        if a.ranks is not None:
            for f in missing:
                r = np.load(a.ranks / f"rank_fold{f}.npy")
                if len(r) != len(train_rows[f]):
                    p.error(f"{a.ranks}/rank_fold{f}.npy ranks {len(r)} cases, fold {f} trains on {len(train_rows[f])}")
                files.arrays[f"rank_fold{f}"] = torch.from_numpy(r)
            run["ranks_from"] = str(a.ranks)
        elif missing:
            t = time.time()
            pooled = pooled_imagenet(imagenet, images, arch=a.arch, spec=spec)
            times.setdefault("pooled_imagenet", round(time.time() - t, 1))
            for f in missing:
                t = time.time()
                files.arrays[f"rank_fold{f}"] = torch.from_numpy(difficulty_rank(
                    pooled[train_rows[f]], meta_all[train_rows[f]], y_all[train_rows[f]],
                    lesion_ids[train_rows[f]], unknown, a.seed + f, str(dev)))
                times.setdefault(f"curriculum_rank_fold{f}", round(time.time() - t, 1))
                log(f"fold {f}: curriculum difficulty ranked in {time.time() - t:.0f} s")
    files.save_arrays()
    record_time()
    if a.ranks_only:
        log(f"ranked; {a.out} is ready to be continued (on the GPU) with the same flags")
        return 0

    todo = [(f, k) for f in range(n_folds) for k in a.kinds if member_name(k, f) not in files.members]
    sizes = {k: len(save({f"{member_name(k, 0)}/{n}": v for n, v in
                          member_state(build_member(Config(model=k).head, a.split_block, imagenet, a.arch),
                                       a.split_block).items()})) for k in a.kinds}
    needed = files.files_needed([sizes[k] for _, k in todo])
    if needed > MAX_FILES:
        p.error(f"{len(todo)} members of {max(sizes.values()) / 2 ** 20:.1f} MiB would need {needed} files of at most "
                f"{MAX_FILE_BYTES // 2 ** 20} MiB; the lent machine returns {MAX_FILES}")

    trained = 0
    held_rows = np.flatnonzero(df["heldout"].to_numpy())
    for fold, kind in todo:
        name = member_name(kind, fold)
        if (deadline and time.time() > deadline) or (a.members is not None and trained >= a.members):
            log(f"stopped before {name}; run the same command again to continue")
            record_time()
            return 3
        cfg = Config(**{k: v for k, v in recipe.items() if k != "seed"}, model=kind, seed=a.seed + fold)
        t = time.time()
        torch.manual_seed(cfg.seed), np.random.seed(cfg.seed)
        model = build_member(cfg.head, a.split_block, imagenet, a.arch)
        rank = files.arrays[f"rank_fold{fold}"].numpy() if cfg.sampler == "curriculum" else None
        history = train_member(cfg, model, images, train_rows[fold], meta_all, y_all, unknown, rank=rank,
                               split_block=a.split_block, role=role, spec=spec, views=a.views,
                               log=lambda m, n=name: log(f"{n}: {m}"))
        train_seconds = time.time() - t
        state = member_state(model, a.split_block)
        round_to_fp16(model)      # scores describe the fp16 file
        m = meta.to(images.device) if model.uses_metadata else None
        score_rows = np.flatnonzero((df["fold"] == fold).to_numpy())
        oof, held = tta_logits(model, images, score_rows, m, spec=spec), tta_logits(model, images, held_rows, m, spec=spec)
        bacc = classification_metrics(y[score_rows], softmax(oof))["balanced_accuracy"]
        files.add_member(name, state, {
            "oof_rows": torch.from_numpy(score_rows), "oof": torch.from_numpy(oof),
            "heldout_rows": torch.from_numpy(held_rows), "heldout": torch.from_numpy(held)}, {
            "kind": kind, "fold": fold, "config": asdict(cfg), "split_block": split_recorded, "arch": a.arch,
            "n_train": int(len(train_rows[fold])),
            **({"n_train_second_source": len(second_rows)} if len(second_rows) else {}),
            "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - t, 1),
            "oof_balanced_accuracy": bacc, "history": history,
            "sha256": hashlib.sha256(save(state)).hexdigest()})
        invocation["trained"].append(name)
        run["device"], run["precision"] = device_name, precision
        record_time()
        trained += 1
        log(f"{name}: trained in {train_seconds:.0f} s, out-of-fold balanced accuracy {bacc:.4f}")

    record_time()
    for kind in a.kinds:
        z = np.zeros((len(df), len(CLASSES)), np.float32)
        for f in range(n_folds):
            name = member_name(kind, f)
            z[files.arrays[f"{name}.oof_rows"].numpy()] = files.arrays[f"{name}.oof"].numpy()
        log(f"{kind}: out-of-fold balanced accuracy {classification_metrics(y, softmax(z))['balanced_accuracy']:.4f} "
            "(before temperature)")
    log(f"done in {run['total_seconds']:.0f} s over {len(run['invocations'])} invocation(s); "
        f"unpack with python -m train.fitting.gpu_files {a.out} --to runs/cv_gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
