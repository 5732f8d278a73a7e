"""Out-of-distribution check: Mahalanobis distance of image features to the training classes.

Features are the image-only ensemble's pooled backbone features (each member's mean over the
flip views, side by side), already computed for every prediction, so the check costs one
small matrix product.
Distances are measured in a PCA-whitened space fitted on the training split, to the
nearest class mean (tied covariance); the threshold is a percentile of validation scores.
A second, colour check flags nearly colourless images (documents, plain or grey images),
which the feature distance misses: dermoscopy always shows coloured skin.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OOD_WARNING = ("This image does not look like the dermoscopic images the models were trained on "
               "({reason}). The predictions below are unreliable: use a dermoscope image of a "
               "single skin lesion.")


@dataclass
class OODDetector:
    mean: torch.Tensor        # (F,) feature mean used for centring
    projection: torch.Tensor  # (F, k) PCA directions scaled to unit within-class variance
    class_means: torch.Tensor  # (C, k) class means in the whitened space
    threshold: float
    min_saturation: float = 0.0  # mean HSV saturation below this is flagged

    @classmethod
    def fit(cls, features: np.ndarray, y: np.ndarray, k: int = 128, shrink: float = 1e-3) -> "OODDetector":
        x = torch.as_tensor(features, dtype=torch.float64)
        mean = x.mean(0)
        centred = x - mean
        classes = sorted(set(int(c) for c in y))
        yt = torch.as_tensor(y)
        within = torch.cat([centred[yt == c] - centred[yt == c].mean(0) for c in classes])
        cov = within.T @ within / len(within)
        evals, evecs = torch.linalg.eigh(cov)
        top = torch.argsort(evals, descending=True)[:k]
        proj = evecs[:, top] / torch.sqrt(evals[top] + shrink * evals.max())
        z = centred @ proj
        means = torch.stack([z[yt == c].mean(0) for c in classes])
        return cls(mean.float(), proj.float(), means.float(), threshold=float("inf"))

    @staticmethod
    def features(pooled: torch.Tensor) -> torch.Tensor:
        """The image-only ensemble's pooled features (M, N, V, F) -> (N, M * F): each member's
        mean over the flip views, members side by side (their feature spaces differ)."""
        m, n = pooled.shape[:2]
        return pooled.float().mean(2).permute(1, 0, 2).reshape(n, -1).cpu()

    @staticmethod
    def saturation(rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N,) mean HSV saturation."""
        mx, mn = rgb.amax(1), rgb.amin(1)
        return torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx)).mean((1, 2))

    def flags(self, features: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """(N,) bool: unlike the training images by feature distance or by colour."""
        return (self.score(features) > self.threshold) | (self.saturation(rgb.cpu()) < self.min_saturation)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N,) distance to the nearest class mean; larger = less like training."""
        z = (features.float().cpu() - self.mean) @ self.projection
        return torch.cdist(z, self.class_means).min(1).values

    def warning(self, features: torch.Tensor, rgb: torch.Tensor) -> str | None:
        """The warning for one image (features (F,) or (1, F), rgb (1, 3, H, W)), or None."""
        s = float(self.score(features.reshape(1, -1))[0])
        if s > self.threshold:
            return OOD_WARNING.format(reason=f"feature distance {s:.1f} > {self.threshold:.1f}")
        sat = float(self.saturation(rgb.cpu())[0])
        if sat < self.min_saturation:
            return OOD_WARNING.format(reason=f"almost no colour: saturation {sat:.2f} < {self.min_saturation:.2f}")
        return None

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean, "projection": self.projection.contiguous(),
                   "class_means": self.class_means, "threshold": torch.tensor([self.threshold]),
                   "min_saturation": torch.tensor([self.min_saturation])}, path)

    @classmethod
    def load(cls, path: Path) -> "OODDetector":
        t = load_file(path)
        return cls(t["mean"], t["projection"], t["class_means"], float(t["threshold"][0]),
                   float(t["min_saturation"][0]))
