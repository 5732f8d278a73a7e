"""One training epoch, the loop every training path shares: the cached-feature members
(train.fitting.recipe.train_member), the whole-network path (train.fitting.full, AMP and DDP)
and the heads on pooled features (train.fitting.pooled_heads).

A batch is whatever the caller's iterable yields (rows of a plan, or a DataLoader's tensors);
loss_of turns it into a mean loss; a Step applies it (zero_grad, backward, optimiser and
scheduler step, through a gradient scaler when there is one). Each caller keeps its own
random source for views and augmentation, so every path reproduces its earlier runs exactly.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


class Step:
    """One optimiser step per batch: zero_grad, backward, step, then the per-step scheduler.
    With a GradScaler (fp16 autocast) the backward pass and the step go through it."""

    def __init__(self, opt: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler | None = None):
        self.opt, self.scheduler, self.scaler = opt, scheduler, scaler

    def __call__(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        self.scheduler.step()


def run_epoch(batches: Iterable, loss_of: Callable[[object], tuple[torch.Tensor, int]],
              step: Callable[[torch.Tensor], None]) -> tuple[float, int]:
    """step(loss) for every batch, loss_of(batch) returning (its mean loss, its number of cases).
    Returns (the sum of the cases' losses, the number of cases). The running total stays on
    the loss's device, so a GPU run does not wait on every batch."""
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        loss, n = loss_of(batch)
        step(loss)
        total = total.to(loss.device)
        total[0] += loss.detach().double() * n
        total[1] += n
    loss_sum, seen = total.tolist()
    return loss_sum, int(seen)


def batches_of(order, size: int):
    """A plan's rows in consecutive batches of `size` (the last one may be smaller)."""
    return (order[s:s + size] for s in range(0, len(order), size))
