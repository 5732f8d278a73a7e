"""Heads trained on cached pooled features (seconds each on the CPU): the study's arms and
the curriculum's out-of-fold difficulty scorers. The features are those of
train.data.features.build_pooled_imagenet: (n, N_VIEWS, F) per split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from sklearn.model_selection import GroupKFold

from lesion_app.classifier.models import HEADS, META_HIDDEN, Head
from lesion_app.classifier.preprocess import mean_over_views
from lesion_app.classifier.vocab import CLASSES
from train.fitting.curriculum import EpochPlan, difficulty, within_class_rank
from train.data.features import N_VIEWS, TTA_VIEWS
from train.fitting.loop import Step, batches_of, run_epoch
from train.evaluation.metrics import softmax
from train.fitting.objectives import class_weights, drop_metadata, loss_fn


class MetadataOnlyHead(Head):
    """Age, sex and site alone: the second expert of decision-level fusion."""
    def build(self, feat_dim, num_classes):
        self.fc = nn.Linear(META_HIDDEN, num_classes)

    def combine(self, feat, meta):
        return self.fc(meta)


HEAD_KINDS = {**HEADS, "metadata_only": MetadataOnlyHead}


@dataclass
class Hyper:
    epochs: int = 40
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    dropout: float = 0.3
    meta_dropout: float = 0.1
    folds: int = 5          # out-of-fold scoring for the curriculum's difficulty


def train_head(head_kind: str, x: torch.Tensor, meta: torch.Tensor, y: np.ndarray,
               unknown: torch.Tensor, loss: str, sampling: str, hp: Hyper, seed: int,
               rank: np.ndarray | None = None) -> Head:
    """Trains one head on pooled features x (n, N_VIEWS, F), a random view per case per
    epoch; sampling none | balanced | curriculum (which needs each case's difficulty rank).
    Runs on x's device; meta and unknown must be on it too."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = HEAD_KINDS[head_kind](x.shape[-1], len(CLASSES), hp.dropout).to(x.device)
    weights = class_weights(y)
    criterion = loss_fn(loss, weights.to(x.device))
    opt = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    n = len(y)
    steps = (n + hp.batch - 1) // hp.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=hp.epochs * steps,
                                                pct_start=0.15)
    plan = EpochPlan(sampling, y, hp.epochs, rank)
    y_t = torch.as_tensor(np.array(y), device=x.device)

    def loss_of(idx):
        f = x[idx, rng.integers(0, N_VIEWS, len(idx))]
        m = drop_metadata(meta[idx], unknown, hp.meta_dropout) if head.uses_metadata else meta[idx]
        return criterion(head(f, m), y_t[idx]), len(idx)
    head.train()
    step = Step(opt, sched)
    for epoch in range(hp.epochs):
        run_epoch(batches_of(plan.rows(epoch, rng), hp.batch), loss_of, step)
    return head.eval()


@torch.inference_mode()
def head_probs(head: Head, x: torch.Tensor, meta: torch.Tensor) -> np.ndarray:
    """Softmax of the mean logits over the evaluation views, as the members are evaluated."""
    n, _, f = x.shape
    logits = head(x[:, :TTA_VIEWS].reshape(n * TTA_VIEWS, f), meta.repeat_interleave(TTA_VIEWS, 0))
    return softmax(mean_over_views(logits, TTA_VIEWS).cpu().numpy())


def curriculum_rank(x, meta, y, groups, unknown, hp: Hyper, seed: int) -> tuple[np.ndarray, dict]:
    """Within-class difficulty rank of each training case from out-of-fold single-modality
    confidences (image-only and metadata-only heads, weighted CE, lesion-grouped folds)."""
    conf = {"image_only": np.zeros(len(y)), "metadata_only": np.zeros(len(y))}
    folds = GroupKFold(min(hp.folds, len(set(groups))))
    for fit_rows, score_rows in folds.split(np.zeros(len(y)), y, groups):
        for kind in conf:
            head = train_head(kind, x[fit_rows], meta[fit_rows], y[fit_rows], unknown, "wce",
                              "none", hp, seed)
            p = head_probs(head, x[score_rows], meta[score_rows])
            conf[kind][score_rows] = p[np.arange(len(score_rows)), y[score_rows]]
    d = difficulty(conf["image_only"], conf["metadata_only"])
    summary = {k: {"mean_true_class_confidence": float(v.mean())} for k, v in conf.items()}
    summary["difficulty_by_class"] = {c: float(d[y == k].mean()) for k, c in enumerate(CLASSES)}
    return within_class_rank(d, y), summary


def difficulty_rank(pooled_imagenet: np.ndarray, meta: torch.Tensor, y: np.ndarray, lesion_ids,
                    unknown: torch.Tensor, seed: int, device="cpu") -> np.ndarray:
    """The curriculum's within-class difficulty of each training case, from out-of-fold
    heads on frozen pooled features of these cases only (lesion-grouped inner folds)."""
    x = torch.from_numpy(pooled_imagenet.astype(np.float32)).to(device)
    rank, _ = curriculum_rank(x, meta.to(device), y, np.asarray(lesion_ids), unknown.to(device),
                              Hyper(), seed)
    return rank
