"""The classifier's side of an analysis: the forward passes of a batch of images through both
ensembles, each run once, and what an analysis keeps of them.

`Passes` runs them over the loaded pieces it is given (lesion_app.analysis.loading builds them):
one pass of the frozen stages over every flip view (the shared trunk, and the frozen ImageNet
stages the segmenter, the OOD check and a trunk-feature archive read: lesion_app.classifier.frozen),
each image's lesion outline from that same pass (the segmenter), the members' upper stages (their
pooled features and, when kept, their last block's output on each unflipped view, where most
heatmaps start), and the heads (calibrated probabilities from pooled features and metadata rows,
cheap enough to run once per Shapley coalition). `ImageFeatures` is what an analysis keeps of them
for a metadata change. Nothing here loads a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .ensemble import Ensemble
from .frozen import FrozenStages
from .preprocess import InputSpec, flip_views, input_box, mean_over_views, to_tensor
from .segmenter import STAGES as TRUNK_STAGES
from .segmenter import THRESHOLD as SEGMENT_THRESHOLD
from .segmenter import LesionSegmenter, largest_component, mask_for_image


@dataclass
class FrozenPass:
    """What one pass of the frozen stages gives an analysis (Passes.frozen_pass)."""
    views: torch.Tensor                 # (B * V, 3, H, W) every flip view, what whole-network members run on
    low: torch.Tensor | None            # the shared trunk's output for every view; None without one
    reference: torch.Tensor | None      # the frozen ImageNet trunk's output (OOD, trunk-feature archive)
    outlines: list | None               # each image's lesion outline, with a segmenter
    stage: torch.Tensor | None          # each unflipped view's shared-trunk stage asked for (fine_block)


@dataclass
class ImageFeatures:
    """What a metadata change needs from one analysis (one image, or several of one lesion), kept
    in the session's memory only (never on disk): the shared trunk's output for each image's
    unflipped view (the image itself too when some members hold their whole network), each member's
    pooled features per kind (every image's views as views of one input), their last block's
    output on each unflipped view (where most heatmaps start), and what the evidence computed
    once per image: heatmaps by (kind, class, versus, method), the similar-cases query, the
    outline's measures."""
    low: object                      # torch.Tensor (images, C, h, w); None when no member uses a shared trunk
    pooled: dict                     # kind -> torch.Tensor (members, 1, images * views, F)
    cams: dict = field(default_factory=dict)
    kept: dict | None = None         # kind -> torch.Tensor (members, images, C, h, w): each member's last
                                     # block output on each unflipped view, where Grad-CAM, Grad-CAM++ and
                                     # LayerCAM start (lesion_app.evidence.gradcam.gradcam_from_kept)
    embedding: object = None         # torch.Tensor (1, D): the similar-cases query (lesion_app.evidence.archive)
    outlines: list | None = None     # each image's lesion outline, bool (H, W), when there is a segmenter
    stage: object = None             # torch.Tensor (images, C, 2h, 2w): each unflipped view's trunk stage
                                     # lesion_app.evidence.gradcam.FINE_STAGE_BLOCK, for the fine heatmaps
    images: object = None            # torch.Tensor (images, 3, H, W): each unflipped view, kept for the
                                     # heatmaps of whole-network members (None when there are none)
    measured: dict = field(default_factory=dict)   # the first image's outline measures, once taken


class Passes:
    """Both ensembles' passes over one device. models: kind -> Ensemble (on the device, no
    gradients); frozen: the shared trunk and frozen ImageNet stages; segmenter: the lesion
    outline's decoder or None; spec: the manifest's input spec; temperature: kind -> its
    calibration temperature. Not thread-safe: the caller holds one lock over every use."""

    def __init__(self, models: dict[str, Ensemble], frozen: FrozenStages, segmenter: LesionSegmenter | None,
                 spec: InputSpec, temperature: dict[str, float], device: torch.device):
        self.models, self.frozen, self.segmenter = models, frozen, segmenter
        self.spec, self.temperature, self.device = spec, temperature, device

    @property
    def has_shared_trunk(self) -> bool:
        """Whether some member runs on the shared trunk (else every member holds its whole network)."""
        return self.frozen.shared is not None

    @property
    def trunk(self) -> torch.nn.Module:
        """What trunk_features runs, as a module whose `lower` runs it: the shared trunk (an Ensemble
        over it), or without one the frozen ImageNet trunk (loaded on first use)."""
        shared = [m for m in self.models.values() if not m.whole_network]
        return shared[0] if shared else self.frozen.load_imagenet()

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image, self.spec)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> every flip view, (B * V, 3, H, W), channels-last on the device."""
        return flip_views(x.to(self.device)).flatten(0, 1).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the shared trunk's output for every flip view, (B * V, C, h, w); without a
        shared trunk, the frozen ImageNet trunk's (what the OOD check reads; one extra pass)."""
        low, reference, _ = self.frozen.run(self.views(x), reference=not self.has_shared_trunk)
        return low if low is not None else reference

    @torch.inference_mode()
    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the frozen ImageNet trunk's output (conv_stem..blocks[4]) for every flip
        view, (B * V, 112, h, w): what the OOD check and a trunk-feature archive read. A shared trunk
        split at 5 gives it as is; otherwise it is computed as lesion_app.classifier.frozen says (the
        shipped trunk, split at 4, continued by the frozen blocks[4])."""
        return self.frozen.run(self.views(x), reference=True)[1]

    @torch.inference_mode()
    def frozen_pass(self, x: torch.Tensor, outlines: bool = False, reference: bool = False,
                    fine_block: int | None = None) -> FrozenPass:
        """One pass of the frozen stages over x's flip views (lesion_app.classifier.frozen): the
        shared trunk's output, the reference output when asked for (or free), with outlines (and a
        segmenter) each image's lesion outline, and with fine_block each unflipped view's output of
        that trunk block when the shared trunk computes it (where the fine heatmaps start)."""
        views = self.views(x)
        n, v = len(x), len(views) // len(x)
        fine_stage = fine_block is not None and self.has_shared_trunk and self.frozen.split > fine_block
        segment = outlines and self.segmenter is not None
        low, ref, stages = self.frozen.run(views, stages=segment or fine_stage, reference=reference)
        stage = None
        if fine_stage:
            fine = stages[TRUNK_STAGES.index(fine_block)]
            stage = fine.view(n, v, *fine.shape[1:])[:, 0]
        masks = None
        if segment:
            # The outline's map: every flip view segmented, flipped back and averaged (no trunk cost).
            prob = self.segmenter.probabilities(stages, (self.spec.height, self.spec.width), v).cpu().numpy()
            masks = [largest_component(p > SEGMENT_THRESHOLD) for p in prob]
        return FrozenPass(views, low, ref, masks, stage)

    def upper_pass(self, x: torch.Tensor, low: torch.Tensor | None = None, views: torch.Tensor | None = None,
                   keep: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """pooled_features(x, low, views); with keep, also per kind each member's last block output
        on each image's unflipped view (M, B, C, h, w), from which the heatmaps are drawn without
        running a block again (lesion_app.evidence.gradcam.gradcam_from_kept)."""
        out, kept = {}, {} if keep else None
        for k, m in self.models.items():
            if m.whole_network:
                views = self.views(x) if views is None else views
                start = views
            else:
                low = self.trunk_features(x) if low is None else low
                start = low
            v = len(start) // len(x)
            if keep:
                pooled, kept[k] = m.pooled_and_kept(start, list(range(0, len(start), v)))
            else:
                pooled = m.pooled(start)
            out[k] = pooled.view(len(m.members), len(x), v, -1)
        return out, kept

    @torch.inference_mode()
    def pooled_features(self, x: torch.Tensor, low: torch.Tensor | None = None,
                        views: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> per kind (M, B, V, F): each member's pooled features of the flip views.
        low: the shared trunk's output (trunk_features(x)), reused when given; views: x's flip views
        (self.views(x)), which whole-network members run on, reused when given."""
        return self.upper_pass(x, low, views)[0]

    @torch.inference_mode()
    def head_probabilities(self, key: str, pooled: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from pooled member features (M, B, V, F) and meta (B, META_DIM):
        softmax(mean over members and views of the logits / temperature), (B, classes).

        Cheap (heads only), so explanations can call it once per metadata coalition.
        """
        m, b, v, f = pooled.shape
        ens = self.models[key]
        meta = meta.to(self.device).repeat_interleave(v, 0) if ens.uses_metadata else None
        logits = mean_over_views(ens.head_logits(pooled.reshape(m, b * v, f), meta), v)
        return torch.softmax(logits / self.temperature[key], dim=1)

    def lesion_masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Each image's lesion outline as a bool mask at the image's own size: the 4 flip views'
        maps averaged, as an analysis outlines a lesion (needs a segmenter)."""
        x = torch.stack([self.image_tensor(im) for im in images])
        views = self.views(x)
        with torch.inference_mode():
            _, _, stages = self.frozen.run(views, stages=True)
            prob = self.segmenter.probabilities(stages, (self.spec.height, self.spec.width),
                                                len(views) // len(x)).cpu().numpy()
        return [mask_for_image(p, im.size, self.spec, input_box(im, self.spec)) for p, im in zip(prob, images)]


def combined(pooled: torch.Tensor) -> torch.Tensor:
    """(M, N, V, F) pooled features of N images of one lesion -> (M, 1, N * V, F): every image's
    views as views of one input, so the heads' mean over views averages the logits over them all."""
    m, n, v, f = pooled.shape
    return pooled.reshape(m, 1, n * v, f)
