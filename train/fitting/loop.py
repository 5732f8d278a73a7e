"""One training epoch: the loop that train.fitting.fit (upper stages + head) and train.fitting.pooled_heads
(heads on pooled features) share. Sampling is EpochPlan's (train.fitting.curriculum); each caller
keeps its own random source for the views, so both reproduce their earlier runs exactly.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch


def run_epoch(order: np.ndarray, batch: int, loss_of: Callable[[np.ndarray], torch.Tensor],
              opt: torch.optim.Optimizer, scheduler, progress: Callable[[Iterable], Iterable] | None = None
              ) -> float:
    """One optimiser (and per-step scheduler) step per batch of `order`'s rows; loss_of(rows)
    returns that batch's mean loss. Returns the epoch's mean loss per row. The running total
    stays on the loss's device, so a GPU run does not wait on every batch."""
    total = torch.zeros(())
    starts = range(0, len(order), batch)
    for s in (progress(starts) if progress else starts):
        rows = order[s:s + batch]
        loss = loss_of(rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        total = total.to(loss.device) + loss.detach() * len(rows)
    return float(total) / len(order)
