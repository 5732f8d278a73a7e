"""Image preprocessing: the one place that turns a PIL image into the model's input.

The input spec (size, normalisation) is stored in the weights manifest and read back
from it, so training, evaluation and the app cannot drift apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class InputSpec:
    width: int = 256
    height: int = 192
    mean: float = 0.5   # tf_efficientnet_lite* use mean = std = 0.5 on [0, 1] pixels
    std: float = 0.5
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return asdict(self)


# Flip views used both as training augmentation (cached) and as test-time augmentation.
VIEWS = ("identity", "hflip", "vflip", "hvflip")


def fit_to_aspect(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Centre-crops to the spec's aspect ratio (4:3, as HAM10000) and resizes to it."""
    image = image.convert("RGB")
    w, h = image.size
    target = spec.width / spec.height
    if abs(w / h - target) > 1e-3:
        if w / h > target:
            nw = round(h * target)
            image = image.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
        else:
            nh = round(w / target)
            image = image.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
    return image.resize((spec.width, spec.height), Image.Resampling.BICUBIC)


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
