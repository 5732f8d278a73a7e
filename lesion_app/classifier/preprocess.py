"""Image preprocessing: the one place that turns a PIL image into the model's input.

The input spec (size, normalisation) is stored in the weights manifest and read back
from it, so training, evaluation and the app cannot drift apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


# The names the manifest may use for the resize filter.
INTERPOLATIONS = {name.lower(): Image.Resampling[name] for name in
                  ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS")}


@dataclass(frozen=True)
class InputSpec:
    """How a PIL image becomes the model's input; stored in the weights manifest.

    Raises ValueError at construction for an interpolation name not in INTERPOLATIONS.
    """
    width: int = 256
    height: int = 192
    mean: float = 0.5   # tf_efficientnet_lite* use mean = std = 0.5 on [0, 1] pixels
    std: float = 0.5
    interpolation: str = "bicubic"  # a PIL resampling filter, by name (INTERPOLATIONS)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r} in the input spec; "
                             f"use one of {', '.join(INTERPOLATIONS)}")

    @property
    def resample(self) -> Image.Resampling:
        """The PIL filter that fit_to_aspect resizes with."""
        return INTERPOLATIONS[self.interpolation]

    def to_dict(self) -> dict:
        return asdict(self)


# Flip views used both as training augmentation (cached) and as test-time augmentation.
VIEWS = ("identity", "hflip", "vflip", "hvflip")


def aspect_crop_box(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """The centre crop (left, top, right, bottom) of a width x height image to the spec's aspect
    ratio (the whole image when it already has it)."""
    w, h, target = width, height, spec.width / spec.height
    if abs(w / h - target) <= 1e-3:
        return 0, 0, w, h
    if w / h > target:
        nw = round(h * target)
        return (w - nw) // 2, 0, (w - nw) // 2 + nw, h
    nh = round(w / target)
    return 0, (h - nh) // 2, w, (h - nh) // 2 + nh


def fit_to_aspect(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Centre-crops to the spec's aspect ratio (4:3, as HAM10000) and resizes to it with the
    spec's interpolation."""
    image = image.convert("RGB")
    box = aspect_crop_box(*image.size, spec)
    if box != (0, 0, *image.size):
        image = image.crop(box)
    return image.resize((spec.width, spec.height), spec.resample)


def to_tensor(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """PIL image -> normalised float tensor of shape (3, height, width)."""
    a = np.asarray(fit_to_aspect(image, spec), dtype=np.float32) / 255.0
    return torch.from_numpy((a - spec.mean) / spec.std).permute(2, 0, 1).contiguous()


def unnormalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """The inverse of to_tensor's normalisation: RGB in [0, 1], same shape."""
    return x * spec.std + spec.mean


def flip_views(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, len(VIEWS), 3, H, W), in VIEWS order."""
    return torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], dim=1)


def mean_over_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B * views, ...) with each image's views adjacent -> (B, ...): test-time averaging."""
    return x.reshape(-1, views, *x.shape[1:]).mean(1)
