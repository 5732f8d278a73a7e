"""Trains the image-only or the fusion model on cached lower-backbone features.

    python -m train.fitting.fit --model fusion --fusion concat --out runs/fusion
    python -m train.fitting.fit --model image_only --out runs/image_only
    python -m train.fitting.fit --full ...    the whole network from decoded images (train.fitting.full, torchrun)

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
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from tqdm import tqdm

from train.data.dataset import DEFAULT_DATA, labels, load_metadata
from lesion_app.metadata import AgeScaler, encode_frame, unknown_row
from lesion_app.models import SPLIT_BLOCK, LesionClassifier
from lesion_app.preprocess import mean_over_views
from train.fitting.curriculum import SAMPLERS, EpochPlan
from train.data.features import DEFAULT_CACHE, N_VIEWS, build_cache, build_pooled_imagenet, cached_pooled
from train.fitting.loop import run_epoch
from train.data.make_split import DEFAULT_SPLIT, load_split
from train.evaluation.metrics import classification_metrics, fit_temperature, softmax
from train.fitting.objectives import LOSSES, class_weights, drop_metadata, loss_fn
from train.fitting.pooled_heads import Hyper, curriculum_rank


@dataclass
class Config:
    # Defaults are the shipped recipe (train.fitting.cv runs it on every fold). A field's allowed
    # values, where it has a fixed set, are in its metadata: the command lines check them.
    model: str = field(default="fusion", metadata={"choices": ("image_only", "fusion")})
    fusion: str = field(default="concat", metadata={"choices": ("concat", "film", "late")})  # fusion only
    loss: str = field(default="wce", metadata={"choices": LOSSES})  # wce = class-weighted; focal is weighted too
    sampler: str = field(default="curriculum", metadata={"choices": SAMPLERS})  # see train.fitting.curriculum
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
    def load(cls, data: Path, split_csv, splits=("train", "val")) -> "SplitData":
        """split_csv: a split file, or a split frame (image_id, split) such as validation_split's."""
        meta_df = load_metadata(data).set_index("image_id")
        split = split_csv if isinstance(split_csv, pd.DataFrame) else load_split(split_csv)
        frames = {s: meta_df.loc[split.loc[split["split"] == s, "image_id"]].reset_index()
                  for s in splits}
        scaler = AgeScaler.fit(frames["train"]["age"])
        row_of = {image_id: k for k, image_id in enumerate(meta_df.index)}
        return cls(list(meta_df.index), frames,
                   {s: torch.from_numpy(encode_frame(f, scaler)) for s, f in frames.items()},
                   {s: labels(f) for s, f in frames.items()},
                   {s: [row_of[i] for i in f["image_id"]] for s, f in frames.items()},
                   scaler, torch.from_numpy(unknown_row(scaler)))


VAL_FOLDS = 7   # an on-the-fly validation split is one of 7 folds: about 15% of the lesions


