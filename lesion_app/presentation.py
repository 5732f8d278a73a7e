"""An Analysis as the page shows it: Markdown, inline heatmap HTML, figures and the report JSON,
one field per output (`PageContent`). Computes nothing about the image; only renders."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
from PIL import Image

from .clinical_report import ClinicalReport, melanoma_markdown, subgroup_markdown
from .figures import shap_figure, what_if_figure
from .gradcam import gradcam_overlay
from .result import Analysis, ModelResult
from .vocab import class_label

START = "Upload an image or pick an example, then press **Analyze**."
NEW_IMAGE = "New image: press **Analyze** to analyse it."


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()   # a PageContent field the event leaves as the page shows it (None blanks it)


@dataclass
class PageContent:
    """What one event shows, by output (the names of ui.View's outputs); KEEP leaves one as is."""
    reading: object = KEEP
    warnings: object = KEEP
    fusion_probs: object = KEEP
    fusion_cam: object = KEEP
    fusion_note: object = KEEP
    image_only_probs: object = KEEP
    image_only_cam: object = KEEP
    image_only_note: object = KEEP
    shap_plot: object = KEEP
    report_json: object = KEEP
    melanoma: object = KEEP
    subgroup: object = KEEP
    what_if: object = KEEP
    fusion_set: object = KEEP
    image_only_set: object = KEEP

    def shown(self) -> dict[str, object]:
        """{output name: value} for the outputs this content changes."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not KEEP}

    @classmethod
    def blank(cls, reading: str) -> "PageContent":
        """Every output emptied, the reading line set to `reading`."""
        return cls(**{**{f.name: None for f in fields(cls)}, "reading": reading})


def set_markdown(a: Analysis, level: str, kind: str) -> str:
    """'90% prediction set: Melanoma (mel), Melanocytic nevus (nv)' for one model."""
    sets = a.prediction_sets.get(level, {})
    if kind not in sets:
        return "No prediction-set thresholds in these weights (python -m train.release.prediction_sets)."
    names = ", ".join(class_label(c) for c in sets[kind]) or "empty (no class reaches the threshold)"
    return f"**{float(level):.0%} prediction set:** {names}"


def cam_note(r: ModelResult) -> str:
    if r.cam_empty:
        return (f"⚠️ **The {r.cam_method} map for {class_label(r.cam_class)} is empty**: no image region "
                "raises this class's score (every weighted activation is negative or zero). "
                "The plain image is shown instead.")
    return f"{r.cam_method} for **{class_label(r.cam_class)}**: red regions raised this class's score most."


def image_html(rgb: np.ndarray, alt: str) -> str:
    """An inline (data URI) <img>: the heatmap never becomes a file on the server."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{data}" alt="{alt}" '
            'style="width:100%;max-width:512px;border-radius:6px">')


def heatmap_html(rgb: np.ndarray, cam: np.ndarray, alt: str) -> str:
    """The heatmap `cam` over the image `rgb`, as an inline <img>."""
    return image_html(gradcam_overlay(rgb, cam), alt)


def metadata_warning(error: Exception) -> str:
    """The warnings line for an unfinished or invalid age, sex or site."""
    return f"⚠️ {error} The results below are for the last valid entry."


def analysis_content(a: Analysis, clinical: ClinicalReport | None, specificity: str, level: str = "0.9",
                     heatmap: Callable[[np.ndarray, np.ndarray, str], str] = heatmap_html,
                     image_side: bool = True) -> PageContent:
    """Every output for analysis a, at this operating point and prediction-set level.

    heatmap(rgb, cam, alt) draws a map (a session passes its cache); the fusion map is drawn
    first. image_side=False leaves out the outputs that depend on the image alone (a metadata
    change); the warnings line is always set.
    """
    page = PageContent(
        reading=f"### {a.reading()}", warnings="\n".join(f"⚠️ {w}" for w in a.warnings),
        fusion_probs=a.fusion.labelled(),
        fusion_cam=heatmap(a.image, a.fusion.cam, f"Fusion {a.fusion.cam_method}"),
        fusion_note=cam_note(a.fusion), shap_plot=shap_figure(a), report_json=a.to_report(),
        melanoma=melanoma_markdown(clinical, a, specificity), subgroup=subgroup_markdown(clinical, a),
        what_if=what_if_figure(a), fusion_set=set_markdown(a, level, "fusion"))
    if image_side:
        page.image_only_probs = a.image_only.labelled()
        page.image_only_cam = heatmap(a.image, a.image_only.cam, f"Image-only {a.image_only.cam_method}")
        page.image_only_note = cam_note(a.image_only)
        page.image_only_set = set_markdown(a, level, "image_only")
    return page


def prediction_sets_content(a: Analysis, level: str) -> PageContent:
    """Both models' prediction sets at another level."""
    return PageContent(fusion_set=set_markdown(a, level, "fusion"), image_only_set=set_markdown(a, level, "image_only"))


def melanoma_content(clinical: ClinicalReport | None, a: Analysis, specificity: str) -> PageContent:
    """The melanoma flags at another operating point."""
    return PageContent(melanoma=melanoma_markdown(clinical, a, specificity))
