"""Class-activation heatmaps with pytorch-grad-cam (Grad-CAM, Grad-CAM++, LayerCAM), for the
image-only and the fusion ensembles: one wrapper, one empty-map rule, the library's methods."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..classifier.ensemble import Ensemble


class FixedMetadata(nn.Module):
    """Presents a two-input ensemble as one-input, metadata held fixed (pytorch-grad-cam #115).

    Its input is the shared trunk's output, already computed for the prediction, so the
    trunk never runs again. The output is the ensemble's mean logit.
    """

    def __init__(self, model: Ensemble, meta: torch.Tensor | None):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, low):
        meta = None if self.meta is None else self.meta.expand(len(low), -1)
        return self.model.head_logits(self.model.pooled(low.detach()), meta)


def graph_starts_here(module, inputs, output):
    """A forward hook for the target layers, registered before the CAM's own: their output
    becomes a leaf that requires grad. The weights need no gradients and the maps need only
    d(logit)/d(target activation), so the backward pass covers pooling and heads, not the
    upper stages below the target layers (about 40% of an analysis's Grad-CAM time here);
    the maps are the same."""
    return output.detach().requires_grad_()


class ImageSizedCAM:
    """What every CAM method here adds to its pytorch-grad-cam class: maps onto the image size,
    and keeps the raw maps' positive peak.

    Scaling hides whether a map is empty (every weighted activation negative or zero), so the
    largest raw peak over the target layers is what tells the app to say so instead of showing
    a blank heatmap; the rule is the same for every method. The input is the trunk's output,
    so the output size is given explicitly rather than read from the input.
    """

    def __init__(self, model, target_layers, size: tuple[int, int]):
        super().__init__(model, target_layers)
        self.size, self.raw_peak = size, 0.0

    def get_target_width_height(self, input_tensor):
        return self.size[1], self.size[0]

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.raw_peak = max(self.raw_peak, float(np.maximum(cam, 0).max()))
        return cam


class PeakRecordingGradCAM(ImageSizedCAM, GradCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""


class PeakRecordingGradCAMPlusPlus(ImageSizedCAM, GradCAMPlusPlus):
    """Grad-CAM++: channels weighted by their positive gradients, each scaled by a per-position
    coefficient (second and third powers of the gradient), so that several separate regions
    of one class can all show."""


class PeakRecordingLayerCAM(ImageSizedCAM, LayerCAM):
    """LayerCAM: each position weighted by its own positive gradient (no channel averaging)."""


# The selector's methods, first = default. HiResCAM is left out: with global average pooling
# and linear heads, as here, its map is Grad-CAM's exactly.
CAM_METHODS: dict[str, type[ImageSizedCAM]] = {
    "Grad-CAM": PeakRecordingGradCAM,
    "Grad-CAM++": PeakRecordingGradCAMPlusPlus,
    "LayerCAM": PeakRecordingLayerCAM,
}
DEFAULT_CAM_METHOD = "Grad-CAM"


def gradcam(model: Ensemble, low: torch.Tensor, meta: torch.Tensor | None, class_index: int,
            size: tuple[int, int], method: str = DEFAULT_CAM_METHOD) -> tuple[np.ndarray, bool]:
    """A class-activation map of class_index for one image, from its trunk output low
    (1, C, h, w): one backward pass through the ensemble's mean logit, the members' maps
    averaged by the library. method: a key of CAM_METHODS (Grad-CAM by default).
    Returns (map in [0, 1] of size (H, W), empty)."""
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {list(CAM_METHODS)}, got {method!r}")
    layers = model.cam_target_layers()
    cut = [layer.register_forward_hook(graph_starts_here) for layer in layers]
    try:
        with torch.enable_grad(), CAM_METHODS[method](FixedMetadata(model, meta), layers, size) as cam:
            heat = cam(low, targets=[ClassifierOutputTarget(class_index)])[0]
            empty = cam.raw_peak <= 1e-7
    finally:
        for handle in cut:
            handle.remove()
    return (np.zeros_like(heat) if empty else heat), empty


def gradcam_overlay(rgb: np.ndarray, heat: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """Jet heatmap over an RGB uint8 image of the same size; the plain image if heat is empty."""
    if not heat.any():
        return rgb
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1 - weight)
