"""A cross-validated run's members: which they are, what their files hold, and the run's logits.

Shared by the commands that train them (train.fitting.cv on the CPU, train.fitting.gpu_cv on a
GPU), by train.fitting.gpu_files (which unpacks a GPU run into cv's layout) and by
train.fitting.segmentation (the folds in image order), so that no command imports another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_app.classifier.models import LesionClassifier
from lesion_app.classifier.vocab import CLASSES
from train.data.logits import logits_frame, write_logits
from train.evaluation.metrics import classification_metrics, fit_temperature, softmax

KINDS = ("image_only", "fusion")


def member_dir(out: Path, kind: str, fold: int) -> Path:
    return Path(out) / f"{kind}_fold{fold}"


def upper_state(model: LesionClassifier) -> dict[str, torch.Tensor]:
    """What a member file holds: the fine-tuned upper stages and head, fp16 (the trunk is shared)."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
            for k, v in model.state_dict().items() if not model.is_lower_key(k)}


def round_to_fp16(model: LesionClassifier) -> LesionClassifier:
    """Rounds every weight to fp16 and back, so scores describe the shipped fp16 files."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def fold_frames(md: pd.DataFrame, folds: pd.DataFrame, heldout: pd.DataFrame) -> pd.DataFrame:
    """The metadata in image order with each image's fold and whether it is held out."""
    if set(md["image_id"]) != set(folds["image_id"]):
        extra, missing = set(folds["image_id"]) - set(md["image_id"]), set(md["image_id"]) - set(folds["image_id"])
        raise SystemExit(f"error: the folds file does not match the data folder ({len(missing)} images "
                         f"without a fold, {len(extra)} fold rows without an image); make folds for this "
                         "folder with python -m train.data.make_folds --data DIR --out FILE")
    df = md.merge(folds[["image_id", "fold"]], on="image_id", how="left")
    df["heldout"] = df["image_id"].isin(set(heldout["image_id"]))
    return df


def collect(out: Path, df: pd.DataFrame, y: np.ndarray, kinds, n_folds: int) -> dict:
    """Writes oof_logits.csv and heldout_logits.csv from the members; fits each kind's
    temperature on its out-of-fold logits; returns the summary figures."""
    oof_frames, held_frames, summary = [], [], {"out_of_fold": {}, "heldout": {}}
    for kind in kinds:
        oof = np.zeros((len(df), len(CLASSES)), np.float32)
        held = []
        for fold in range(n_folds):
            z = np.load(member_dir(out, kind, fold) / "logits.npz")
            oof[z["oof_rows"]] = z["oof"]
            held.append(z["heldout"])
            held_rows = z["heldout_rows"]
        temperature = fit_temperature(oof, y)
        raw, cal = (classification_metrics(y, softmax(oof, t)) for t in (1.0, temperature))
        summary["out_of_fold"][kind] = {**{k: cal[k] for k in ("balanced_accuracy", "macro_f1", "macro_auc", "ece")},
                                        "ece_before_temperature": raw["ece"], "temperature": temperature}
        oof_frames.append(logits_frame(oof, image_id=df["image_id"], fold=df["fold"], model=kind))
        if len(held_rows):
            stack = np.stack(held)                              # (folds, n_heldout, C)
            yh = y[held_rows]
            members = [classification_metrics(yh, softmax(s, temperature))["balanced_accuracy"] for s in stack]
            ens = classification_metrics(yh, softmax(stack.mean(0), temperature))["balanced_accuracy"]
            summary["heldout"][kind] = {"n": int(len(held_rows)), "member_balanced_accuracy": members,
                                        "ensemble_balanced_accuracy": ens}
            held_frames += [logits_frame(s, image_id=df["image_id"].to_numpy()[held_rows], model=kind, member=fold)
                            for fold, s in enumerate(stack)]
    write_logits(oof_frames, out / "oof_logits.csv")
    if held_frames:
        write_logits(held_frames, out / "heldout_logits.csv")
    return summary
