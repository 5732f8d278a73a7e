"""Class-activation heatmaps with pytorch-grad-cam (Grad-CAM, Grad-CAM++, LayerCAM, and LayerCAM
fused over the trunk's finer stages), for the image-only and the fusion ensembles: one wrapper, one
empty-map rule, the library's methods; a map of one class, or of one class rather than another.

The methods that target only each member's last activation (Grad-CAM, Grad-CAM++, LayerCAM) start
from each member's last block output kept from the prediction (gradcam_from_kept): conv_head, the
target layer, pooling and heads only, the same maps as a pass from the trunk's output (gradcam),
for about a sixth of its time. LayerCAM
(fine) starts from the trunk's output and stage kept from the prediction (the trunk never runs
again); for whole-network members from the image, each member's whole network once more on the
unflipped view. The backward pass stops at the target layers."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..classifier.ensemble import Ensemble

FINE_STAGE_BLOCK = 2   # the trunk's stride-8 stage, blocks[2]'s output (32x24 on the 256x192 input)
WHOLE_FINE_BLOCKS = (FINE_STAGE_BLOCK, 4)   # a whole-network member's own finer stages: strides 8 and 16
                                            # (where the shipped trunk's stage and output are)
EMPTY_PEAK = 1e-7      # a raw map whose positive peak is at most this holds no evidence
TOP_TWO = "top two"    # the heatmap class meaning "each model's top class rather than its second"


class FixedMetadata(nn.Module):
    """Presents a two-input ensemble as one-input, metadata held fixed (pytorch-grad-cam #115).

    Its input is a trunk output already computed for the prediction, so the trunk never runs
    again: by default the trunk's own output; with first_block, an earlier stage's output,
    from which the trunk's blocks[first_block:split] run here so that gradients reach that
    stage. The input and the trunk's output pass through nn.Identity layers (stage_in,
    trunk_out) that a CAM can target. The output is the ensemble's mean logit.

    Whole-network members (model.whole_network) have no shared trunk: the input is the image, and
    each member runs its whole network on it, one member after the other. The finer stages a CAM
    can target are each member's own (WHOLE_FINE_BLOCKS).
    """

    def __init__(self, model: Ensemble, meta: torch.Tensor | None, first_block: int | None = None,
                 input_grad: bool = False):
        super().__init__()
        self.model, self.meta = model, meta
        self.whole = model.whole_network
        self.split = 0 if self.whole else model.members[0].split_block
        self.first_block = self.split if first_block is None or self.whole else first_block
        self.input_grad = input_grad   # the input's own gradient, for CAMs that target the trunk's stages
        self.stage_in, self.trunk_out = nn.Identity(), nn.Identity()

    def trunk_layers(self) -> list[nn.Module]:
        """The trunk's stages this wrapper sees, in forward order: its input stage when that is
        earlier than the trunk's output, then the trunk's output. For whole-network members, each
        member's blocks[WHOLE_FINE_BLOCKS] (member by member)."""
        if self.whole:
            return [m.backbone.blocks[i] for m in self.model.members for i in WHOLE_FINE_BLOCKS]
        return ([self.stage_in] if self.first_block < self.split else []) + [self.trunk_out]

    def all_layers(self) -> list[nn.Module]:
        """trunk_layers and every member's last stage, in forward order. pytorch-grad-cam pairs each
        target layer's activation (recorded forward) with its gradient (recorded backward, taken as
        the reverse order), which holds for a chain, and for members run one after the other (the
        autograd engine finishes the member created last first)."""
        if self.whole:
            return [layer for m in self.model.members
                    for layer in (*(m.backbone.blocks[i] for i in WHOLE_FINE_BLOCKS), m.cam_target_layer())]
        return [*self.trunk_layers(), *self.model.cam_target_layers()]

    def forward(self, x):
        if self.whole:   # each member's whole network on the image, which needs no gradient
            meta = None if self.meta is None else self.meta.expand(len(x), -1)
            return self.model.head_logits(self.model.pooled(x.detach()), meta)
        h = self.stage_in(x.detach().requires_grad_(self.input_grad))
        if self.first_block < self.split:   # the frozen trunk's remaining blocks (shared by every member)
            h = self.model.members[0].backbone.blocks[self.first_block:self.split](h)
        low = self.trunk_out(h)
        meta = None if self.meta is None else self.meta.expand(len(low), -1)
        return self.model.head_logits(self.model.pooled(low), meta)


