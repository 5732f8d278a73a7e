"""The logits CSVs that cross-validation writes and the release and evaluation stages read.

    oof_logits.csv       image_id,fold,model,logit_akiec..logit_vasc   each image by the member of its fold
    heldout_logits.csv   image_id,model,member,logit_akiec..logit_vasc every member on the held-out slice

Raw (uncalibrated) logits, 5 decimals. This module is their one writer and reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion_app.classifier.vocab import CLASSES

LOGIT_COLUMNS = [f"logit_{c}" for c in CLASSES]


def logits_frame(logits: np.ndarray, **columns) -> pd.DataFrame:
    """Rows of one kind: the given columns in order (image_id, fold, model for the out-of-fold
    file; image_id, model, member for the held-out file), then the logits."""
    f = pd.DataFrame(logits, columns=LOGIT_COLUMNS)
    for k, (name, value) in enumerate(columns.items()):
        f.insert(k, name, value if np.isscalar(value) else np.asarray(value))
    return f


def write_logits(frames: list[pd.DataFrame], path: Path) -> None:
    pd.concat(frames).to_csv(path, index=False, float_format="%.5f")


def read_logits(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def kind_rows(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """A kind's rows in file order, indexed 0..n-1."""
    return frame[frame["model"] == kind].reset_index(drop=True)


def kind_logits(frame: pd.DataFrame, kind: str, order=None) -> np.ndarray:
    """A kind's (N, classes) float64 logits, in file order or in the given image order."""
    f = frame[frame["model"] == kind]
    if order is not None:
        f = f.set_index("image_id").loc[list(order)]
    return f[LOGIT_COLUMNS].to_numpy(np.float64)


def member_logits(frame: pd.DataFrame, kind: str, order=None) -> list[np.ndarray]:
    """A held-out logits frame's (N, classes) float64 logits of each member of a kind, by member
    number, in the given image order (default: the first member's file order)."""
    f = frame[frame["model"] == kind]
    members = [f[f["member"] == m].set_index("image_id") for m in sorted(f["member"].unique())]
    order = members[0].index if order is None else list(order)
    return [m.loc[order, LOGIT_COLUMNS].to_numpy(np.float64) for m in members]
