"""How unlike the training clinics' images an image is (a graded shift score), and what that did to
the models where it was measured.

The score reads the same frozen ImageNet trunk features as the OOD check (each channel's mean over
positions and flip views): the Mahalanobis distance to a Gaussian of HAM10000 images (the two
clinics the models learnt from), given as a percentile of HAM10000's own images' distances (images
outside the Gaussian's fit). 50 means as typical as a training clinic's image; 99.5 means further
out than 199 in 200 of them. Each band of percentiles carries what was measured on images of that
band that no shipped model trained on (HAM10000's held-out slice and ISIC 2017, other clinics):
the fusion model's balanced accuracy and how often its 90% prediction sets held the right class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..classifier.weights import WeightsError

FEATURES = "trunk_mean"          # the OOD check's features (lesion_app.evidence.ood)
BAND_EDGES = (90.0, 99.0)        # percentiles: typical | unusual | far out


@dataclass
class ShiftReading:
    """One image's shift: its percentile among HAM10000's images and its band's measured figures."""
    percentile: float
    band: dict    # {"name", "from", "to", "measured": {"n", "sources", "balanced_accuracy", "coverage_90", ...}}

    @property
    def typical(self) -> bool:
        return self.band["name"] == "typical"

    def sentence(self) -> str:
        """The shift and what it meant where measured, in words a clinician reads."""
        p, b, m = self.percentile, self.band, self.band.get("measured") or {}
        where = {"typical": "typical of the two clinics the models learnt from",
                 "unusual": "unusual for the two clinics the models learnt from",
                 "far out": "further from the training images than almost all of them"}.get(b["name"], b["name"])
        share = f"{p:.0f}%" if p < 99 else f"{min(p, 99.9):.1f}%"    # never "100%": the reference is a sample
        line = (f"Likeness to the training images: this image lies further out than {share} of HAM10000's own "
                f"images ({where}).")
        if not m.get("n") or m.get("balanced_accuracy") is None:
            return line + " No images this far out were measured."
        sources = " and ".join(f"{n} from {name}" for name, n in m["sources"].items())
        cover = m.get("coverage_0.9")
        line += (f" On {m['n']} images in this band that no model trained on ({sources}), the fusion model's "
                 f"balanced accuracy was {m['balanced_accuracy']:.2f}")
        if cover is None:
            return line + "."
        line += f" and its 90% prediction sets held the right diagnosis {cover:.0%} of the time"
        if cover < 0.88:
            line += ("; the 90% promise holds only for images like the training clinics', so read both models "
                     "with more caution")
        return line + "."

    def to_report(self) -> dict:
        """The /report JSON's "shift": the numbers, and the sentence the page shows."""
        return {"percentile": round(self.percentile, 1), "band": self.band["name"],
                "band_percentiles": [self.band["from"], self.band["to"]], "measured": self.band.get("measured"),
                "note": self.sentence()}


@dataclass
class ShiftScore:
    mean: torch.Tensor          # (C,) HAM10000 features' mean
    projection: torch.Tensor    # (C, k) whitening projection
    reference: torch.Tensor     # (R,) sorted distances of HAM10000 images outside the fit
    bands: list = field(default_factory=list)   # one dict per band, in order of BAND_EDGES

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N,) Mahalanobis distance to the training clinics' images."""
        z = (torch.as_tensor(features).float().reshape(-1, self.mean.shape[0]).cpu() - self.mean) @ self.projection
        return z.norm(dim=1)

    def percentile(self, features: torch.Tensor) -> np.ndarray:
        """(N, C) -> (N,) share (0-100) of HAM10000's reference images that lie closer."""
        d = self.distance(features).numpy()
        return 100.0 * np.searchsorted(self.reference.numpy(), d, side="right") / len(self.reference)

    @staticmethod
    def band_of(percentile: float, bands: list) -> dict:
        for b in bands:
            if percentile < b["to"] or b is bands[-1]:
                return b
        raise ValueError("no bands")

    def reading(self, features: torch.Tensor) -> ShiftReading:
        """The shift of one image (features (C,) or (1, C))."""
        p = float(self.percentile(features.reshape(1, -1))[0])
        return ShiftReading(p, self.band_of(p, self.bands))

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "projection": self.projection.contiguous(),
                   "reference": self.reference.contiguous()}, path,
                  metadata={"features": FEATURES, "bands": json.dumps(self.bands)})

    @classmethod
    def load(cls, path: Path) -> "ShiftScore":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("features") != FEATURES:
            raise WeightsError(f"{path.name} was fitted on other features ({meta.get('features')}), not on the "
                               f"frozen trunk's ({FEATURES}): run python -m train.release.fit_shift")
        return cls(t["mean"], t["projection"], t["reference"], json.loads(meta.get("bands", "[]")))


def empty_bands() -> list[dict]:
    """The bands, without measurements: [0, 90), [90, 99), [99, 100]."""
    edges = (0.0, *BAND_EDGES, 100.0)
    names = ("typical", "unusual", "far out")
    return [{"name": n, "from": lo, "to": hi} for n, lo, hi in zip(names, edges[:-1], edges[1:])]
