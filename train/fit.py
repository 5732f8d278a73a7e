"""Trains the image-only or the fusion model on cached lower-backbone features.

    python -m train.fit --model fusion --fusion concat --out runs/fusion
    python -m train.fit --model image_only --out runs/image_only

Reads top to bottom: data and split -> metadata encoding -> cached features -> model ->
loss and sampler -> a plain epoch loop (one log line per epoch, a checkpoint per epoch,
--resume continues) -> the best epoch on validation balanced accuracy -> temperature
fitted on validation -> runs/<name>/model.safetensors and run.json.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from lesion_app.data import DEFAULT_DATA, labels, load_metadata
from lesion_app.metadata import AgeScaler, encode_frame, unknown_row
from lesion_app.models import SPLIT_BLOCK, LesionClassifier
from train.curriculum import CurriculumScheduler
from train.features import DEFAULT_CACHE, N_VIEWS, build_cache, build_pooled_imagenet, cached_pooled
from train.make_split import DEFAULT_SPLIT, load_split
from train.metrics import classification_metrics, fit_temperature, softmax
from train.objectives import LOSSES, class_weights, drop_metadata, loss_fn
from train.pooled_heads import Hyper, curriculum_rank


@dataclass
class Config:
    # Defaults are the shipped recipe: train.study's best on validation (reports/study.md).
    model: str = "fusion"          # image_only | fusion
    fusion: str = "concat"         # concat | film | late (fusion only)
    loss: str = "wce"              # ce | wce (class-weighted) | focal
    sampler: str = "curriculum"    # none | balanced | curriculum (train.curriculum)
    epochs: int = 6
    batch: int = 64
    lr: float = 1e-3               # head; the fine-tuned backbone stages get lr * backbone_lr
    backbone_lr: float = 1.0
    weight_decay: float = 0.01
    focal_gamma: float = 2.0
    meta_dropout: float = 0.1      # chance each metadata group is replaced by "unknown"
    seed: int = 0
    threads: int = 2


@dataclass
class SplitData:
    """The committed split's frames, encoded metadata and labels, plus each split's rows
    in the data folder's image order (the order of the feature caches)."""
    image_ids: list
    frames: dict
    meta: dict
    y: dict
    rows: dict
    scaler: AgeScaler
    unknown: torch.Tensor

    @classmethod
    def load(cls, data: Path, split_csv: Path, splits=("train", "val")) -> "SplitData":
        meta_df = load_metadata(data).set_index("image_id")
        split = load_split(split_csv)
        frames = {s: meta_df.loc[split.loc[split["split"] == s, "image_id"]].reset_index()
                  for s in splits}
        scaler = AgeScaler.fit(frames["train"]["age"])
        row_of = {image_id: k for k, image_id in enumerate(meta_df.index)}
        return cls(list(meta_df.index), frames,
                   {s: torch.from_numpy(encode_frame(f, scaler)) for s, f in frames.items()},
                   {s: labels(f) for s, f in frames.items()},
                   {s: [row_of[i] for i in f["image_id"]] for s, f in frames.items()},
                   scaler, torch.from_numpy(unknown_row(scaler)))


@torch.inference_mode()
def tta_logits(model: LesionClassifier, feats, meta: torch.Tensor) -> np.ndarray:
    """Mean logits over the TTA views of cached lower features (N, V, C, h, w)."""
    pooled = cached_pooled(model, feats)
    n, v, f = pooled.shape
    meta = meta.to(pooled.device) if meta is not None else None
    logits = model.head(pooled.reshape(n * v, f), None if meta is None else meta.repeat_interleave(v, 0))
    return logits.view(n, v, -1).mean(1).cpu().numpy()


