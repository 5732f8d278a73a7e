"""Training objectives shared by train.fitting.core and the study: class weights, the three losses
and metadata dropout."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lesion_app.classifier.metadata import GROUPS
from lesion_app.classifier.vocab import CLASSES

LOSSES = ("ce", "wce", "focal")


def class_weights(y: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a uniform-class batch has mean weight 1."""
    n = np.bincount(y, minlength=len(CLASSES)).astype(float)
    return torch.tensor(len(y) / (len(CLASSES) * np.maximum(n, 1)), dtype=torch.float32)


def loss_fn(loss: str, weights: torch.Tensor, focal_gamma: float = 2.0):
    """ce, wce (class-weighted CE) or focal (class-weighted focal loss)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    w = weights if loss in ("wce", "focal") else None
    if loss == "focal":
        def focal(logits, y):
            logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
            return (-(1 - logp.exp()) ** focal_gamma * logp * w[y]).sum() / w[y].sum()
        return focal
    return lambda logits, y: F.cross_entropy(logits, y, weight=w)


def drop_metadata(meta: torch.Tensor, unknown: torch.Tensor, p: float) -> torch.Tensor:
    """Replaces each group (age, sex, site) of each row by 'unknown' with probability p."""
    meta = meta.clone()
    for cols in GROUPS.values():
        hit = (torch.rand(len(meta)) < p).to(meta.device)   # CPU draws: the same on any device
        meta[hit, cols] = unknown[cols].to(meta.device)
    return meta
