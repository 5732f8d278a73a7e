"""The training recipe, one module for every training path.

train.fitting.cv trains each cross-validation member with `train_member` (upper stages and a
head on cached lower-stage features); train.fitting.full trains the whole network from
decoded images. Both run the same epoch skeleton (`train_epochs`) over the same loop
(train.fitting.loop), with the same Config, optimiser and schedule, checkpoints and resume,
best-epoch record, calibration, command line and log.

Reads top to bottom: Config and its command-line flags -> the recipe's loss and each case's
role in it (train.fitting.objectives) -> the optimiser -> checkpoints ->
the epoch skeleton -> the cached-feature member -> the best epoch, calibration and the
run's summary -> the log.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from lesion_app.classifier.models import ARCH, SPLIT_BLOCK, LesionClassifier, head_name
from lesion_app.classifier.preprocess import mean_over_views
from train.data.dataset import dx_types, labels
from train.data.features import N_VIEWS, cached_pooled
from train.evaluation.metrics import classification_metrics, fit_temperature, softmax
from train.fitting.curriculum import SAMPLERS, EpochPlan
from train.fitting.loop import Step, run_epoch
from train.fitting.objectives import LOSSES, case_roles, class_weights, drop_metadata, loss_fn


@dataclass
class Config:
    # Defaults are the shipped recipe (train.fitting.cv runs it on every fold). A field's allowed
    # values, where it has a fixed set or a bound, are in its metadata: the command lines check them.
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
    # Melanoma against its hard negatives (train.fitting.objectives; reports/melanoma_errors.md):
    # weight of the pairwise margin term (0 = off) and its margin on the melanoma log-probability,
    # and the weight of follow-up nevi in the main loss (1 = as every other case).
    mel_margin_weight: float = field(default=0.0, metadata={"minimum": 0.0})
    mel_margin: float = 1.0
    follow_up_weight: float = field(default=1.0, metadata={"above": 0.0})
    seed: int = 0
    threads: int = 2

    @property
    def fusion_used(self) -> str:
        """The fusion this recipe trains, as run records and the manifest name it ("none" for the
        image-only model, whose fusion field is unused)."""
        return "none" if self.model == "image_only" else self.fusion

    @property
    def head(self) -> str:
        """The head this recipe trains (lesion_app.classifier.models.HEADS)."""
        return head_name(self.model, self.fusion_used)

    @property
    def uses_confirmation(self) -> bool:
        """Whether the loss needs each case's role, from how its diagnosis was confirmed
        (objectives.case_roles): the melanoma margin or follow-up weighting is on."""
        return self.mel_margin_weight != 0.0 or self.follow_up_weight != 1.0


def _flag_type(f):
    """The field's type; with a bound in its metadata (minimum: at least, above: more than), a
    parser that also checks it, so a command line refuses a value out of range."""
    kind, low, above = type(f.default), f.metadata.get("minimum"), f.metadata.get("above")
    if low is None and above is None:
        return kind

    def parse(text):
        value = kind(text)
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be more than {above}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(p: argparse.ArgumentParser, skip=()) -> None:
    """One flag per Config field (but those in skip), typed, with the field's choices or bounds."""
    for f in fields(Config):
        if f.name not in skip:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_flag_type(f), default=f.default,
                           choices=f.metadata.get("choices"))


def recipe_loss(cfg: Config, y: np.ndarray, device="cpu"):
    """The recipe's criterion(logits, y, role) for training labels y (their class weights), with
    cfg's loss, focal gamma and melanoma options (train.fitting.objectives.loss_fn)."""
    return loss_fn(cfg.loss, class_weights(y).to(device), cfg.focal_gamma, follow_up_weight=cfg.follow_up_weight,
                   mel_margin_weight=cfg.mel_margin_weight, mel_margin=cfg.mel_margin)


def case_roles_of(cfg: Config, df) -> np.ndarray | None:
    """Each row's role in cfg's loss (objectives.case_roles, from its dx and dx_type), or None
    when the recipe needs none (the melanoma options at their defaults). DatasetError when it
    needs them and the metadata has no dx_type."""
    return case_roles(labels(df), dx_types(df)) if cfg.uses_confirmation else None


def command_line(module: str, argv=None, launcher: str = "python") -> str:
    """How this run was started, for its record: `python -m module args...`."""
    args = sys.argv[1:] if argv is None else argv
    return f"{launcher} -m {module} " + " ".join(shlex.quote(str(x)) for x in args)