def save_checkpoint(path: Path, cfg: Config, model, opt, sched, epoch, history, extra):
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    torch.save({"config": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "epoch": epoch, "history": history, "extra": extra,
                "rng": rng}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _views(feats, idx: np.ndarray, view: np.ndarray, device) -> torch.Tensor:
    """feats[idx, view] as float32 on device; feats is an array or a tensor (N, V, C, h, w)."""
    if torch.is_tensor(feats):
        return feats[torch.as_tensor(idx, device=feats.device),
                     torch.as_tensor(view, device=feats.device)].to(device).float()
    return torch.from_numpy(feats[idx, view].astype(np.float32)).to(device)


class ResumeMismatch(ValueError):
    """--resume with other settings than the interrupted run."""


def train_member(cfg: Config, feats, meta: torch.Tensor, y: np.ndarray, unknown: torch.Tensor,
                 out: Path, *, rank: np.ndarray | None = None, device="cpu", split_block: int = SPLIT_BLOCK,
                 resume: bool = False, stop_after: int | None = None, after_epoch=None,
                 log=print) -> LesionClassifier | None:
    """Fine-tunes the upper stages and the head for cfg.epochs on cached lower features.

    feats (N, N_VIEWS, C, h, w), meta (N, META_DIM) and y (N,) are the training cases; rank is
    each case's within-class difficulty (needed by the curriculum sampler). A fixed schedule:
    the model after the last epoch is returned, so no held-out data chooses anything here.
    after_epoch(model, epoch) may return a dict of figures to log (e.g. validation scores).
    out/checkpoint.pt is written atomically after every epoch; resume=True continues from it.
    Returns None when stop_after epochs ran in this call and training is not finished.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    fusion = "none" if cfg.model == "image_only" else cfg.fusion
    model = LesionClassifier(fusion, split_block=split_block).to(device, memory_format=torch.channels_last)
    for q in model.lower_parameters():
        q.requires_grad_(False)
    lower = set(map(id, model.lower_parameters()))
    head = list(model.head.parameters())
    upper = [q for q in model.parameters() if id(q) not in lower and not any(q is h for h in head)]
    opt = torch.optim.AdamW([{"params": upper, "lr": cfg.lr * cfg.backbone_lr},
                             {"params": head, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    n = len(y)
    steps = (n + cfg.batch - 1) // cfg.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[cfg.lr * cfg.backbone_lr, cfg.lr], total_steps=cfg.epochs * steps, pct_start=0.15)
    weights = class_weights(y)
    criterion = loss_fn(cfg.loss, weights.to(device), cfg.focal_gamma)
    sample_p = (weights[y] / weights[y].sum()).numpy() if cfg.sampler == "balanced" else None
    curriculum = CurriculumScheduler(y, rank, cfg.epochs) if cfg.sampler == "curriculum" else None
    meta, unknown, y_t = meta.to(device), unknown.to(device), torch.as_tensor(y, device=device)

    history, first, ckpt = [], 0, out / "checkpoint.pt"
    if resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False, map_location=device)
        if st["config"] != asdict(cfg):
            raise ResumeMismatch(f"--resume needs the same settings as the interrupted run: {st['config']}")
        model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"]), sched.load_state_dict(st["sched"])
        history, first = st["history"], st["epoch"] + 1
        torch.set_rng_state(st["rng"][0]), np.random.set_state(st["rng"][1]), random.setstate(st["rng"][2])
        if st["rng"][3] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"][3])
        log(f"resumed after epoch {st['epoch']}")

    for epoch in range(first, cfg.epochs):
        t0 = time.time()
        # The frozen lower stages' BatchNorm stats are baked into the cache; only upper BN trains.
        model.train()
        if curriculum is not None:   # a generator per epoch, so a resumed run draws the same cases
            order = curriculum.epoch_indices(epoch, np.random.default_rng([cfg.seed, epoch]))
        elif sample_p is not None:
            order = np.random.choice(n, n, p=sample_p)
        else:
            order = np.random.permutation(n)
        total = 0.0
        for s in tqdm(range(0, n, cfg.batch), desc=f"epoch {epoch}", leave=False, mininterval=5,
                      disable=None):
            idx = np.sort(order[s:s + cfg.batch])
            f = _views(feats, idx, np.random.randint(0, N_VIEWS, len(idx)), device)
            m = meta[idx]
            if model.uses_metadata and cfg.meta_dropout > 0:
                m = drop_metadata(m, unknown, cfg.meta_dropout)
            loss = criterion(model.head(model.upper(f.contiguous(memory_format=torch.channels_last)), m),
                             y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch, "train_loss": total / n, **(after_epoch(model, epoch) if after_epoch else {}),
               "seconds": time.time() - t0}
        history.append(row)
        save_checkpoint(ckpt, cfg, model, opt, sched, epoch, history, {})
        log(f"epoch {epoch:2d}  " + "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items()
                                              if k not in ("epoch", "seconds")) + f"  {row['seconds']:.0f}s")
        if stop_after is not None and epoch + 1 - first >= stop_after and epoch + 1 < cfg.epochs:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return None
    model.history = history
    return model.eval()


def difficulty_rank(pooled_imagenet: np.ndarray, meta: torch.Tensor, y: np.ndarray, lesion_ids,
                    unknown: torch.Tensor, seed: int, device="cpu") -> np.ndarray:
    """The curriculum's within-class difficulty of each training case, from out-of-fold
    heads on frozen pooled features of these cases only (lesion-grouped inner folds)."""
    x = torch.from_numpy(pooled_imagenet.astype(np.float32)).to(device)
    rank, _ = curriculum_rank(x, meta.to(device), y, np.asarray(lesion_ids), unknown.to(device),
                              Hyper(), seed)
    return rank


def main(argv=None):
    """Single-split training (the study's split): experiments only; the shipped ensembles
    come from train.cv, which calls the same train_member on every fold."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in asdict(Config()).items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many epochs in this invocation (resume later)")
    a = p.parse_args(argv)
    cfg = Config(**{k: getattr(a, k) for k in asdict(Config())})
    if cfg.model not in ("image_only", "fusion"):
        p.error("--model must be image_only or fusion")
    if cfg.sampler not in ("none", "balanced", "curriculum"):
        p.error("--sampler must be none, balanced or curriculum")
    if cfg.loss not in LOSSES:
        p.error(f"--loss must be one of {', '.join(LOSSES)}")
    fusion = "none" if cfg.model == "image_only" else cfg.fusion
    command = "python -m train.fit " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    t_start = time.time()
    torch.set_num_threads(cfg.threads)

    # Data: the committed lesion-grouped split; metadata encoded with train-split age stats.
    d = SplitData.load(a.data, a.split)
    t_cache = time.time()
    cached = build_cache(a.data, d.image_ids, a.cache)
    cache_seconds = time.time() - t_cache
    feats = {s: np.ascontiguousarray(cached[d.rows[s]]) for s in d.frames}
    rank = None
    if cfg.sampler == "curriculum":
        t_rank = time.time()
        pooled = build_pooled_imagenet(a.data, d.image_ids, a.cache)
        rank = difficulty_rank(pooled[d.rows["train"]], d.meta["train"], d.y["train"],
                               d.frames["train"]["lesion_id"], d.unknown, cfg.seed)
        print(f"curriculum difficulty ranked in {time.time() - t_rank:.0f} s", flush=True)

    best = {"balanced_accuracy": -1.0, "epoch": -1}
    best_file = a.out / "best.json"
    if a.resume and best_file.exists():
        best = json.loads(best_file.read_text())

    def validate(model, epoch):
        vm = classification_metrics(d.y["val"], softmax(tta_logits(model, feats["val"], d.meta["val"])))
        if vm["balanced_accuracy"] > best["balanced_accuracy"]:
            best.update(balanced_accuracy=vm["balanced_accuracy"], epoch=epoch)
            torch.save(model.state_dict(), a.out / "best.pt.tmp")
            (a.out / "best.pt.tmp").replace(a.out / "best.pt")   # atomic, like the checkpoint
            best_file.write_text(json.dumps(best))
        return {"val_bacc": vm["balanced_accuracy"], "val_f1": vm["macro_f1"], "val_auc": vm["macro_auc"]}

    try:
        model = train_member(cfg, feats["train"], d.meta["train"], d.y["train"], d.unknown, a.out,
                             rank=rank, resume=a.resume, stop_after=a.stop_after, after_epoch=validate,
                             log=lambda m: print(m, flush=True))
    except ResumeMismatch as e:
        p.error(str(e))
    if model is None:
        return

    # The best epoch on validation balanced accuracy, calibrated on validation.
    model.load_state_dict(torch.load(a.out / "best.pt", weights_only=True))
    val_logits = tta_logits(model, feats["val"], d.meta["val"])
    temperature = fit_temperature(val_logits, d.y["val"])
    val_raw = classification_metrics(d.y["val"], softmax(val_logits))
    val_cal = classification_metrics(d.y["val"], softmax(val_logits, temperature))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.out / "model.safetensors")
    run = {"config": asdict(cfg), "fusion": fusion, "command": command,
           "split": str(a.split), "best_epoch": best["epoch"], "history": model.history,
           "temperature": temperature, "age_scaler": asdict(d.scaler),
           "val_metrics": val_cal, "val_ece_before_temperature": val_raw["ece"],
           "train_seconds": time.time() - t_start - cache_seconds, "cache_seconds": cache_seconds}
    (a.out / "run.json").write_text(json.dumps(run, indent=1))
    print(f"best epoch {best['epoch']}: val bacc {val_cal['balanced_accuracy']:.4f}  "
          f"f1 {val_cal['macro_f1']:.4f}  T={temperature:.3f}  ECE {val_raw['ece']:.3f}->"
          f"{val_cal['ece']:.3f}  wrote {a.out}")


if __name__ == "__main__":
    main()
