"""An analysis's heatmaps, drawn from what its passes kept (lesion_app.classifier.passes.ImageFeatures)
with the methods of lesion_app.evidence.gradcam: which class a map shows (heatmap_target), where each
method starts (the members' kept last block outputs, or the kept trunk output and stage, or for
whole-network members the kept image), and the maps of heads whose gradients do not depend on the
metadata drawn once per image.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..classifier.ensemble import Ensemble
from ..classifier.passes import ImageFeatures
from ..classifier.vocab import CLASSES
from .gradcam import CAM_METHODS, TOP_TWO, gradcam, gradcam_from_kept

ADDITIVE_HEADS = ("image_only", "concat", "late")   # class-score gradients do not depend on the metadata


class Heatmaps(NamedTuple):
    """One model's heatmaps for one target, in lesion_app.analysis.analysis.ModelResult's order."""
    cam: np.ndarray              # the first image's map, (H, W) in [0, 1], zeros when empty
    cam_class: str
    cam_empty: bool
    cam_method: str
    extra_cams: list             # [(map, empty)] of each further image of the lesion
    cam_versus: str | None       # the class the maps are contrasted with (None: plain maps of cam_class)


def check_heatmap(cam_class: str | None, cam_method: str) -> None:
    """ValueError unless cam_class is None, a class or TOP_TWO, and cam_method a key of CAM_METHODS."""
    if cam_class is not None and cam_class not in (*CLASSES, TOP_TWO):
        raise ValueError(f"cam_class must be one of {CLASSES} or {TOP_TWO!r}")
    if cam_method not in CAM_METHODS:
        raise ValueError(f"cam_method must be one of {list(CAM_METHODS)}")


def heatmap_target(cam_class: str | None, probabilities: dict[str, float]) -> tuple[str, str | None]:
    """A heatmap's (class, the class it is contrasted with or None) for one model's probabilities:
    cam_class itself; by default (None) the model's top class; TOP_TWO its top class rather than
    its second."""
    ranked = sorted(probabilities, key=probabilities.get, reverse=True)   # stable: ties as ModelResult.top
    if cam_class == TOP_TWO:
        return ranked[0], ranked[1]
    return cam_class or ranked[0], None


def model_heatmaps(ens: Ensemble, key: str, f: ImageFeatures, target: tuple[str, str | None],
                   meta: torch.Tensor | None, method: str, size: tuple[int, int],
                   device: torch.device) -> Heatmaps:
    """The heatmaps of ensemble `ens` (kind `key`) for target (class, the class it is contrasted with
    or None), one per image. Methods that target only the members' last activation start from their
    last block outputs kept from the prediction (conv_head, pooling and heads only); the fine methods
    from the kept trunk output and stage (the members' upper stages once more), or for whole-network
    members from the kept image. Maps of heads whose gradients do not depend on the metadata
    (image-only, and additive fusion) are kept in f.cams per target and method, and reused."""
    cls, versus = target
    cache_key = (key, cls, versus, method)
    reusable = ens.head_kind in ADDITIVE_HEADS
    if reusable and cache_key in f.cams:
        maps = f.cams[cache_key]
    else:
        args = (None if meta is None else meta.to(device), CLASSES.index(cls), size, method,
                None if versus is None else CLASSES.index(versus))
        if f.kept is not None and not CAM_METHODS[method].trunk_stages:
            # The members' last block outputs were kept from the prediction: no block runs again.
            kept = f.kept[key]
            maps = [gradcam_from_kept(ens, kept[:, i:i + 1], *args) for i in range(kept.shape[1])]
        else:
            start = f.images if ens.whole_network else f.low
            stage = None if ens.whole_network else f.stage
            maps = [gradcam(ens, start[i:i + 1], *args, stage=None if stage is None else stage[i:i + 1])
                    for i in range(len(start))]
        if reusable:
            f.cams[cache_key] = maps
    (heat, empty), rest = maps[0], maps[1:]
    return Heatmaps(heat, cls, empty, method, list(rest), versus)
