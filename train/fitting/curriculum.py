"""A curriculum for imbalanced multimodal training in the spirit of CLIMD (Han et al.,
MICCAI 2025): a multimodal difficulty measure and a class-distribution scheduler.

Difficulty of a training case, from an image-only and a metadata-only model scored
out-of-fold (so no model grades cases it was trained on):
  intra-modal confidence       c_img, c_meta: the probability each modality gives the true class
  inter-modal complementarity  |c_img - c_meta|: one modality knows what the other does not,
                               so the case needs the two combined
  difficulty = 1 - (c_img + c_meta) / 2 + beta * |c_img - c_meta|
It is ranked within each class, so a rare class is not simply "all hard".

The scheduler draws each epoch's cases class first, with the class distribution moving
from balanced to the true one, q_c(t) ∝ n_c ** t for t = 0 .. 1 over training; within a
class it draws from the easiest share of cases, a share that grows from `start` to all of
them by `full_at` of the way through.

EpochPlan is what every training loop samples from: one epoch's rows in order for any of
the three samplers (none, balanced, curriculum). It depends only on the epoch and the
generator it is given, so the ranks of a distributed run that share a seed hold the same
plan and each takes its own share of it (train.fitting.distributed.RankShare).
"""
from __future__ import annotations

import numpy as np

from train.fitting.objectives import class_weights

BETA = 0.25      # weight of inter-modal complementarity in the difficulty
START = 0.3      # share of each class's easiest cases eligible at the first epoch
FULL_AT = 0.7    # fraction of training after which every case is eligible


def difficulty(conf_image: np.ndarray, conf_meta: np.ndarray, beta: float = BETA) -> np.ndarray:
    conf_image, conf_meta = np.asarray(conf_image), np.asarray(conf_meta)
    return 1 - (conf_image + conf_meta) / 2 + beta * np.abs(conf_image - conf_meta)


def within_class_rank(score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each case's rank within its class scaled to (0, 1]: the easiest of n gets 1/n."""
    rank = np.empty(len(y))
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        rank[idx[np.argsort(score[idx], kind="stable")]] = np.arange(1, len(idx) + 1) / len(idx)
    return rank


class CurriculumScheduler:
    def __init__(self, y: np.ndarray, rank: np.ndarray, epochs: int, start: float = START,
                 full_at: float = FULL_AT):
        self.y, self.rank, self.epochs = np.asarray(y), np.asarray(rank), epochs
        self.start, self.full_at = start, full_at
        self.classes = np.unique(self.y)
        self.counts = np.array([(self.y == k).sum() for k in self.classes], float)

    def progress(self, epoch: int) -> float:
        return epoch / max(1, self.epochs - 1)

    def class_distribution(self, epoch: int) -> np.ndarray:
        """Over self.classes: uniform at the first epoch, the training frequencies at the last."""
        q = self.counts ** self.progress(epoch)
        return q / q.sum()

    def eligible_share(self, epoch: int) -> float:
        return min(1.0, self.start + (1 - self.start) * self.progress(epoch) / self.full_at)

    def epoch_indices(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        """len(y) training rows for this epoch, drawn with replacement."""
        share = self.eligible_share(epoch)
        per_class = rng.multinomial(len(self.y), self.class_distribution(epoch))
        out = []
        for k, n in zip(self.classes, per_class):
            members = np.flatnonzero(self.y == k)
            easy = members[self.rank[members] <= max(share, 1 / len(members))]
            out.append(rng.choice(easy, n))
        return rng.permutation(np.concatenate(out))


SAMPLERS = ("none", "balanced", "curriculum")


class EpochPlan:
    """The training rows one epoch visits, in order: a permutation of the cases (none), a
    class-balanced draw with replacement (balanced) or the curriculum's draw (curriculum,
    which needs each case's within-class difficulty rank). len(y) rows either way."""

    def __init__(self, sampler: str, y: np.ndarray, epochs: int, rank: np.ndarray | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "curriculum" and rank is None:
            raise ValueError("the curriculum sampler needs each case's difficulty rank")
        y = np.array(y)     # a writable copy: pandas hands out read-only label arrays
        self.sampler, self.n = sampler, len(y)
        weights = class_weights(y)
        self.p = (weights[y] / weights[y].sum()).numpy()   # class-balanced draw probabilities
        self.curriculum = CurriculumScheduler(y, rank, epochs) if sampler == "curriculum" else None

    @staticmethod
    def generator(seed: int, epoch: int) -> np.random.Generator:
        """The epoch's own generator: the same plan on every rank and after a resume."""
        return np.random.default_rng([seed, epoch])

    def rows(self, epoch: int, rng) -> np.ndarray:
        """The epoch's rows; rng is a numpy Generator (or the np.random module, which the
        cached path keeps for none and balanced so its historical draws stay the same)."""
        if self.curriculum is not None:
            return self.curriculum.epoch_indices(epoch, rng)
        if self.sampler == "balanced":
            return rng.choice(self.n, self.n, p=self.p)
        return rng.permutation(self.n)