# ----------------------------------------------------------------------------- optimiser and checkpoints

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


class ResumeMismatch(ValueError):
    """--resume with other settings than the interrupted run."""


def save_checkpoint(path: Path, cfg: Config, model, opt, sched, epoch, history, extra):
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    torch.save({"config": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "epoch": epoch, "history": history, "extra": extra,
                "rng": rng}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def restore_checkpoint(st: dict, cfg: Config, model, opt, sched, log=print, rng: bool = True):
    """Loads a save_checkpoint dict into model, opt and sched (and the RNGs if rng); returns
    (history, first epoch to run). ResumeMismatch if it was written with other settings."""
    # A checkpoint written before a Config field existed holds that field's default.
    if {**asdict(type(cfg)()), **st["config"]} != asdict(cfg):
        raise ResumeMismatch(f"--resume needs the same settings as the interrupted run: {st['config']}")
    model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"]), sched.load_state_dict(st["sched"])
    if rng:
        torch.set_rng_state(st["rng"][0]), np.random.set_state(st["rng"][1]), random.setstate(st["rng"][2])
        if st["rng"][3] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"][3])
    log(f"resumed after epoch {st['epoch']}")
    return st["history"], st["epoch"] + 1


# ----------------------------------------------------------------------------- the epoch skeleton

def epoch_line(row: dict) -> str:
    """The log line of one epoch's history row."""
    return (f"epoch {row['epoch']:2d}  " + "  ".join(f"{k.replace('_', ' ')} " + ("n/a" if v is None else f"{v:.4f}")
                                                    for k, v in row.items() if k not in ("epoch", "seconds"))
            + f"  {row['seconds']:.0f}s")


def train_epochs(cfg: Config, model: torch.nn.Module, step: Step, *, first: int, history: list,
                 start_epoch: Callable[[int], Iterable], loss_of: Callable, end_epoch: Callable[..., dict],
                 checkpoint: Callable[[int, list], None], log=print, stop_after: int | None = None
                 ) -> list | None:
    """Epochs first .. cfg.epochs - 1 of a fixed schedule, the same for every training path.

    Each epoch: model.train(); start_epoch(epoch) returns its batches (it may seed the epoch,
    set a sampler's epoch or put frozen stages back in eval mode); one step per batch
    (train.fitting.loop); end_epoch(epoch, loss_sum, cases, t0) returns the history row's
    figures (train_loss first); checkpoint(epoch, history); one log line. Returns the history,
    or None when stop_after epochs ran in this call and training is not finished."""
    for epoch in range(first, cfg.epochs):
        t0 = time.time()
        model.train()
        loss_sum, seen = run_epoch(start_epoch(epoch), loss_of, step)
        row = {"epoch": epoch, **end_epoch(epoch, loss_sum, seen, t0), "seconds": time.time() - t0}
        history.append(row)
        checkpoint(epoch, history)
        log(epoch_line(row))
        if stop_after is not None and epoch + 1 - first >= stop_after and epoch + 1 < cfg.epochs:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return None
    return history


# ----------------------------------------------------------------------------- the cached-feature member

def _views(feats, idx: np.ndarray, view: np.ndarray, device) -> torch.Tensor:
    """feats[idx, view] as float32 on device; feats is an array or a tensor (N, V, C, h, w)."""
    if torch.is_tensor(feats):
        return feats[torch.as_tensor(idx, device=feats.device),
                     torch.as_tensor(view, device=feats.device)].to(device).float()
    return torch.from_numpy(feats[idx, view].astype(np.float32)).to(device)


def train_member(cfg: Config, feats, meta: torch.Tensor, y: np.ndarray, unknown: torch.Tensor,
                 out: Path, *, rank: np.ndarray | None = None, role: np.ndarray | None = None, device="cpu",
                 split_block: int = SPLIT_BLOCK, resume: bool = False, stop_after: int | None = None,
                 after_epoch=None, log=print, arch: str = ARCH) -> LesionClassifier | None:
    """Fine-tunes the upper stages and the head for cfg.epochs on cached lower features (of arch's
    frozen stages up to split_block).

    feats (N, N_VIEWS, C, h, w), meta (N, META_DIM) and y (N,) are the training cases; rank is
    each case's within-class difficulty (needed by the curriculum sampler), role its role in the
    loss (case_roles_of; needed by the melanoma options). A fixed schedule:
    the model after the last epoch is returned, so no held-out data chooses anything here.
    after_epoch(model, epoch) may return a dict of figures to log (e.g. validation scores).
    out/checkpoint.pt is written atomically after every epoch; resume=True continues from it.
    Returns None when stop_after epochs ran in this call and training is not finished.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    model = LesionClassifier(cfg.head, arch=arch, split_block=split_block).to(device, memory_format=torch.channels_last)
    for q in model.lower_parameters():
        q.requires_grad_(False)
    n = len(y)
    opt, sched = make_optimizer(cfg, model, (n + cfg.batch - 1) // cfg.batch)
    criterion = recipe_loss(cfg, y, device)
    plan = EpochPlan(cfg.sampler, y, cfg.epochs, rank)
    meta, unknown, y_t = meta.to(device), unknown.to(device), torch.as_tensor(y, device=device)
    role_t = None if role is None else torch.as_tensor(role, device=device)

    history, first, ckpt = [], 0, out / "checkpoint.pt"
    if resume and ckpt.exists():
        history, first = restore_checkpoint(torch.load(ckpt, weights_only=False, map_location=device),
                                            cfg, model, opt, sched, log)

    def start_epoch(epoch):
        # The frozen lower stages' BatchNorm stats are baked into the cache; only upper BN trains.
        # The curriculum draws from the epoch's own generator, so a resumed run draws the same
        # cases; none and balanced keep their historical draws from the global NumPy RNG (restored).
        order = plan.rows(epoch, EpochPlan.generator(cfg.seed, epoch) if cfg.sampler == "curriculum"
                          else np.random)
        starts = tqdm(range(0, len(order), cfg.batch), desc=f"epoch {epoch}", leave=False, mininterval=5,
                      disable=None)
        return (order[s:s + cfg.batch] for s in starts)

    def loss_of(rows):
        idx = np.sort(rows)
        f = _views(feats, idx, np.random.randint(0, N_VIEWS, len(idx)), device)   # a random view each
        m = meta[idx]
        if model.uses_metadata and cfg.meta_dropout > 0:
            m = drop_metadata(m, unknown, cfg.meta_dropout)
        logits = model.head(model.upper(f.contiguous(memory_format=torch.channels_last)), m)
        return criterion(logits, y_t[idx], None if role_t is None else role_t[idx]), len(idx)

    history = train_epochs(
        cfg, model, Step(opt, sched), first=first, history=history, start_epoch=start_epoch, loss_of=loss_of,
        end_epoch=lambda epoch, loss_sum, seen, t0: {"train_loss": loss_sum / seen,
                                                      **(after_epoch(model, epoch) if after_epoch else {})},
        checkpoint=lambda epoch, h: save_checkpoint(ckpt, cfg, model, opt, sched, epoch, h, {}),
        log=log, stop_after=stop_after)
    if history is None:
        return None
    model.history = history
    return model.eval()


@torch.inference_mode()
def tta_logits(model: LesionClassifier, feats, meta: torch.Tensor) -> np.ndarray:
    """Mean logits over the TTA views of cached lower features (N, V, C, h, w)."""
    pooled = cached_pooled(model, feats)
    n, v, f = pooled.shape
    meta = meta.to(pooled.device) if meta is not None else None
    logits = model.head(pooled.reshape(n * v, f), None if meta is None else meta.repeat_interleave(v, 0))
    return mean_over_views(logits, v).cpu().numpy()


# ----------------------------------------------------------------------------- best epoch, calibration, summary

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
    """The run record's calibration fields: the temperature fitted on validation, the validation
    metrics after it and the ECE before it."""
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


# ----------------------------------------------------------------------------- the log

class Log:
    """A run's log: each message to stdout and, time-stamped, to out/log.txt (appended, so a
    resumed run continues it). enabled=False (a DDP rank other than 0) writes nothing;
    stamp_stdout puts the time stamp on stdout too."""

    def __init__(self, out: Path | None, enabled: bool = True, stamp_stdout: bool = True):
        self.enabled, self.stamp_stdout = enabled, stamp_stdout
        self.file = open(Path(out) / "log.txt", "a") if enabled and out is not None else None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line if self.stamp_stdout else msg, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()
