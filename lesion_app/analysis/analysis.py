"""The plain result of one analysis (lesion_app.analysis.pipeline makes it): what the page renders
and what /report returns. It holds numbers, classes and the evidence's own results; the one
sentence /report carries as `reading` is lesion_app.analysis.reading's, and every other word a
person reads is the page's (lesion_app.page.presentation)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..classifier.passes import ImageFeatures
from ..classifier.vocab import CLASSES, UNKNOWN
from ..evidence.archive import SimilarCases
from ..evidence.gradcam import DEFAULT_CAM_METHOD
from ..evidence.lesion import LesionFindings
from ..evidence.shapley import ShapleyResult
from ..evidence.shift import ShiftReading
from ..evidence.skin_tone import SkinTone
from .reading import reading, repeat_note


@dataclass
class ModelResult:
    """One model's calibrated probabilities and its heatmap (cam_method) for cam_class, or for
    cam_class rather than cam_versus (a contrastive map: what raised the first's score over the second's)."""
    probabilities: dict[str, float]
    cam: np.ndarray                 # (H, W) in [0, 1], zeros when empty
    cam_class: str
    cam_empty: bool
    cam_method: str = DEFAULT_CAM_METHOD   # a key of lesion_app.evidence.gradcam.CAM_METHODS
    extra_cams: list = field(default_factory=list)  # [(cam, empty)] of each further image of the lesion
    cam_versus: str | None = None   # the class the map is contrasted with (None: a plain map of cam_class)

    @property
    def top(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


@dataclass
class Analysis:
    image: np.ndarray                # (H, W, 3) uint8: what the models saw (cropped, resized)
    fusion: ModelResult
    image_only: ModelResult
    shap: ShapleyResult              # for the heatmap class when one was chosen, else the fusion top
    no_metadata_top: str             # fusion model's top class with nothing entered
    metadata: dict                   # the parsed age, sex, site (None / 'unknown' = not entered)
    warnings: list[str] = field(default_factory=list)
    model_info: dict = field(default_factory=dict)
    top_shap: ShapleyResult | None = None  # for the fusion top class, when `shap` is for another
    what_if: dict = field(default_factory=dict)  # the fusion model's answer for other ages, sexes, sites
    prediction_sets: dict = field(default_factory=dict)  # level -> kind -> classes (conformal, per class)
    similar_cases: SimilarCases | None = None   # when the weights have an archive
    features: ImageFeatures | None = field(default=None, repr=False)  # for a metadata change
    extra_images: list = field(default_factory=list)  # further images of the same lesion, as `image`
    repeated: list = field(default_factory=list)  # how often each image given more than once was given
    lesion: LesionFindings | None = None  # the outline and its measures, when the weights have a segmenter
    shift: ShiftReading | None = None     # how unlike the training images (first image), with a shift score
    skin_tone: SkinTone | None = None     # the skin around the lesion (first image), with a reference
    dermoscopic: bool = True         # False when the OOD check called the first image not dermoscopic

    @property
    def images(self) -> list[np.ndarray]:
        return [self.image, *self.extra_images]

    @property
    def n_images(self) -> int:
        return 1 + len(self.extra_images)

    @property
    def agree(self) -> bool:
        return self.fusion.top == self.image_only.top

    def entered(self) -> tuple[str, ...]:
        """The metadata fields that were entered (age not None, sex/site not 'unknown'), in order."""
        return tuple(k for k in ("age", "sex", "site") if self.metadata.get(k) not in (None, UNKNOWN))

    @property
    def top_explained(self) -> ShapleyResult | None:
        """Shapley values for the fusion top class, or None when only another class's are known."""
        for s in (self.shap, self.top_shap):
            if s is not None and s.cls == self.fusion.top:
                return s
        return None

    def to_report(self) -> dict:
        """The /report JSON contract."""
        return {
            "fusion": {"probabilities": self.fusion.probabilities, "top": self.fusion.top},
            "image_only": {"probabilities": self.image_only.probabilities, "top": self.image_only.top},
            "shap": self.shap.to_report(),
            "agree": self.agree,
            "reading": reading(self),
            "metadata": self.metadata,
            "warnings": list(self.warnings),
            "prediction_sets": self.prediction_sets,
            "what_if": self.what_if,
            "model": self.model_info,
            **({"similar_cases": self.similar_cases.to_report()} if self.similar_cases is not None else {}),
            **({"n_images": self.n_images} if self.n_images > 1 or self.repeated else {}),
            **({"note": repeat_note(self.repeated)} if self.repeated else {}),
            **({"lesion": self.lesion.to_report()} if self.lesion is not None else {}),
            "image_check": self.image_check(),
        }

    def image_check(self) -> dict:
        """/report's image_check: dermoscopic (false only for what does not look like dermoscopy),
        shift (how unlike the training images; None without a shift score) and skin_tone (None
        without a reference or with too little skin)."""
        return {"dermoscopic": self.dermoscopic,
                "shift": self.shift.to_report() if self.shift is not None else None,
                "skin_tone": self.skin_tone.to_report() if self.skin_tone is not None else None}


def probabilities_dict(p: np.ndarray) -> dict[str, float]:
    return {c: float(v) for c, v in zip(CLASSES, p)}
