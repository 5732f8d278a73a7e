"""The classifier's side of an analysis: what an analysis keeps of its passes through both ensembles
(ImageFeatures), for a metadata change.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageFeatures:
    """What a metadata change needs from one analysis (one image, or several of one lesion), kept
    in the session's memory only (never on disk): the shared trunk's output for each image's
    unflipped view (the image itself too when some members hold their whole network), each member's
    pooled features per kind (every image's views as views of one input), their last block's
    output on each unflipped view (where most heatmaps start), and heatmaps already computed, by (kind,
    class, versus, method)."""
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
    unlike_dermoscopy: bool = False  # the OOD check flagged the first image (its outline may be no lesion)
    shift: object = None             # lesion_app.evidence.shift.ShiftReading of the first image, when the weights have one
    skin_tone: object = None         # lesion_app.evidence.skin_tone.SkinTone of the first image, when the weights have one
    measured: dict = field(default_factory=dict)   # the first image's outline measures, once taken
