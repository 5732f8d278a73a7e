"""Fine-tunes the whole network (or everything above a chosen block) from decoded images.

    python -m train.fitting.full --data DIR --out runs/full [recipe flags] [--arch A] [--size WxH]
    torchrun --standalone --nproc_per_node=N -m train.fitting.full ...     N processes (DDP)

The cross-validated members (train.fitting.cv) train the upper stages on fixed views of a frozen
trunk; this command decodes and augments every image on the fly (train.data.augment) in
DataLoader workers, with AMP on CUDA (bf16, or fp16 with a gradient scaler) and fp32 on the CPU,
on one split (train.data.splits.resolve_split). The recipe is train.fitting.recipe's: Config, the
heads, losses, metadata encoding and dropout, the samplers and curriculum (EpochPlan), the
optimiser and schedule, the epoch skeleton and loop, checkpoints and --resume, the best epoch on
validation balanced accuracy, the temperature and the run record.

Reads top to bottom: process group (train.fitting.distributed) -> backbone and its weights -> split
and metadata -> the curriculum's difficulty ranking (rank 0, shared) -> recipe.train_epochs:
each rank trains on its share of the epoch's plan, validation is sharded and gathered, rank 0
logs, keeps the best epoch and writes a checkpoint -> rank 0 writes model.safetensors (the
best epoch) and run.json (with world_size and every rank's parameter checksum).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lesion_app.classifier.models import ARCH, IMAGENET_PACKAGES, LesionClassifier, imagenet_state_dict
from lesion_app.classifier.preprocess import VIEWS, InputSpec, flip_views, mean_over_views
from train.data.augment import Augment, Normalise, decode, eval_view, train_view
from train.data.dataset import DEFAULT_DATA, DatasetError, image_path, load_image
from train.data.features import DEFAULT_CACHE, build_cache, build_pooled_imagenet
from train.data.splits import SplitData, resolve_split
from train.evaluation.metrics import classification_metrics, softmax
from train.fitting import distributed
from train.fitting.recipe import (BestEpoch, Config, Log, ResumeMismatch, add_config_arguments, calibration,
                                case_roles_of, command_line, make_optimizer, recipe_loss, restore_checkpoint,
                                save_checkpoint, save_model, summary_line, train_epochs)
from train.fitting.curriculum import EpochPlan
from train.fitting.loop import Step
from train.fitting.objectives import OTHER, drop_metadata
from train.fitting.pooled_heads import difficulty_rank

import timm  # noqa: E402  (after lesion_app.classifier.models, which keeps timm off the Hub unless told otherwise)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class FullConfig(Config):
    """Config's recipe plus what the whole-network path adds; --resume compares all of it."""
    arch: str = ARCH
    init: str = "imagenet"          # imagenet | random | the --weights-file path
    freeze_blocks: int = 0          # 0: train everything; N: conv_stem, bn1 and blocks[:N] stay frozen
    width: int = 256
    height: int = 192
    shades_of_gray: float = 0.0     # p of Shades-of-Gray colour constancy; 0 = off
    amp: str = "auto"               # auto (bf16 where supported, else fp16) | bf16 | fp16 | fp32; CPU: fp32


class BackboneError(ValueError):
    """The backbone or its weights cannot be had: says what to pass instead."""


def parser() -> argparse.ArgumentParser:
    """The command line: the recipe (Config), the data and run flags, and the whole-network flags."""
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
    p.add_argument("--arch", default=ARCH, help="timm architecture (default %(default)s)")
    p.add_argument("--weights-file", type=Path, default=None,
                   help="backbone weights (a timm state dict, .safetensors or .pth, or a model.safetensors of "
                        "this project); default: packaged ImageNet weights for tf_efficientnet_lite0, timm's "
                        "pretrained weights (Hub cache, or the Hub with HF_HUB_OFFLINE=0) for others")
    p.add_argument("--random-init", action="store_true", help="start the backbone from random weights")
    p.add_argument("--freeze-blocks", type=int, default=0,
                   help="keep conv_stem and blocks[:N] at their starting weights (EfficientNets); 0 = none")
    p.add_argument("--size", default="256x192", help="input WxH (default %(default)s, HAM10000's 4:3)")
    p.add_argument("--shades-of-gray", type=float, default=0.0, metavar="P",
                   help="Shades-of-Gray colour constancy with this p (6 is usual) in training and validation")
    p.add_argument("--amp", default="auto", choices=PRECISIONS,
                   help="CUDA precision: auto = bf16 where supported, else fp16 (CPU always fp32)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers per process (default: the CPU cores per process, at most 8)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: this rank's GPU when there is one")
    return p


