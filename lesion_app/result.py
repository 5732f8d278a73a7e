"""The plain result of one analysis: what the UI renders and what /report returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocab import CLASSES, class_label

ABSENT_BASELINE = ("a feature that is absent is set to 'not entered' (age missing, sex unknown, "
                   "site unknown); base = the fusion model's probability with none of the three entered")


@dataclass
class ModelResult:
    """One model's calibrated probabilities and its Grad-CAM for cam_class."""
    probabilities: dict[str, float]
    cam: np.ndarray                 # (H, W) in [0, 1], zeros when empty
    cam_class: str
    cam_empty: bool

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
class Analysis:
    image: np.ndarray                # (H, W, 3) uint8: what the models saw (cropped, resized)
    fusion: ModelResult
    image_only: ModelResult
    shap: ShapleyResult
    no_metadata_top: str             # fusion model's top class with nothing entered
    metadata: dict                   # the parsed age, sex, site
    warnings: list[str] = field(default_factory=list)
    model_info: dict = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        return self.fusion.top == self.image_only.top

    def reading(self) -> str:
        """One line: do the models agree; if not, which metadata moved the top class."""
        f, i = self.fusion, self.image_only
        if self.agree:
            return (f"Both models agree: {class_label(f.top)} (fusion {f.probabilities[f.top]:.0%}, "
                    f"image-only {i.probabilities[i.top]:.0%}).")
        # Contributions toward the fusion model's top class, strongest first.
        contrib = self.shap.contributions if self.shap.cls == f.top else {}
        pushes = ", ".join(f"{k} {v:+.0%}" for k, v in sorted(contrib.items(), key=lambda kv: -kv[1])
                           if v > 0.005) or "no single input"
        if self.no_metadata_top != f.top:
            return (f"The models disagree: image-only says {class_label(i.top)} "
                    f"({i.probabilities[i.top]:.0%}); the entered metadata moved the fusion model "
                    f"from {class_label(self.no_metadata_top)} to {class_label(f.top)} "
                    f"({f.probabilities[f.top]:.0%}), pushed by {pushes}.")
        return (f"The models disagree: image-only says {class_label(i.top)} "
                f"({i.probabilities[i.top]:.0%}), fusion says {class_label(f.top)} "
                f"({f.probabilities[f.top]:.0%}); the fusion model leans to {f.top} even with no "
                f"metadata, and the metadata adds {pushes}.")

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
            "model": self.model_info,
        }


def probabilities_dict(p: np.ndarray) -> dict[str, float]:
    return {c: float(v) for c, v in zip(CLASSES, p)}
