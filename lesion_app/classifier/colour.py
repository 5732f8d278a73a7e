"""Colour constancy: takes out the colour of the light an image was taken under."""
from __future__ import annotations

import math

import torch


def shades_of_gray(x: torch.Tensor, p: float = 6.0) -> torch.Tensor:
    """Shades of Gray (Finlayson & Trezzi 2004; p = 6 as the ISIC 2019 winners used it) on a
    (3, H, W) image in [0, 1], or on each image of a batch (..., 3, H, W): the illuminant is estimated
    as each channel's p-norm mean and divided out, so it becomes neutral grey. Same shape, in [0, 1]."""
    illuminant = x.clamp_min(0).pow(p).mean((-2, -1)).pow(1 / p)
    illuminant = illuminant / illuminant.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return (x / (illuminant * math.sqrt(3)).clamp_min(1e-6)[..., None, None]).clamp(0, 1)