class KeptBlocks(nn.Module):
    """Presents an ensemble's last layers and heads as a one-input model over its members' last
    block outputs kept from the prediction (Ensemble.pooled_and_kept), metadata held fixed: each
    member runs only conv_head, bn2 (its CAM target layer), pooling and its head. The input is
    (N, M, C, h, w), member by member, members run one after the other as in FixedMetadata."""

    def __init__(self, model: Ensemble, meta: torch.Tensor | None):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x):
        pooled = torch.stack([m.pooled_from_last_block(x[:, i].detach()) for i, m in enumerate(self.model.members)])
        meta = None if self.meta is None else self.meta.expand(len(x), -1)
        return self.model.head_logits(pooled, meta)


class ContrastTarget:
    """Class `category`'s logit minus class `versus`'s: its map shows the regions that raised the
    first class's score over the second's ("why X rather than Y"; cf. torch-cam's FinerCAM).
    Called on the model's output like pytorch-grad-cam's ClassifierOutputTarget."""

    def __init__(self, category: int, versus: int):
        self.category, self.versus = category, versus

    def __call__(self, model_output):
        return model_output[..., self.category] - model_output[..., self.versus]


def graph_starts_here(module, inputs, output):
    """A forward hook for the target layers, registered before the CAM's own: their output
    becomes a leaf that requires grad. The weights need no gradients and the maps need only
    d(logit)/d(target activation), so the backward pass covers pooling and heads, not the
    upper stages below the target layers (about 40% of an analysis's Grad-CAM time here);
    the maps are the same."""
    return output.detach().requires_grad_()


class ImageSizedCAM:
    """What every CAM method here adds to its pytorch-grad-cam class: maps onto the image size,
    and keeps each target layer's raw positive peak.

    Scaling hides whether a map is empty (every weighted activation negative or zero), so the
    raw peaks are what tell the app to say so instead of showing a blank heatmap; the rule is
    the same for every method. The input is a trunk output (or, for whole-network members, the
    image), so the output size is given explicitly rather than read from the input.

    `layers(wrapper)` says which layers a method targets: here each member's last activation,
    whose gradients the caller may cut below (`trunk_stages` False).
    """
    trunk_stages = False   # whether the method also targets the trunk's stages (gradients must reach them)

    def __init__(self, model, target_layers, size: tuple[int, int]):
        super().__init__(model, target_layers)
        self.size, self.peaks = size, []

    @staticmethod
    def layers(wrapper: FixedMetadata) -> list[nn.Module]:
        return wrapper.model.cam_target_layers()

    def get_target_width_height(self, input_tensor):
        return self.size[1], self.size[0]

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.peaks.append(float(np.maximum(cam, 0).max()))   # in target-layer order
        return cam

    @property
    def empty(self) -> bool:
        """No target layer holds positive evidence."""
        return max(self.peaks, default=0.0) <= EMPTY_PEAK


