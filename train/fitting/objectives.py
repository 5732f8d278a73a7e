"""Training objectives shared by train.fitting.recipe and the study: class weights, the three losses,
the melanoma margin term, follow-up weighting and metadata dropout."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lesion_app.classifier.metadata import GROUPS
from lesion_app.classifier.vocab import CLASSES

LOSSES = ("ce", "wce", "focal")
MEL = CLASSES.index("mel")

# A training case's role in the objective (case_roles). Hard negatives: nevi and keratoses whose
# diagnosis histology or expert consensus confirmed, the images the out-of-fold study found
# melanoma confused with (reports/melanoma_errors.md: melanoma vs histology nevi AUC 0.73, vs
# follow-up nevi 0.98). Follow-up nevi: nevi confirmed by follow-up, the easy negatives.
OTHER, HARD_NEGATIVE, FOLLOW_UP_NEVUS = 0, 1, 2
HARD_NEGATIVE_CLASSES = ("nv", "bkl")
HARD_NEGATIVE_CONFIRMATIONS = ("histo", "consensus")
FOLLOW_UP = "follow_up"


def class_weights(y: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a uniform-class batch has mean weight 1."""
    n = np.bincount(y, minlength=len(CLASSES)).astype(float)
    return torch.tensor(len(y) / (len(CLASSES) * np.maximum(n, 1)), dtype=torch.float32)


def case_roles(y: np.ndarray, dx_type) -> np.ndarray:
    """Each case's role (int64): HARD_NEGATIVE for an nv or bkl case whose dx_type is histo or
    consensus, FOLLOW_UP_NEVUS for an nv case whose dx_type is follow_up, OTHER for the rest
    (melanomas are known by their label)."""
    y, dx_type = np.asarray(y), np.asarray(dx_type, dtype=object)
    nv = y == CLASSES.index("nv")
    hard = np.isin(y, [CLASSES.index(c) for c in HARD_NEGATIVE_CLASSES]) & np.isin(dx_type, HARD_NEGATIVE_CONFIRMATIONS)
    return np.where(hard, HARD_NEGATIVE, np.where(nv & (dx_type == FOLLOW_UP), FOLLOW_UP_NEVUS, OTHER)).astype(np.int64)


def mel_margin_term(logits: torch.Tensor, y: torch.Tensor, role: torch.Tensor, margin: float) -> torch.Tensor:
    """The mean, over the batch's pairs (melanoma i, hard negative j), of relu(margin - (s_i - s_j)),
    s being the melanoma log-probability (log_softmax of the logits at mel); 0 when the batch
    has no such pair. This is the one place the pairs are formed (without a host sync)."""
    s = F.log_softmax(logits, 1)[:, MEL]
    pairs = ((y == MEL)[:, None] & (role == HARD_NEGATIVE)[None, :]).to(s.dtype)
    hinge = F.relu(margin - (s[:, None] - s[None, :]))
    return (hinge * pairs).sum() / pairs.sum().clamp_min(1)


def loss_fn(loss: str, weights: torch.Tensor, focal_gamma: float = 2.0, *, follow_up_weight: float = 1.0,
            mel_margin_weight: float = 0.0, mel_margin: float = 1.0):
    """criterion(logits, y, role=None): ce, wce (class-weighted CE) or focal (class-weighted focal
    loss), plus the recipe's melanoma options.

    follow_up_weight c scales each follow-up nevus's term in the weighted mean:
    sum_i c_i w_i l_i / sum_i c_i w_i (w_i its class weight, 1 for ce; c_i = c for follow-up
    nevi, 1 otherwise). mel_margin_weight adds that weight times mel_margin_term. Both need
    each case's role (case_roles); at their defaults (1 and 0) the loss is computed exactly as
    it was before they existed, and role is not read."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not follow_up_weight > 0 or mel_margin_weight < 0:
        raise ValueError(f"follow_up_weight must be > 0 and mel_margin_weight >= 0, got {follow_up_weight}, "
                         f"{mel_margin_weight}")
    w = weights if loss in ("wce", "focal") else None
    needs_role = follow_up_weight != 1.0 or mel_margin_weight != 0.0

    def per_case(logits, y):
        logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        return -(1 - logp.exp()) ** focal_gamma * logp if loss == "focal" else -logp

    def main(logits, y, role):
        if follow_up_weight == 1.0:    # today's recipe, in today's operations
            if loss == "focal":
                return (per_case(logits, y) * w[y]).sum() / w[y].sum()
            return F.cross_entropy(logits, y, weight=w)
        c = torch.where(role == FOLLOW_UP_NEVUS, follow_up_weight, 1.0).to(logits.dtype)
        cw = c if w is None else c * w[y]
        return (per_case(logits, y) * cw).sum() / cw.sum()

    def criterion(logits, y, role=None):
        if needs_role and role is None:
            raise ValueError("follow_up_weight and mel_margin_weight need each case's role (case_roles)")
        out = main(logits, y, role)
        if mel_margin_weight:
            out = out + mel_margin_weight * mel_margin_term(logits, y, role, mel_margin)
        return out
    return criterion


def drop_metadata(meta: torch.Tensor, unknown: torch.Tensor, p: float) -> torch.Tensor:
    """Replaces each group (age, sex, site) of each row by 'unknown' with probability p."""
    meta = meta.clone()
    for cols in GROUPS.values():
        hit = (torch.rand(len(meta)) < p).to(meta.device)   # CPU draws: the same on any device
        meta[hit, cols] = unknown[cols].to(meta.device)
    return meta