# ----------------------------------------------------------------------------- the model

class WholeNetwork(LesionClassifier):
    """LesionClassifier trained end to end from images: the backbone runs timm's own forward
    (pooled features, so any timm architecture works; for EfficientNets that is exactly
    LesionClassifier.features). The state dict is LesionClassifier's: a lite0 run loads into it."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A backbone state dict from a file: timm's keys, or this project's (backbone.*, head.*)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):      # common checkpoint wrappers
            if isinstance(sd.get(key), dict):
                sd = sd[key]
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k.startswith("head."):
            continue
        out[k.removeprefix("backbone.")] = v
    return out


def build_model(cfg: FullConfig, head: str, weights_file: Path | None = None) -> tuple[WholeNetwork, str]:
    """The classifier with its backbone's starting weights loaded; returns it and where the
    weights came from. BackboneError when the architecture or its weights cannot be had."""
    if not timm.is_model(cfg.arch):
        raise BackboneError(f"--arch {cfg.arch}: timm has no such architecture")
    model = WholeNetwork(head, arch=cfg.arch, pretrained=False, split_block=max(cfg.freeze_blocks, 0))
    if cfg.init == "random":
        return model, "random initialisation"
    if weights_file is not None:
        if not weights_file.is_file():
            raise BackboneError(f"--weights-file {weights_file} not found")
        sd = read_state_dict(weights_file)
        source = f"{weights_file} (sha256 {hashlib.sha256(weights_file.read_bytes()).hexdigest()[:16]})"
    elif cfg.arch in IMAGENET_PACKAGES:
        package = IMAGENET_PACKAGES[cfg.arch][0].replace("_", "-")
        try:
            sd, source = imagenet_state_dict(cfg.arch), f"ImageNet, packaged ({package})"
        except ModuleNotFoundError as e:
            raise BackboneError(f"{e}; or pass --weights-file PATH (a timm state dict for {cfg.arch})") from None
    else:
        try:
            pretrained = timm.create_model(cfg.arch, pretrained=True, num_classes=0)
        except Exception as e:   # offline and not cached, no such weights, no network...
            raise BackboneError(
                f"no pretrained weights for {cfg.arch} can be reached here ({type(e).__name__}); only "
                f"{', '.join(IMAGENET_PACKAGES)} have packaged ImageNet weights. Pass --weights-file PATH "
                f"(a timm state dict for {cfg.arch}), allow the Hub (HF_HUB_OFFLINE=0 with a network), "
                "or --random-init.") from None
        sd, source = pretrained.state_dict(), f"timm pretrained {pretrained.pretrained_cfg.get('hf_hub_id', cfg.arch)}"
    missing, unexpected = model.backbone.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith("classifier.")}, strict=False)
    if missing or unexpected:
        raise BackboneError(f"the weights ({source}) do not fit {cfg.arch}: {len(missing)} missing keys "
                            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return model, source


def frozen_modules(model: LesionClassifier, blocks: int) -> list[torch.nn.Module]:
    """The modules --freeze-blocks keeps at their starting weights (and BatchNorm statistics)."""
    if blocks <= 0:
        return []
    b = model.backbone
    if not all(hasattr(b, n) for n in ("conv_stem", "bn1", "blocks")):
        raise BackboneError(f"--freeze-blocks needs an EfficientNet-style backbone; {model.backbone.__class__.__name__} "
                            "has no conv_stem / bn1 / blocks")
    if blocks > len(b.blocks):
        raise BackboneError(f"--freeze-blocks {blocks}: {len(b.blocks)} blocks in this backbone")
    return [b.conv_stem, b.bn1, *b.blocks[:blocks]]


def normalisation(model: LesionClassifier) -> Normalise:
    """The backbone's own normalisation (timm pretrained_cfg): preprocessing comes from the model."""
    pc = model.backbone.pretrained_cfg
    return Normalise(tuple(pc.get("mean", (0.5,) * 3)), tuple(pc.get("std", (0.5,) * 3)))