class PeakRecordingGradCAM(ImageSizedCAM, GradCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""


class PeakRecordingGradCAMPlusPlus(ImageSizedCAM, GradCAMPlusPlus):
    """Grad-CAM++: channels weighted by their positive gradients, each scaled by a per-position
    coefficient (second and third powers of the gradient), so that several separate regions
    of one class can all show."""


class PeakRecordingLayerCAM(ImageSizedCAM, LayerCAM):
    """LayerCAM: each position weighted by its own positive gradient (no channel averaging)."""


class FineLayerCAM(PeakRecordingLayerCAM):
    """LayerCAM at the trunk's finer stages too (its output at stride 16 and, when the caller
    has it, its stride-8 stage), beside each member's last stage (stride 32).

    The fusion differs from the library's mean of the scaled per-layer maps: the map is the
    geometric mean of the last stage's map (the members' mean) and the finer stages' mean,
    rescaled to [0, 1]. So the finer stages add detail only where the last stage sees the class
    (alone, or averaged in, they drift toward texture), and the map stays of degree one in the
    activations like every other method's (a plain product would look sharper only by squaring,
    and so score higher on mass-based localisation for no better placement). Empty when the
    last stage or the finer stages hold no positive evidence, or the two never overlap.
    """
    trunk_stages = True

    @staticmethod
    def layers(wrapper: FixedMetadata) -> list[nn.Module]:
        return wrapper.all_layers()   # forward order

    def is_last(self) -> np.ndarray:
        """Per target layer (in their order), whether it is a member's last stage."""
        last = self.model.model.cam_target_layers()
        return np.array([any(layer is t for t in last) for layer in self.target_layers])

    def aggregate_multi_layers(self, cam_per_target_layer):
        last = self.is_last()
        maps = np.concatenate(cam_per_target_layer, axis=1)   # (N, layers, H, W), each in [0, 1]
        fused = np.sqrt(maps[:, last].mean(1) * maps[:, ~last].mean(1))
        self.fused_peak = float(fused.max())
        return scale_cam_image(fused)

    @property
    def empty(self) -> bool:
        last, peaks = self.is_last(), np.array(self.peaks)
        return (peaks[last].max() <= EMPTY_PEAK or peaks[~last].max() <= EMPTY_PEAK
                or self.fused_peak <= EMPTY_PEAK)


# The selector's methods, first = default. HiResCAM is left out: with global average pooling
# and linear heads, as here, its map is Grad-CAM's exactly.
CAM_METHODS: dict[str, type[ImageSizedCAM]] = {
    "Grad-CAM": PeakRecordingGradCAM,
    "Grad-CAM++": PeakRecordingGradCAMPlusPlus,
    "LayerCAM": PeakRecordingLayerCAM,
    "LayerCAM (fine)": FineLayerCAM,
}
DEFAULT_CAM_METHOD = "Grad-CAM"


def gradcam(model: Ensemble, low: torch.Tensor, meta: torch.Tensor | None, class_index: int,
            size: tuple[int, int], method: str = DEFAULT_CAM_METHOD, versus: int | None = None,
            stage: torch.Tensor | None = None) -> tuple[np.ndarray, bool]:
    """A class-activation map of class_index for one image, from its trunk output low
    (1, C, h, w) (whole-network members: the image's unflipped view (1, 3, H, W)): one backward
    pass through the ensemble's mean logit, the members' maps averaged by the library. method: a
    key of CAM_METHODS (Grad-CAM by default). versus: a second class index; the map then targets
    class_index's logit minus versus's (ContrastTarget).
    stage: the same image's trunk stage FINE_STAGE_BLOCK (1, C, 2h, 2w), where the methods that
    target the trunk's stages start (without it they use the stages from low on); unused for
    whole-network members, whose own stages (WHOLE_FINE_BLOCKS) those methods target.
    Returns (map in [0, 1] of size (H, W), empty)."""
    kind = _method(method)
    whole = model.whole_network
    from_stage = kind.trunk_stages and stage is not None and not whole
    wrapper = FixedMetadata(model, meta, FINE_STAGE_BLOCK + 1 if from_stage else None,
                            input_grad=kind.trunk_stages and not whole)
    layers = kind.layers(wrapper)
    # The graph starts at the earliest target layers: the last stage's, or for whole-network members
    # each member's first finer stage (the image needs no gradient); from the input otherwise.
    starts = ([m.backbone.blocks[WHOLE_FINE_BLOCKS[0]] for m in model.members] if whole and kind.trunk_stages
              else [] if kind.trunk_stages else layers)
    return _map(kind, wrapper, layers, starts, size, stage if from_stage else low, class_index, versus)


def gradcam_from_kept(model: Ensemble, kept: torch.Tensor, meta: torch.Tensor | None, class_index: int,
                      size: tuple[int, int], method: str = DEFAULT_CAM_METHOD,
                      versus: int | None = None) -> tuple[np.ndarray, bool]:
    """gradcam's map for one image from its members' kept last block outputs (M, 1, C, h, w)
    (Ensemble.pooled_and_kept on its unflipped view): conv_head, bn2, pooling and heads only, so
    it costs about nothing. Only for the methods that target nothing but the members' last
    activation (not trunk_stages); the maps are gradcam's."""
    kind = _method(method)
    if kind.trunk_stages:
        raise ValueError(f"{method} also targets the trunk's stages: use gradcam")
    wrapper = KeptBlocks(model, meta)
    layers = kind.layers(wrapper)
    return _map(kind, wrapper, layers, layers, size, kept.transpose(0, 1), class_index, versus)


def _method(method: str) -> type[ImageSizedCAM]:
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {list(CAM_METHODS)}, got {method!r}")
    return CAM_METHODS[method]


def _map(kind: type[ImageSizedCAM], wrapper: nn.Module, layers: list[nn.Module], starts: list[nn.Module],
         size: tuple[int, int], x: torch.Tensor, class_index: int, versus: int | None) -> tuple[np.ndarray, bool]:
    """kind's map of class_index (rather than versus) for the one input x of wrapper, targeting
    layers, the graph starting at the outputs of `starts` (graph_starts_here): (map, empty)."""
    target = ClassifierOutputTarget(class_index) if versus is None else ContrastTarget(class_index, versus)
    cut = [layer.register_forward_hook(graph_starts_here) for layer in starts]   # before the CAM's own hooks
    try:
        with torch.enable_grad(), kind(wrapper, layers, size) as cam:
            heat = cam(x, targets=[target])[0]
            empty = cam.empty
    finally:
        for handle in cut:
            handle.remove()
    return (np.zeros_like(heat) if empty else heat), empty


def gradcam_overlay(rgb: np.ndarray, heat: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """Jet heatmap over an RGB uint8 image of the same size; the plain image if heat is empty."""
    if not heat.any():
        return rgb
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1 - weight)
