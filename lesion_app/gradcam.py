"""Grad-CAM heatmaps with pytorch-grad-cam, for the image-only and the fusion model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .models import LesionClassifier


class FixedMetadata(nn.Module):
    """Presents a two-input model as image-only, metadata held fixed (pytorch-grad-cam #115).

    The frozen lower stages run without autograd and the graph starts at their output, so
    the backward pass covers only the upper stages that Grad-CAM's target layer sits in.
    """

    def __init__(self, model: LesionClassifier, meta: torch.Tensor | None):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x):
        meta = None if self.meta is None else self.meta.expand(len(x), -1)
        with torch.no_grad():
            low = self.model.lower(x)
        return self.model.head(self.model.upper(low.requires_grad_()), meta)


class PeakRecordingGradCAM(GradCAM):
    """GradCAM that also keeps the raw map's positive peak, before min-max scaling.

    Scaling hides whether a map is empty (every gradient-weighted activation negative),
    so the peak is what tells the app to say so instead of showing a blank heatmap.
    """
    raw_peak = 0.0

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.raw_peak = float(np.maximum(cam, 0).max())
        return cam


def gradcam(model: LesionClassifier, x: torch.Tensor, meta: torch.Tensor | None,
            class_index: int) -> tuple[np.ndarray, bool]:
    """Grad-CAM of class_index for one image x (1, 3, H, W): (map in [0, 1] of H x W, empty)."""
    with PeakRecordingGradCAM(FixedMetadata(model, meta), [model.cam_target_layer()]) as cam:
        heat = cam(x, targets=[ClassifierOutputTarget(class_index)])[0]
        empty = cam.raw_peak <= 1e-7
    return (np.zeros_like(heat) if empty else heat), empty


def gradcam_overlay(rgb: np.ndarray, heat: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """Jet heatmap over an RGB uint8 image of the same size; the plain image if heat is empty."""
    if not heat.any():
        return rgb
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1 - weight)
