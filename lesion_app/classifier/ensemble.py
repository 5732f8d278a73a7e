"""Cross-validated ensembles: members over one shared frozen trunk, or whole-network members.

Members over a shared trunk keep the ImageNet lower stages frozen, so the trunk's output is the
same for all of them: it is computed once per image, then each member runs only its fine-tuned
upper stages and head on it. Whole-network members (split_block WHOLE_NETWORK) share nothing:
their "trunk output" is the image itself and each runs its whole network on it. An ensemble's
logit is the mean of its members' logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import WHOLE_NETWORK, LesionClassifier


class Ensemble(nn.Module):
    """Members (LesionClassifier) of one kind, trained on different folds, all split at the same
    block (one shared trunk) or all whole networks."""

    def __init__(self, members: list[LesionClassifier]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        if any(m.head_kind != first.head_kind or m.split_block != first.split_block for m in members):
            raise ValueError("ensemble members must share the head kind and the split point")
        self.members = nn.ModuleList(members)

    @property
    def uses_metadata(self) -> bool:
        return self.members[0].uses_metadata

    @property
    def head_kind(self) -> str:
        return self.members[0].head_kind

    @property
    def split_block(self) -> int | str:
        """The members' split block (an int), or WHOLE_NETWORK."""
        return self.members[0].split_block

    @property
    def whole_network(self) -> bool:
        """Whether every member holds its whole network (no shared trunk)."""
        return self.split_block == WHOLE_NETWORK

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk (every member's lower stages hold the same frozen weights); the
        image itself for whole-network members."""
        return self.members[0].lower(x)

    def pooled(self, low: torch.Tensor) -> torch.Tensor:
        """Trunk output (N, C, h, w) (for whole-network members: images (N, 3, H, W)) -> each
        member's pooled features (M, N, F)."""
        return torch.stack([m.upper(low) for m in self.members])

    def pooled_and_kept(self, low: torch.Tensor, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled(low), and each member's last block's output for the inputs at the indices `keep`
        (the heatmaps start there: lesion_app.evidence.gradcam.gradcam_from_kept):
        (M, N, F), (M, len(keep), C, h, w)."""
        pooled, kept = [], []
        for m in self.members:
            s = m.last_block(low)
            pooled.append(m.pooled_from_last_block(s))
            kept.append(s[keep])
        return torch.stack(pooled), torch.stack(kept)

    def member_logits(self, pooled: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """(M, N, F) pooled features and (N, META_DIM) metadata -> (M, N, classes) logits."""
        return torch.stack([m.head(p, meta) for m, p in zip(self.members, pooled)])

    def head_logits(self, pooled: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """The ensemble's logits: the mean of its members' logits, (N, classes)."""
        return self.member_logits(pooled, meta).mean(0)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.head_logits(self.pooled(self.lower(x)), meta)

    def cam_target_layers(self) -> list[nn.Module]:
        """Grad-CAM's layers: each member's last activation before pooling."""
        return [m.cam_target_layer() for m in self.members]
