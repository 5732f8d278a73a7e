"""PyTorch's own distributed engine for train.fitting.full: process group, samplers and gathering.

Under `torchrun --nproc_per_node=N` (RANK, WORLD_SIZE and LOCAL_RANK set), setup() joins the
process group (NCCL on GPUs, gloo on CPU) and each rank trains its own share of the data in
DistributedDataParallel; started plainly, it is one process and nothing here communicates.

RankShare is the distributed-aware sampler: every rank builds the same epoch plan
(train.fitting.curriculum.EpochPlan, from the epoch's own generator) and takes its own positions of
it, so the balanced and curriculum draws are those of a single process, split N ways.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from train.fitting.curriculum import EpochPlan

# Rank 0 alone prepares shared inputs (the curriculum's difficulty ranking) while the others
# wait in a collective; the default 10-minute NCCL timeout is too short for a big folder.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among world processes, its device, its backend."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None      # nccl | gloo; None for a single process

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and the run's files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


def setup(device: str = "auto") -> Dist:
    """Joins torchrun's process group when WORLD_SIZE > 1, else returns a single process.

    device: auto (this rank's GPU when there is one, else the CPU), cpu or cuda."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no GPU")
    dev = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    backend = "nccl" if cuda else "gloo"
    td.init_process_group(backend, timeout=TIMEOUT, **({"device_id": dev} if cuda else {}))
    return Dist(rank, world, local_rank, local_world, dev, backend)


def teardown(dist: Dist) -> None:
    if dist.active and td.is_initialized():
        td.destroy_process_group()


def wrap(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """The model as the training step calls it: DistributedDataParallel under torchrun (which
    also starts every rank from rank 0's weights), the model itself in a single process."""
    if not dist.active:
        return model
    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one position of one epoch's plan: the augmentation drawn there is the same
    whatever the world size, the worker count or the rank that draws it."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's own draws in one epoch (dropout, metadata dropout)."""
    return int(np.random.SeedSequence([seed, epoch, rank, 1]).generate_state(1)[0])


class RankShare(Sampler):
    """This rank's share of each epoch's plan, as (row, draw seed) keys for the dataset.

    The plan (len(y) rows) is padded to a multiple of the world size by repeating its first
    rows, as torch's DistributedSampler does, and rank r takes positions r, r + world, ...:
    the shares are disjoint and together cover the padded plan. With a per-rank batch of
    batch // world, step s of every rank covers positions [s * batch, (s + 1) * batch) of the
    plan, so N processes take the steps that one process with the whole batch would.
    """

    def __init__(self, plan: EpochPlan, seed: int, rank: int = 0, world: int = 1):
        self.plan, self.seed, self.rank, self.world = plan, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def padded_rows(self, epoch: int) -> np.ndarray:
        """The epoch's plan as every rank sees it, padded to a multiple of the world size."""
        rows = self.plan.rows(epoch, EpochPlan.generator(self.seed, epoch))
        return np.concatenate([rows, rows[:len(self) * self.world - len(rows)]])

    def positions(self) -> range:
        """This rank's positions in the padded plan."""
        return range(self.rank, len(self) * self.world, self.world)

    def __iter__(self):
        rows = self.padded_rows(self.epoch)
        for p in self.positions():
            yield int(rows[p]), draw_seed(self.seed, self.epoch, p)

    def __len__(self) -> int:
        return math.ceil(self.plan.n / self.world)


def shard(n: int, dist: Dist) -> list[int]:
    """This rank's rows of an n-row evaluation set (no padding: each row is scored once)."""
    return list(range(dist.rank, n, dist.world))


def gather_rows(rows: list[int], values: np.ndarray, n: int, dist: Dist) -> np.ndarray:
    """Every rank's (rows, values) assembled into one (n, ...) array, on every rank."""
    parts = [(rows, values)]
    if dist.active:
        parts = [None] * dist.world
        td.all_gather_object(parts, (rows, values))
    out = np.zeros((n, *values.shape[1:]), values.dtype)
    for r, v in parts:
        out[r] = v
    return out


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (e.g. a loss total and a count)."""
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    if dist.active:
        td.all_reduce(t)
    return t.tolist()


def broadcast(obj, dist: Dist):
    """Rank 0's obj on every rank (any picklable object)."""
    if not dist.active:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, dist: Dist) -> list:
    """Every rank's obj, in rank order, on every rank."""
    if not dist.active:
        return [obj]
    out = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


@torch.no_grad()
def sync_buffers(model: torch.nn.Module, dist: Dist) -> None:
    """Gives every rank rank 0's buffers (BatchNorm running statistics): DDP sends them at each
    forward, after which each rank updates its own copy from its own batch."""
    if dist.active:
        for b in model.buffers():
            td.broadcast(b, src=0)


def parameter_sha256(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters, in order: equal on every rank after a correct DDP run."""
    h = hashlib.sha256()
    for name, q in model.named_parameters():
        h.update(name.encode())
        h.update(q.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
