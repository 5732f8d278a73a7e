"""Lesion segmentation on the shared trunk: out-of-fold on the 5 folds, then the shipped decoder.

    python -m train.fitting.segmentation --out runs/seg [--data DIR] [--folds FILE] [--epochs 12]

Reads top to bottom: the folds and the held-out slice -> the trunk's stage outputs of every
image's unflipped view (lesion_app.classifier.segmenter.lower_with_stages, computed once, fp16,
resumable) and its mask at the input size -> per fold, a decoder trained on every other fold
(minus the held-out slice) and its masks on its own fold (out-of-fold) -> one decoder on every
image outside the held-out slice, scored on the slice as the app draws its masks (4 flip views
averaged, the largest region; --oof-views 1 scores the out-of-fold masks from the cached unflipped
view, faster and a little lower) -> out/segmentation.json (Dice, Jaccard
and ISIC 2018's threshold Jaccard, each with lesion-bootstrap CIs) and out/oof_masks.npz (each
image's out-of-fold mask at its own size, for the lesion-measure study).
`python -m train.release.segmenter --run out` ships out/final.safetensors with its manifest entry.

Resumable per unit: a decoder already written (out/fold{k}.safetensors, out/final.safetensors)
is skipped, so the same command continues after an interruption. Scores are computed at each
image's own size (200x150 here), as `train.evaluation.evaluate --masks-out` writes masks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lesion_app.classifier.models import ARCH, LesionClassifier
from lesion_app.classifier.preprocess import InputSpec, flip_views, to_tensor
from lesion_app.classifier.segmenter import OUTPUT_STRIDE, STAGES, LesionSegmenter, lower_with_stages, mask_for_image
from train.data.dataset import DEFAULT_DATA, load_image, load_mask, load_metadata
from train.data.features import DEFAULT_CACHE
from train.data.splits import DEFAULT_FOLDS, load_folds, load_heldout
from train.evaluation.segmentation_metrics import mask_scores, summarise
from train.fitting.recipe import Log, command_line
from train.fitting.members import fold_frames

FILE = "segmenter.safetensors"


# ----------------------------------------------------------------------------- the stage cache

@torch.inference_mode()
def stage_cache(data: Path, ids: list[str], cache: Path, spec: InputSpec, log=print) -> list[np.ndarray]:
    """Per stage, an (N, C, h, w) fp16 memmap of the trunk's stage outputs for the unflipped view
    of each image (resumable: progress.json counts the images done)."""
    trunk = LesionClassifier("image_only", split_block=max(STAGES) + 1).eval()
    key = json.dumps(["segmentation", ARCH, list(STAGES), spec.to_dict(), ids])
    out = Path(cache) / f"segmentation_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    out.mkdir(parents=True, exist_ok=True)
    progress = out / "progress.json"
    done = json.loads(progress.read_text())["done"] if progress.exists() else 0
    shapes = [s.shape[1:] for s in lower_with_stages(trunk, torch.zeros(1, 3, spec.height, spec.width))[1]]
    arrays = [np.lib.format.open_memmap(out / f"stage{k}.npy", mode="r+" if done else "w+", dtype=np.float16,
                                        shape=(len(ids), *shape)) for k, shape in enumerate(shapes)]
    t0, batch = time.time(), 16
    for start in range(done, len(ids), batch):
        chunk = ids[start:start + batch]
        x = torch.stack([to_tensor(load_image(data, i), spec) for i in chunk])
        _, stages = lower_with_stages(trunk, x.contiguous(memory_format=torch.channels_last))
        for a, s in zip(arrays, stages):
            a[start:start + len(chunk)] = s.half().numpy()
        if (start // batch) % 50 == 0 or start + len(chunk) == len(ids):
            for a in arrays:
                a.flush()
            progress.write_text(json.dumps({"done": start + len(chunk)}))
            log(f"stage cache: {start + len(chunk)} of {len(ids)} images ({time.time() - t0:.0f} s)")
    return [np.load(out / f"stage{k}.npy", mmap_mode="r") for k in range(len(shapes))]


def target_masks(data: Path, ids: list[str], spec: InputSpec) -> np.ndarray:
    """(N, H/4, W/4) float16: each image's mask as the lesion's share of each of the decoder's
    output cells (the mask at the input size, averaged over 4x4 cells)."""
    size = (spec.width // OUTPUT_STRIDE, spec.height // OUTPUT_STRIDE)
    return np.stack([np.asarray(Image.fromarray((load_mask(data, i) * 255).astype(np.uint8))
                                .resize((spec.width, spec.height), Image.Resampling.NEAREST)
                                .resize(size, Image.Resampling.BOX), np.float32) / 255 for i in ids]).astype(np.float16)


# ----------------------------------------------------------------------------- one decoder

def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def train_decoder(stages: list[np.ndarray], masks: np.ndarray, rows: np.ndarray, epochs: int, seed: int,
                  batch: int = 32, lr: float = 3e-3, log=print) -> LesionSegmenter:
    """A decoder fitted on `rows` of the cached stages (BCE + Dice against each output cell's lesion
    share, AdamW, one-cycle), each batch flipped at random (features and mask together)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LesionSegmenter().train()
    steps = epochs * ((len(rows) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for epoch in range(epochs):
        t0, total = time.time(), 0.0
        order = rng.permutation(rows)
        for s in range(0, len(order), batch):
            idx = np.sort(order[s:s + batch])
            feats = [torch.from_numpy(a[idx].astype(np.float32)) for a in stages]
            target = torch.from_numpy(masks[idx].astype(np.float32))[:, None]
            dims = [d for d, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)) if flip]
            if dims:
                feats, target = [f.flip(dims) for f in feats], target.flip(dims)
            logits = model(feats)
            loss = F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch:2d}  loss {total / len(rows):.4f}  {time.time() - t0:.0f}s")
    return model.eval()