def precision(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (always on the CPU)."""
    if device.type != "cuda" or amp == "fp32":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# ----------------------------------------------------------------------------- the data

class TrainImages(Dataset):
    """Training cases by (row, draw seed), as RankShare yields them: the augmented image,
    the encoded metadata row, the label and the case's role in the loss (recipe.case_roles_of;
    objectives.OTHER for every case when the recipe needs none)."""

    def __init__(self, data: Path, image_ids, meta: torch.Tensor, y: np.ndarray, spec: InputSpec,
                 aug: Augment, normalise: Normalise, sog: float, role: np.ndarray | None = None):
        self.data, self.image_ids, self.meta, self.y = Path(data), list(image_ids), meta, np.asarray(y)
        self.role = np.full(len(self.y), OTHER) if role is None else np.asarray(role)
        self.spec, self.aug, self.normalise, self.sog = spec, aug, normalise, sog
        # Decode at least what the smallest crop needs (train_view shrinks from there).
        self.draft = (math.ceil(spec.width / math.sqrt(aug.min_area)), math.ceil(spec.height / math.sqrt(aug.min_area)))

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, key):
        row, seed = key
        image = decode(image_path(self.data, self.image_ids[row]), *self.draft)
        x = train_view(image, self.spec, self.aug, torch.Generator().manual_seed(seed), self.normalise, self.sog)
        return x, self.meta[row], int(self.y[row]), int(self.role[row])


class EvalImages(Dataset):
    """Validation cases by row: the row, the evaluation view (the app's preprocessing, from the
    full-resolution decode) and the encoded metadata row."""

    def __init__(self, data: Path, image_ids, meta: torch.Tensor, spec: InputSpec, normalise: Normalise, sog: float):
        self.data, self.image_ids, self.meta = Path(data), list(image_ids), meta
        self.spec, self.normalise, self.sog = spec, normalise, sog

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, row):
        return row, eval_view(load_image(self.data, self.image_ids[row]), self.spec, self.normalise, self.sog), self.meta[row]


@torch.inference_mode()
def predict(model: LesionClassifier, loader: DataLoader, n: int, dist, dtype) -> np.ndarray:
    """Mean logits over the 4 flips (the app's test-time views) of this rank's validation rows,
    gathered from every rank: (n, classes), on every rank."""
    model.eval()
    rows, out = [], []
    for r, x, m in loader:
        x = flip_views(x.to(dist.device)).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dist.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z = model(x, m.to(dist.device).repeat_interleave(len(VIEWS), 0)).float()
        out.append(mean_over_views(z, len(VIEWS)).cpu().numpy())
        rows += r.tolist()
    logits = np.concatenate(out) if out else np.zeros((0, model.head.fc.out_features), np.float32)
    return distributed.gather_rows(rows, logits, n, dist)


# ----------------------------------------------------------------------------- the loop

def train_full(cfg: FullConfig, model: WholeNetwork, d: SplitData, data: Path, out: Path, dist, *,
               rank: np.ndarray | None, workers: int, resume: bool = False, stop_after: int | None = None,
               log=print):
    """Fine-tunes model on d's training split for cfg.epochs, validating after every epoch.

    Every rank calls it with the same arguments; rank 0 keeps the best epoch (BestEpoch) and
    writes out/checkpoint.pt after every epoch, and resume=True continues from it. Returns
    (model after the last epoch, history), or None when stop_after epochs ran in this call
    and training is not finished."""
    dev = dist.device
    frozen = frozen_modules(model, cfg.freeze_blocks)
    for m in frozen:
        m.requires_grad_(False)
    model.to(dev, memory_format=torch.channels_last)
    y = d.y["train"]
    share = distributed.RankShare(EpochPlan(cfg.sampler, y, cfg.epochs, rank), cfg.seed, dist.rank, dist.world)
    per_rank = cfg.batch // dist.world
    opt, sched = make_optimizer(cfg, model, math.ceil(len(share) / per_rank))
    ckpt, history, first = out / "checkpoint.pt", [], 0
    # Rank 0 reads the checkpoint and sends it, so other nodes need no shared folder.
    st = distributed.broadcast(torch.load(ckpt, weights_only=False, map_location="cpu")
                               if dist.main and resume and ckpt.exists() else None, dist)
    if st is not None:
        history, first = restore_checkpoint(st, cfg, model, opt, sched, log, rng=False)
        if st["extra"].get("world_size", 1) != dist.world:
            log(f"note: the checkpoint was written by {st['extra'].get('world_size', 1)} processes, this run has "
                f"{dist.world}: the rest of training is valid but not identical to an uninterrupted run")
    net = distributed.wrap(model, dist)
    criterion = recipe_loss(cfg, y, dev)
    role = case_roles_of(cfg, d.frames["train"])     # None unless the melanoma options are on
    unknown = d.unknown.to(dev)
    spec, aug, norm = InputSpec(cfg.width, cfg.height), Augment(), normalisation(model)
    loader_args = {"num_workers": workers, "pin_memory": dev.type == "cuda", "persistent_workers": workers > 0}
    train_loader = DataLoader(TrainImages(data, d.frames["train"]["image_id"], d.meta["train"], y, spec, aug, norm,
                                          cfg.shades_of_gray, role), batch_size=per_rank, sampler=share,
                              generator=torch.Generator(), **loader_args)
    n_val = len(d.y["val"])
    val_loader = DataLoader(EvalImages(data, d.frames["val"]["image_id"], d.meta["val"], spec, norm, cfg.shades_of_gray),
                            batch_size=max(1, per_rank), sampler=distributed.shard(n_val, dist), **loader_args)
    dtype = precision(cfg.amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    best = BestEpoch(out, resume) if dist.main else None

    def start_epoch(epoch):
        # Dropout and metadata dropout draw from a generator of this epoch and rank: a resumed
        # run draws the same, and no RNG state has to travel between ranks.
        torch.manual_seed(distributed.rank_seed(cfg.seed, epoch, dist.rank))
        share.set_epoch(epoch)
        for m in frozen:
            m.eval()    # frozen stages keep their BatchNorm statistics too
        return train_loader

    def loss_of(batch):
        x, m, yb, rb = batch
        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        m, yb, rb = m.to(dev, non_blocking=True), yb.to(dev, non_blocking=True), rb.to(dev, non_blocking=True)
        if model.uses_metadata and cfg.meta_dropout > 0:
            m = drop_metadata(m, unknown, cfg.meta_dropout)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(x, m)
        return criterion(logits.float(), yb, rb), len(yb)

    def end_epoch(epoch, loss_sum, seen, t0):
        loss_sum, seen = distributed.all_sum([loss_sum, seen], dist)
        train_seconds = time.time() - t0
        distributed.sync_buffers(model, dist)      # validate (and save) rank 0's model everywhere
        val_logits = predict(model, val_loader, n_val, dist, dtype)
        vm = classification_metrics(d.y["val"], softmax(val_logits))
        if dist.main:
            best.update(model, epoch, vm["balanced_accuracy"], val_logits)
        return {"train_loss": loss_sum / seen, "val_bacc": vm["balanced_accuracy"], "val_f1": vm["macro_f1"],
                "val_auc": vm["macro_auc"], "images_per_second": seen / train_seconds,
                "train_seconds": train_seconds}

    def checkpoint(epoch, history):
        if dist.main:
            save_checkpoint(ckpt, cfg, model, opt, sched, epoch, history, {"world_size": dist.world})

    history = train_epochs(cfg, model, Step(opt, sched, scaler), first=first, history=history,
                           start_epoch=start_epoch, loss_of=loss_of, end_epoch=end_epoch, checkpoint=checkpoint,
                           log=log, stop_after=stop_after)
    return None if history is None else (model, history)


def default_workers(dist) -> int:
    return max(1, min(8, (os.cpu_count() or 1) // dist.local_world))


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    try:
        width, height = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be WxH, e.g. 256x192, got {a.size!r}")
    init = "random" if a.random_init else str(a.weights_file) if a.weights_file else "imagenet"
    cfg = FullConfig(**{k: getattr(a, k) for k in asdict(Config())}, arch=a.arch, init=init,
                     freeze_blocks=a.freeze_blocks, width=width, height=height,
                     shades_of_gray=a.shades_of_gray, amp=a.amp)
    t_start = time.time()
    dist = distributed.setup(a.device)
    try:
        if cfg.batch % dist.world:
            p.error(f"--batch {cfg.batch} must be a multiple of the number of processes ({dist.world}): "
                    "it is the batch of one step over all of them")
        if dist.device.type == "cuda":
            torch.backends.cudnn.benchmark = True    # one input size throughout
        threads = max(1, cfg.threads // dist.local_world)    # --threads is the machine's, shared by its ranks
        torch.set_num_threads(threads)
        workers = default_workers(dist) if a.workers is None else a.workers
        out = a.out
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
        log = Log(out, enabled=dist.main, stamp_stdout=False)

        torch.manual_seed(cfg.seed)   # the head's initialisation (DDP then starts every rank from rank 0's)
        try:
            model, weights_source = build_model(cfg, cfg.head, a.weights_file)
        except BackboneError as e:
            p.error(str(e))
        dtype = precision(cfg.amp, dist.device)
        device_name = (torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda"
                       else f"cpu ({threads} threads per process)")
        log(f"{dist.world} process(es) ({dist.backend or 'single'}), {device_name}, "
            f"{str(dtype).removeprefix('torch.') if dtype else 'fp32'}, {workers} loader worker(s) each; "
            f"{cfg.arch} from {weights_source}")

        split, split_name = resolve_split(a.data, a.split, a.split_seed)
        d = SplitData.load(a.data, split)
        if dist.main and isinstance(split, pd.DataFrame):
            split.to_csv(out / "split.csv", index=False)
        log(f"{len(d.y['train'])} training and {len(d.y['val'])} validation images ({split_name})")

        rank, rank_seconds = None, 0.0
        if cfg.sampler == "curriculum":
            if dist.main:   # the cached path's ranking, from frozen ImageNet lite0 features
                t = time.time()
                device = str(dist.device)
                build_cache(a.data, d.image_ids, a.cache, device=device, workers=workers,
                            batch_images=32 if dist.device.type == "cuda" else 2)
                pooled = build_pooled_imagenet(a.data, d.image_ids, a.cache, device=device)
                rank = difficulty_rank(pooled[d.rows["train"]], d.meta["train"], d.y["train"],
                                       d.frames["train"]["lesion_id"], d.unknown, cfg.seed, device)
                rank_seconds = time.time() - t
                log(f"curriculum difficulty ranked in {rank_seconds:.0f} s")
            rank = distributed.broadcast(rank, dist)

        t_train = time.time()
        try:
            done = train_full(cfg, model, d, a.data, out, dist, rank=rank, workers=workers,
                              resume=a.resume, stop_after=a.stop_after, log=log)
        except (ResumeMismatch, DatasetError) as e:    # DatasetError: no dx_type for the melanoma options
            p.error(str(e))
        if done is None:
            return 0
        model, history = done
        checksums = distributed.all_gather(distributed.parameter_sha256(model), dist)
        if not dist.main:
            return 0
        if len(set(checksums)) > 1:
            log(f"warning: the ranks ended with different weights: {checksums}")

        # The best epoch on validation balanced accuracy, calibrated on its validation logits.
        best = BestEpoch(out, resume=True)
        model.load_state_dict(best.state_dict(dist.device))
        cal = calibration(best.val_logits(), d.y["val"])
        save_model(model, out / "model.safetensors")
        launcher = (f"torchrun --nnodes={dist.world // dist.local_world} --nproc_per_node={dist.local_world}"
                    if dist.active else "python")
        norm = normalisation(model)
        run = {"config": asdict(cfg), "fusion": cfg.fusion_used, "full": True,
               "command": command_line("train.fitting.full", argv, launcher),
               "split": split_name, "world_size": dist.world, "backend": dist.backend, "device": device_name,
               "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
               "per_process_batch": cfg.batch // dist.world, "loader_workers_per_process": workers,
               "backbone": {"arch": cfg.arch, "weights": weights_source, "frozen_blocks": cfg.freeze_blocks},
               "input": {"width": cfg.width, "height": cfg.height, "mean": list(norm.mean), "std": list(norm.std),
                         "interpolation": InputSpec().interpolation, "shades_of_gray_p": cfg.shades_of_gray},
               "augment": Augment().to_dict(), "best_epoch": best.epoch, "history": history,
               "temperature": cal["temperature"], "age_scaler": asdict(d.scaler),
               "val_metrics": cal["val_metrics"], "val_ece_before_temperature": cal["val_ece_before_temperature"],
               "rank_param_sha256": checksums, "curriculum_seconds": rank_seconds,
               "train_seconds": time.time() - t_train, "total_seconds": time.time() - t_start}
        (out / "run.json").write_text(json.dumps(run, indent=1))
        log(summary_line(best.epoch, cal, out))
        return 0
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    sys.exit(main())