def validation_split(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A seeded train/val split of a metadata frame: lesion-grouped (every image of a lesion on
    one side) and dx-stratified as far as the lesions allow. Columns image_id, lesion_id, dx, split."""
    folds = min(VAL_FOLDS, df["lesion_id"].nunique())
    if folds < 2:
        raise ValueError("a validation split needs at least 2 lesions")
    if df["dx"].value_counts().max() >= folds:
        with warnings.catch_warnings():   # small folders have classes with fewer lesions than folds
            warnings.simplefilter("ignore", UserWarning)
            _, val_rows = next(StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
                               .split(df, df["dx"], df["lesion_id"]))
    else:   # too few images of any class to stratify: lesion-grouped only
        _, val_rows = next(GroupShuffleSplit(1, test_size=1 / folds, random_state=seed)
                           .split(df, groups=df["lesion_id"]))
    out = df[["image_id", "lesion_id", "dx"]].copy()
    out["split"] = "train"
    out.iloc[val_rows, out.columns.get_loc("split")] = "val"
    return out.sort_values(["split", "image_id"]).reset_index(drop=True)


def resolve_split(data: Path, split: Path | None, seed: int = 0) -> tuple[Path | pd.DataFrame, str]:
    """What to train on and how run.json names it: the given split file; the committed split for
    the shared data folder; for any other folder, validation_split made now."""
    if split is not None:
        return split, str(split)
    if Path(data).resolve() == DEFAULT_DATA.resolve():
        return DEFAULT_SPLIT, str(DEFAULT_SPLIT)
    return (validation_split(load_metadata(data), seed),
            f"made on the fly: lesion-grouped validation split of {data}, seed {seed} (out/split.csv)")


@torch.inference_mode()
def tta_logits(model: LesionClassifier, feats, meta: torch.Tensor) -> np.ndarray:
    """Mean logits over the TTA views of cached lower features (N, V, C, h, w)."""
    pooled = cached_pooled(model, feats)
    n, v, f = pooled.shape
    meta = meta.to(pooled.device) if meta is not None else None
    logits = model.head(pooled.reshape(n * v, f), None if meta is None else meta.repeat_interleave(v, 0))
    return mean_over_views(logits, v).cpu().numpy()


def save_checkpoint(path: Path, cfg: Config, model, opt, sched, epoch, history, extra):
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    torch.save({"config": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "epoch": epoch, "history": history, "extra": extra,
                "rng": rng}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def make_optimizer(cfg: Config, model: LesionClassifier, steps_per_epoch: int):
    """AdamW over the trainable parameters, the backbone's at lr * backbone_lr and the head's at
    lr, under a one-cycle schedule of cfg.epochs * steps_per_epoch steps."""
    head = list(model.head.parameters())
    backbone = [q for q in model.parameters() if q.requires_grad and not any(q is h for h in head)]
    opt = torch.optim.AdamW([{"params": backbone, "lr": cfg.lr * cfg.backbone_lr},
                             {"params": head, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[cfg.lr * cfg.backbone_lr, cfg.lr], total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.15)
    return opt, sched


def restore_checkpoint(st: dict, cfg: Config, model, opt, sched, log=print, rng: bool = True):
    """Loads a save_checkpoint dict into model, opt and sched (and the RNGs if rng); returns
    (history, first epoch to run). ResumeMismatch if it was written with other settings."""
    if st["config"] != asdict(cfg):
        raise ResumeMismatch(f"--resume needs the same settings as the interrupted run: {st['config']}")
    model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"]), sched.load_state_dict(st["sched"])
    if rng:
        torch.set_rng_state(st["rng"][0]), np.random.set_state(st["rng"][1]), random.setstate(st["rng"][2])
        if st["rng"][3] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"][3])
    log(f"resumed after epoch {st['epoch']}")
    return st["history"], st["epoch"] + 1


def epoch_line(row: dict) -> str:
    """The log line of one epoch's history row."""
    return (f"epoch {row['epoch']:2d}  " + "  ".join(f"{k.replace('_', ' ')} " + ("n/a" if v is None else f"{v:.4f}")
                                                    for k, v in row.items() if k not in ("epoch", "seconds"))
            + f"  {row['seconds']:.0f}s")


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
    n = len(y)
    opt, sched = make_optimizer(cfg, model, (n + cfg.batch - 1) // cfg.batch)
    criterion = loss_fn(cfg.loss, class_weights(y).to(device), cfg.focal_gamma)
    plan = EpochPlan(cfg.sampler, y, cfg.epochs, rank)
    meta, unknown, y_t = meta.to(device), unknown.to(device), torch.as_tensor(y, device=device)

    history, first, ckpt = [], 0, out / "checkpoint.pt"
    if resume and ckpt.exists():
        history, first = restore_checkpoint(torch.load(ckpt, weights_only=False, map_location=device),
                                            cfg, model, opt, sched, log)

    def loss_of(rows):
        idx = np.sort(rows)
        f = _views(feats, idx, np.random.randint(0, N_VIEWS, len(idx)), device)   # a random view each
        m = meta[idx]
        if model.uses_metadata and cfg.meta_dropout > 0:
            m = drop_metadata(m, unknown, cfg.meta_dropout)
        return criterion(model.head(model.upper(f.contiguous(memory_format=torch.channels_last)), m), y_t[idx])

    for epoch in range(first, cfg.epochs):
        t0 = time.time()
        # The frozen lower stages' BatchNorm stats are baked into the cache; only upper BN trains.
        model.train()
        # The curriculum draws from the epoch's own generator, so a resumed run draws the same
        # cases; none and balanced keep their historical draws from the global NumPy RNG (restored).
        order = plan.rows(epoch, EpochPlan.generator(cfg.seed, epoch) if cfg.sampler == "curriculum"
                          else np.random)
        train_loss = run_epoch(order, cfg.batch, loss_of, opt, sched, progress=lambda r: tqdm(
            r, desc=f"epoch {epoch}", leave=False, mininterval=5, disable=None))
        row = {"epoch": epoch, "train_loss": train_loss, **(after_epoch(model, epoch) if after_epoch else {}),
               "seconds": time.time() - t0}
        history.append(row)
        save_checkpoint(ckpt, cfg, model, opt, sched, epoch, history, {})
        log(epoch_line(row))
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


class BestEpoch:
    """The epoch with the best validation balanced accuracy so far: its weights in out/best.pt,
    its figures in out/best.json and, when given, its validation logits in out/best_val_logits.npy
    (each written atomically; read back with resume=True)."""

    def __init__(self, out: Path, resume: bool = False):
        self.out, self.balanced_accuracy, self.epoch = Path(out), -1.0, -1
        if resume and (self.out / "best.json").exists():
            self.__dict__.update(json.loads((self.out / "best.json").read_text()))

    def update(self, model, epoch: int, balanced_accuracy: float, val_logits: np.ndarray | None = None) -> bool:
        """Keeps this epoch if it beats the best so far; returns whether it did."""
        if balanced_accuracy <= self.balanced_accuracy:
            return False
        self.balanced_accuracy, self.epoch = balanced_accuracy, epoch
        torch.save(model.state_dict(), self.out / "best.pt.tmp")
        (self.out / "best.pt.tmp").replace(self.out / "best.pt")
        if val_logits is not None:
            np.save(self.out / "best_val_logits.tmp.npy", val_logits)
            (self.out / "best_val_logits.tmp.npy").replace(self.out / "best_val_logits.npy")
        (self.out / "best.json").write_text(json.dumps({"balanced_accuracy": balanced_accuracy, "epoch": epoch}))
        return True

    def state_dict(self, device="cpu") -> dict:
        return torch.load(self.out / "best.pt", weights_only=True, map_location=device)

    def val_logits(self) -> np.ndarray:
        return np.load(self.out / "best_val_logits.npy")


def calibration(val_logits: np.ndarray, y_val: np.ndarray) -> dict:
    """run.json's calibration fields: the temperature fitted on validation, the validation metrics
    after it and the ECE before it."""
    temperature = fit_temperature(val_logits, y_val)
    raw = classification_metrics(y_val, softmax(val_logits))
    return {"temperature": temperature, "val_metrics": classification_metrics(y_val, softmax(val_logits, temperature)),
            "val_ece_before_temperature": raw["ece"]}


def save_model(model, path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)


def summary_line(best_epoch: int, cal: dict, out: Path) -> str:
    m = cal["val_metrics"]
    return (f"best epoch {best_epoch}: val bacc {m['balanced_accuracy']:.4f}  f1 {m['macro_f1']:.4f}  "
            f"T={cal['temperature']:.3f}  ECE {cal['val_ece_before_temperature']:.3f}->{m['ece']:.3f}  wrote {out}")


def add_config_arguments(p: argparse.ArgumentParser, skip=()) -> None:
    """One flag per Config field (but those in skip), typed, with the field's choices."""
    for f in fields(Config):
        if f.name not in skip:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           choices=f.metadata.get("choices"))


def parser() -> argparse.ArgumentParser:
    """train.fitting.fit's command line: the recipe (Config), data and run flags, and train.fitting.full's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=None,
                   help="split CSV (image_id, split); default: the committed split for the shared data "
                        "folder, for any other folder a seeded lesion-grouped validation split made now")
    p.add_argument("--split-seed", type=int, default=0, help="seed of a split made on the fly")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many epochs in this invocation (resume later)")
    p.add_argument("--full", action="store_true",
                   help="fine-tune the whole network from images decoded on the fly (train.fitting.full); "
                        "runs under torchrun --nproc_per_node=N too")
    from train.fitting import full   # here, not at the top: train.fitting.full builds on this module
    full.add_arguments(p.add_argument_group("--full only"))
    return p


def main(argv=None):
    """Single-split training (the study's split): experiments only; the shipped ensembles
    come from train.fitting.cv, which calls the same train_member on every fold."""
    p = parser()
    a = p.parse_args(argv)
    cfg = Config(**{k: getattr(a, k) for k in asdict(Config())})
    from train.fitting import full
    if a.full:
        return full.main(a, p, argv)
    full.refuse_full_flags(a, p)
    fusion = "none" if cfg.model == "image_only" else cfg.fusion
    command = "python -m train.fitting.fit " + " ".join(shlex.quote(str(x)) for x in (argv or sys.argv[1:]))
    t_start = time.time()
    torch.set_num_threads(cfg.threads)

    # Data: the split (committed, given or made now); metadata encoded with train-split age stats.
    split, split_name = resolve_split(a.data, a.split, a.split_seed)
    d = SplitData.load(a.data, split)
    if isinstance(split, pd.DataFrame):
        a.out.mkdir(parents=True, exist_ok=True)
        split.to_csv(a.out / "split.csv", index=False)
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

    best = BestEpoch(a.out, a.resume)

    def validate(model, epoch):
        vm = classification_metrics(d.y["val"], softmax(tta_logits(model, feats["val"], d.meta["val"])))
        best.update(model, epoch, vm["balanced_accuracy"])
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
    model.load_state_dict(best.state_dict())
    cal = calibration(tta_logits(model, feats["val"], d.meta["val"]), d.y["val"])
    save_model(model, a.out / "model.safetensors")
    run = {"config": asdict(cfg), "fusion": fusion, "command": command,
           "split": split_name, "best_epoch": best.epoch, "history": model.history,
           "temperature": cal["temperature"], "age_scaler": asdict(d.scaler),
           "val_metrics": cal["val_metrics"], "val_ece_before_temperature": cal["val_ece_before_temperature"],
           "train_seconds": time.time() - t_start - cache_seconds, "cache_seconds": cache_seconds}
    (a.out / "run.json").write_text(json.dumps(run, indent=1))
    print(summary_line(best.epoch, cal, a.out))


if __name__ == "__main__":
    main()