@torch.inference_mode()
def predict_masks(model: LesionSegmenter, stages_of, rows: np.ndarray, sizes: list[tuple[int, int]], spec: InputSpec,
                  batch: int = 16) -> list[np.ndarray]:
    """Each row's outline at its image's own size: stages_of(rows) -> (stages, views) of their
    views (flip_views' order), each view's map flipped back and averaged, then mask_for_image
    (threshold, largest region, holes filled)."""
    out = []
    for s in range(0, len(rows), batch):
        idx = rows[s:s + batch]
        stages, views = stages_of(idx)
        p = model.probabilities(stages, (spec.height, spec.width), views).numpy()
        out += [mask_for_image(pi, sizes[i], spec) for pi, i in zip(p, idx)]
    return out


def cached_view(stages: list[np.ndarray]):
    """stages_of for the cached unflipped view (fast; the app averages 4 flip views)."""
    return lambda idx: ([torch.from_numpy(a[idx].astype(np.float32)) for a in stages], 1)


def flip_views_of(trunk: LesionClassifier, data: Path, ids: list[str], spec: InputSpec):
    """stages_of as the app computes them: the trunk's stages of each image's 4 flip views."""
    def stages_of(idx):
        views = flip_views(torch.stack([to_tensor(load_image(data, ids[i]), spec) for i in idx]))
        _, stages = lower_with_stages(trunk, views.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return stages, views.shape[1]
    return stages_of


# ----------------------------------------------------------------------------- the command

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--oof-views", type=int, default=4, choices=(1, 4),
                   help="out-of-fold masks from 4 flip views as the app draws them (default), or from the cached "
                        "unflipped view only (4 times faster, a little lower)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    log = Log(a.out)
    spec = InputSpec()   # the shipped trunk's input (train.release.segmenter checks the manifest agrees)
    df = fold_frames(load_metadata(a.data), load_folds(a.folds), load_heldout(a.folds))
    ids = list(df["image_id"])
    times_file = a.out / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}

    def timed(name, fn):
        t = time.time()
        result = fn()
        times.setdefault(name, round(time.time() - t, 1))
        times_file.write_text(json.dumps(times, indent=1))
        return result

    stages = timed("stage_cache", lambda: stage_cache(a.data, ids, a.cache, spec, log))
    masks = timed("masks", lambda: target_masks(a.data, ids, spec))
    truth = [load_mask(a.data, i) for i in ids]
    sizes = [(m.shape[1], m.shape[0]) for m in truth]
    held = df["heldout"].to_numpy()
    folds = df["fold"].to_numpy()
    lesions = df["lesion_id"].to_numpy()

    oof: list = [None] * len(ids)
    as_served = flip_views_of(LesionClassifier("image_only", split_block=max(STAGES) + 1).eval(), a.data, ids, spec)
    oof_views = as_served if a.oof_views == 4 else cached_view(stages)
    for fold in range(int(folds.max()) + 1):
        f = a.out / f"fold{fold}.safetensors"
        train_rows = np.flatnonzero((folds != fold) & ~held)
        if not f.exists():
            t = time.time()
            model = train_decoder(stages, masks, train_rows, a.epochs, a.seed + fold,
                                  log=lambda m, k=fold: log(f"fold {k}: {m}"))
            model.save(f)
            times[f"fold{fold}"] = round(time.time() - t, 1)
            times_file.write_text(json.dumps(times, indent=1))
            log(f"fold {fold}: trained in {times[f'fold{fold}']:.0f} s")
        score_rows = np.flatnonzero(folds == fold)
        for i, m in zip(score_rows, predict_masks(LesionSegmenter.load(f), oof_views, score_rows, sizes, spec)):
            oof[i] = m
    final = a.out / "final.safetensors"
    if not final.exists():
        t = time.time()
        model = train_decoder(stages, masks, np.flatnonzero(~held), a.epochs, a.seed + 100,
                              log=lambda m: log(f"final: {m}"))
        model.save(final)
        times["final"] = round(time.time() - t, 1)
        times_file.write_text(json.dumps(times, indent=1))
    held_rows = np.flatnonzero(held)
    held_masks = predict_masks(LesionSegmenter.load(final), as_served, held_rows, sizes, spec)

    outside = np.flatnonzero(~held)
    scores = mask_scores([oof[i] for i in outside], [truth[i] for i in outside])
    held_scores = mask_scores(held_masks, [truth[i] for i in held_rows])
    summary = {
        "command": command_line("train.fitting.segmentation", argv),
        "architecture": {"decoder": "feature pyramid over the frozen trunk's blocks[1..3] (strides 4, 8, 16), "
                                    "32 channels, image-level context (the mean feature) at stride 16, "
                                    "one logit per cell at stride 4, bilinear to the input",
                         "stages": list(STAGES), "input": spec.to_dict(), "loss": "BCE + soft Dice against each stride-4 cell's lesion share",
                         "epochs": a.epochs, "augmentation": "random horizontal and vertical flips",
                         "served_as": "the map averaged over the image's 4 flip views, thresholded at 0.5, "
                                      "largest region with holes filled, at the image's own size"},
        "out_of_fold_views": a.oof_views, "heldout_views": 4,
        "out_of_fold": summarise(scores, lesions[outside], a.n_boot),
        "heldout": summarise(held_scores, lesions[held_rows], a.n_boot),
        "n_out_of_fold": int(len(outside)), "n_heldout": int(len(held_rows)),
        "wall_time_seconds": times, "device": f"cpu ({a.threads} threads)",
    }
    (a.out / "segmentation.json").write_text(json.dumps(summary, indent=1))
    np.savez_compressed(a.out / "oof_masks.npz", image_id=np.array(ids),
                        **{"mask_" + i: np.packbits(m) for i, m in zip(ids, oof)},
                        shape=np.array([truth[0].shape]))
    o = summary["out_of_fold"]
    log(f"out-of-fold: Dice {o['dice']['mean']:.4f} {o['dice']['ci']}  Jaccard {o['jaccard']['mean']:.4f}  "
        f"threshold Jaccard {o['threshold_jaccard']['mean']:.4f}")
    h = summary["heldout"]
    log(f"held-out slice: Dice {h['dice']['mean']:.4f}  threshold Jaccard {h['threshold_jaccard']['mean']:.4f}")
    log(f"done in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
