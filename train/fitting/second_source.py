"""A second source in training (issue 37, point 2): another clinic's "fit" half, added to every member's
training rows. train.fitting.cv reads it with --second-source DIR (ISIC 2017: --second-aspect 4:3).

Every member trains on its HAM10000 folds plus the whole fit half (train/splits/isic2017_halves.csv,
train.data.make_halves: the half the OOD check is fitted on too). No second-source image is ever scored
out of fold, so the out-of-fold figures and the temperature stay HAM10000's, comparable with every
earlier run; the held-out half, which nothing trains on, carries the figures quoted for that source
(train.release.run_transfer --halves). The second source's rows need a diagnosis, age and sex; a
missing body site is "unknown", as the app treats a site nobody entered.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_app.classifier.metadata import AgeScaler, encode_frame
from train.data.dataset import labels, parse_aspect
from train.data.splits import SECOND_SOURCE_HALVES, fit_half_record


def add_second_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--second-source", type=Path, default=None, metavar="DIR",
                   help="also train every member on this folder's fit half (another clinic; issue 37)")
    p.add_argument("--second-halves", type=Path, default=SECOND_SOURCE_HALVES,
                   help="its halves file (python -m train.data.make_halves; default %(default)s)")
    p.add_argument("--second-aspect", default=None, metavar="W:H",
                   help="restore that folder's images to this aspect first (4:3 for ISIC 2017, stored squashed)")


@dataclass
class SecondSource:
    """The fit half: its metadata rows, labels, encoded metadata and lower-stage features (in memory)."""
    frame: pd.DataFrame
    y: np.ndarray
    meta: torch.Tensor
    feats: np.ndarray | torch.Tensor
    pooled: np.ndarray | None
    record: dict

    def extend(self, x, part: str):
        """x (HAM10000's training rows of one part: "feats", "meta", "y", "pooled" or "lesion_id")
        followed by this source's rows of it, as the same kind of array as x."""
        extra = self.frame["lesion_id"].to_numpy() if part == "lesion_id" else getattr(self, part)
        if torch.is_tensor(x):
            return torch.cat([x, torch.as_tensor(extra).to(x.device, x.dtype)])
        return np.concatenate([np.asarray(x), np.asarray(extra)])


def load_second_source(a: argparse.Namespace, df: pd.DataFrame, scaler: AgeScaler, build_cache,
                       build_pooled=None, device: str = "cpu") -> SecondSource:
    """df: train.data.splits.fit_half(a.second_source, a.second_halves). build_cache(data, ids, aspect) -> its lower-stage
    cache; build_pooled(data, ids, aspect) -> its pooled ImageNet features (the curriculum's), when given."""
    aspect = parse_aspect(a.second_aspect)
    ids = list(df["image_id"])
    cached = np.asarray(build_cache(a.second_source, ids, aspect))
    pooled = np.asarray(build_pooled(a.second_source, ids, aspect)) if build_pooled else None
    record = fit_half_record(a.second_source, a.second_halves, a.second_aspect, df)
    return SecondSource(frame=df, y=labels(df), meta=torch.from_numpy(encode_frame(df, scaler)),
                        feats=torch.from_numpy(cached).to(device) if device != "cpu" else cached,
                        pooled=pooled, record=record)
