"""Out-of-distribution check: does the upload look like a dermoscopic image at all?

Two tests, each set on dermoscopic images only:

- **Feature distance.** Mahalanobis distance of the shared trunk's output (the frozen
  ImageNet lower stages that every member shares: 112 channels averaged over positions
  and the 4 flip views) to a Gaussian fitted on dermoscopic training images, in a whitened
  space. The trunk's features are generic ImageNet ones, so a cat's fur, a coffee cup, a
  stained tissue section or a star field sit far from dermoscopy. The members' fine-tuned
  features, which the previous check used, are trained to map any input onto a lesion
  class, and real photos (animals, scenes, the Hubble deep field) landed among the lesions.
- **Colour.** Nearly colourless images (documents, greyscale photos): dermoscopy always
  shows coloured skin.

The trunk output is already computed for every prediction, so the check costs one small
matrix product. Thresholds are percentiles of scores on images no model trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..classifier.weights import WeightsError

OOD_WARNING = ("This image does not look like the dermoscopic images the models were trained on "
               "({reason}). The predictions below are unreliable: use a dermoscope image of a "
               "single skin lesion.")
FEATURES = "trunk_mean"   # what a saved detector was fitted on, kept in its file's metadata


@dataclass
class OODDetector:
    mean: torch.Tensor         # (C,) feature mean used for centring
    projection: torch.Tensor   # (C, k) principal directions scaled to unit variance
    threshold: float           # feature distance above this is flagged
    min_saturation: float = 0.0  # mean HSV saturation below this is flagged

    @classmethod
    def fit(cls, features: np.ndarray, k: int | None = None, shrink: float = 1e-3) -> "OODDetector":
        """Gaussian of dermoscopic images' features (N, C): mean and a whitening projection
        onto the top k principal directions (all by default), variances shrunk by
        shrink x the largest so near-constant directions cannot dominate."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        mean = x.mean(0)
        centred = x - mean
        evals, evecs = torch.linalg.eigh(centred.T @ centred / len(x))
        top = torch.argsort(evals, descending=True)[:k]
        proj = evecs[:, top] / torch.sqrt(evals[top] + shrink * evals.max())
        return cls(mean.float(), proj.float(), threshold=float("inf"))

    @staticmethod
    def trunk_features(low: torch.Tensor, n_images: int) -> torch.Tensor:
        """The shared trunk's output for n_images images' flip views, (n_images * V, C, h, w)
        in Passes.trunk_features' order (image-major) -> (n_images, C): each channel's mean
        over positions and views."""
        nv, c = low.shape[:2]
        return low.float().mean((2, 3)).view(n_images, nv // n_images, c).mean(1).cpu()

    @staticmethod
    def saturation(rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N,) mean HSV saturation."""
        mx, mn = rgb.amax(1), rgb.amin(1)
        return torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx)).mean((1, 2))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N,) Mahalanobis distance to the dermoscopic images; larger = less like them."""
        z = (torch.as_tensor(features).float().cpu() - self.mean) @ self.projection
        return z.norm(dim=1)

    def flags(self, features: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """(N,) bool: unlike dermoscopic images by feature distance or by colour."""
        return (self.score(features) > self.threshold) | (self.saturation(rgb.cpu()) < self.min_saturation)

    def warning(self, features: torch.Tensor, rgb: torch.Tensor) -> str | None:
        """The warning for one image (features (C,) or (1, C), rgb (1, 3, H, W)), or None."""
        s = float(self.score(features.reshape(1, -1))[0])
        if s > self.threshold:
            return OOD_WARNING.format(reason=f"feature distance {s:.1f} > {self.threshold:.1f}")
        sat = float(self.saturation(rgb.cpu())[0])
        if sat < self.min_saturation:
            return OOD_WARNING.format(reason=f"almost no colour: saturation {sat:.2f} < {self.min_saturation:.2f}")
        return None

    def image_warnings(self, reference: torch.Tensor, rgb: torch.Tensor, n_images: int) -> tuple[list[str], bool]:
        """(the warnings for n_images images of one lesion, each named by its place when there are
        several; whether the first image was flagged). reference: their frozen trunk output for
        every flip view (trunk_features' input); rgb (n_images, 3, H, W) in [0, 1]."""
        trunk = self.trunk_features(reference, n_images)
        warnings, first = [], False
        for i in range(n_images):
            w = self.warning(trunk[i], rgb[i:i + 1])
            warnings += [w if n_images == 1 else f"Image {i + 1} of {n_images}: {w}"] if w else []
            first |= i == 0 and w is not None
        return warnings, first

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "projection": self.projection.contiguous(),
                   "threshold": torch.tensor([self.threshold]),
                   "min_saturation": torch.tensor([self.min_saturation])}, path,
                  metadata={"features": FEATURES})

    @classmethod
    def load(cls, path: Path) -> "OODDetector":
        with safe_open(str(path), framework="pt") as f:
            fitted_on = (f.metadata() or {}).get("features")
            t = {k: f.get_tensor(k) for k in f.keys()}
        if fitted_on != FEATURES:
            raise WeightsError(f"{path.name} was fitted on other features ({fitted_on or 'fine-tuned members'}), "
                               f"not on the shared trunk's ({FEATURES}): run python -m train.release.fit_ood")
        return cls(t["mean"], t["projection"], float(t["threshold"][0]), float(t["min_saturation"][0]))
