"""The plain result of one analysis: what the UI renders and what /report returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocab import CLASSES, UNKNOWN, class_label

ABSENT_BASELINE = ("a feature that is absent is set to 'not entered' (age missing, sex unknown, "
                   "site unknown); base = the fusion model's probability with none of the three entered")


@dataclass
class ModelResult:
    """One model's calibrated probabilities and its heatmap (cam_method) for cam_class, or for
    cam_class rather than cam_versus (a contrastive map: what raised the first's score over the second's)."""
    probabilities: dict[str, float]
    cam: np.ndarray                 # (H, W) in [0, 1], zeros when empty
    cam_class: str
    cam_empty: bool
    cam_method: str = "Grad-CAM"    # a key of lesion_app.evidence.gradcam.CAM_METHODS
    extra_cams: list = field(default_factory=list)  # [(cam, empty)] of each further image of the lesion
    cam_versus: str | None = None   # the class the map is contrasted with (None: a plain map of cam_class)

    @property
    def top(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def labelled(self) -> dict[str, float]:
        """{'Melanoma (mel)': p, ...} for all 7 classes."""
        return {class_label(c): p for c, p in self.probabilities.items()}


@dataclass
class ShapleyResult:
    """Exact Shapley values of age, sex and site for the fusion probability of `cls`."""
    cls: str
    base: float
    contributions: dict[str, float]  # age, sex, site
    value: float                     # = base + sum(contributions), the fusion probability

    def to_report(self) -> dict:
        return {"class": self.cls, "space": "probability", "base": self.base,
                **self.contributions, "baseline": ABSENT_BASELINE}


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


@dataclass
class LesionFindings:
    """The lesion as the segmentation outlines it in the first image the models saw, measured from
    the outline: measurements of the outline, not the ABCD rule's scores and not a diagnosis.
    Measures are None when no lesion was found."""
    mask: np.ndarray                 # (H, W) bool, the size of Analysis.image: True inside the outline
    found: bool                      # False: no lesion, or one covering nearly the whole image
    area_share: float | None = None  # lesion pixels / image pixels, 0..1
    asymmetry: float | None = None   # 0 (mirror-symmetric about both principal axes) .. 1
    border: dict = field(default_factory=dict)   # {"irregularity": float >= 0, "sharpness": float 0..1}
    colours: dict = field(default_factory=dict)  # dermoscopic colour -> share of the lesion (those present)
    attention_inside: dict = field(default_factory=dict)  # kind -> share of its heatmap's mass inside, 0..1
    attention_ratio: dict = field(default_factory=dict)   # kind -> mean map value inside / outside
    reference: dict = field(default_factory=dict)  # measure -> class -> [q1, median, q3] in the archive
    warnings: list = field(default_factory=list)   # plain sentences (no lesion found, evidence off it)

    def to_report(self) -> dict:
        """/report's `lesion`: found, the measures, and each heatmap's share inside the outline."""
        if not self.found:
            return {"found": False, "warnings": list(self.warnings)}
        return {"found": True, "area_share": self.area_share, "asymmetry": self.asymmetry,
                "border": dict(self.border), "colours": dict(self.colours),
                "attention_inside": dict(self.attention_inside), "attention_ratio": dict(self.attention_ratio),
                "warnings": list(self.warnings)}


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
    similar_cases: object = None     # lesion_app.evidence.archive.SimilarCases, when the weights have an archive
    features: ImageFeatures | None = field(default=None, repr=False)  # for a metadata change
    extra_images: list = field(default_factory=list)  # further images of the same lesion, as `image`
    repeated: list = field(default_factory=list)  # how often each image given more than once was given
    lesion: LesionFindings | None = None  # the outline and its measures, when the weights have a segmenter
    shift: object = None             # lesion_app.evidence.shift.ShiftReading: how unlike the training images (first image)
    skin_tone: object = None         # lesion_app.evidence.skin_tone.SkinTone: the skin around the lesion (first image)
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

    def reading(self) -> str:
        """Do the models agree, and what did the entered metadata do to the fusion top class;
        from how many images, when more than one.

        Credits only fields that were entered; with none entered it says so and nothing more.
        """
        line = self._reading()
        line = line if self.n_images == 1 else f"From {self.n_images} images of this lesion: {line}"
        return f"{line} Note: {self.repeat_note}." if self.repeated else line

    @property
    def repeat_note(self) -> str:
        """What was counted once: '2 of the images were the same; counted once' ('' if nothing)."""
        if not self.repeated:
            return ""
        first, *rest = self.repeated
        same = " and ".join([f"{first} of the images were the same", *(f"{g} others were the same" for g in rest)])
        return f"{same}; {'counted once' if not rest else 'each counted once'}"

    def _reading(self) -> str:
        f, i = self.fusion, self.image_only
        top, pf, pi = class_label(f.top), f.probabilities[f.top], i.probabilities[i.top]
        verdict = (f"Both models agree: {top} (fusion {pf:.0%}, image-only {pi:.0%})." if self.agree else
                   f"The models disagree: image-only says {class_label(i.top)} ({pi:.0%}), "
                   f"fusion says {top} ({pf:.0%}).")
        fields = self.entered()
        if not fields:
            return ("No metadata entered: the fusion model answered from the image alone "
                    f"(age, sex and site all not entered). {verdict}")
        names = _join([f"{k} ({_value(self.metadata[k])})" for k in fields])
        s = self.top_explained
        if self.no_metadata_top != f.top:
            line = (f"{verdict} The entered {names} moved the fusion model from "
                    f"{class_label(self.no_metadata_top)} to {top}")
            if s is None:
                return line + "."
            pushes = [f"{k} {_signed(s.contributions[k])}" for k in _by_size(s, fields)
                      if s.contributions[k] >= 0.0005]
            return line + (f", pushed by {', '.join(pushes)}." if pushes else
                           f"; no entered field alone raised P({f.top}).")
        line = f"{verdict} From the image alone the fusion model also says {f.top}"
        if s is None:
            return f"{line}; entered: {names}."
        effects = ", ".join(f"{k} {_signed(s.contributions[k])}" for k in _by_size(s, fields))
        return f"{line}; the entered {names} changed P({f.top}) by {effects}."

    def to_report(self) -> dict:
        """The /report JSON contract."""
        return {
            "fusion": {"probabilities": self.fusion.probabilities, "top": self.fusion.top},
            "image_only": {"probabilities": self.image_only.probabilities, "top": self.image_only.top},
            "shap": self.shap.to_report(),
            "agree": self.agree,
            "reading": self.reading(),
            "metadata": self.metadata,
            "warnings": list(self.warnings),
            "prediction_sets": self.prediction_sets,
            "what_if": self.what_if,
            "model": self.model_info,
            **({"similar_cases": self.similar_cases.to_report()} if self.similar_cases is not None else {}),
            **({"n_images": self.n_images} if self.n_images > 1 or self.repeated else {}),
            **({"note": self.repeat_note} if self.repeated else {}),
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


def _join(items: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _signed(v: float) -> str:
    """A probability change in percentage points, one decimal; no '-0.0%'."""
    return "±0.0%" if abs(v) < 0.0005 else f"{v:+.1%}"


def _by_size(s: ShapleyResult, fields) -> list[str]:
    """The fields, largest absolute Shapley value first."""
    return sorted(fields, key=lambda k: -abs(s.contributions[k]))
