"""An Analysis as the page shows it: Markdown, inline heatmap HTML, figures and the report JSON,
one field per output (`PageContent`). Computes nothing about the image; only renders."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
from PIL import Image

from ..analysis.analysis import Analysis, ModelResult
from ..analysis.reading import reading
from ..classifier.vocab import CLASSES, class_label
from ..evidence.archive import ATTRIBUTION, DESCRIPTIONS, SimilarCases
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import gradcam_overlay
from ..evidence.lesion import COLOUR_MIN_SHARE, COLOURS, OUTLINE_CAVEAT, with_outline
from .clinical import melanoma_markdown, subgroup_markdown
from .figures import shap_figure, what_if_figure

START = "Upload an image or pick an example, then press **Analyze**."
NEW_IMAGE = "New image: press **Analyze** to analyse it."


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()   # a PageContent field the event leaves as the page shows it (None blanks it)


@dataclass
class PageContent:
    """What one event shows, by output (the names of layout.View's outputs); KEEP leaves one as is."""
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
    similar_vote: object = KEEP
    similar_cases: object = KEEP
    lesion_view: object = KEEP
    lesion_measures: object = KEEP

    def shown(self) -> dict[str, object]:
        """{output name: value} for the outputs this content changes."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not KEEP}

    @classmethod
    def blank(cls, reading: str) -> "PageContent":
        """Every output emptied, the reading line set to `reading`."""
        return cls(**{**{f.name: None for f in fields(cls)}, "reading": reading})


def labelled(r: ModelResult) -> dict[str, float]:
    """{'Melanoma (mel)': p, ...} for all 7 classes: one model's probabilities as gr.Label shows them."""
    return {class_label(c): p for c, p in r.probabilities.items()}


def set_markdown(a: Analysis, level: str, kind: str) -> str:
    """'90% prediction set: Melanoma (mel), Melanocytic nevus (nv)' for one model."""
    sets = a.prediction_sets.get(level, {})
    if kind not in sets:
        return "No prediction-set thresholds in these weights (python -m train.release.prediction_sets)."
    names = ", ".join(class_label(c) for c in sets[kind]) or "empty (no class reaches the threshold)"
    return f"**{float(level):.0%} prediction set:** {names}"


def cam_note(r: ModelResult) -> str:
    if r.cam_versus is not None:   # a contrastive map: the first class rather than the second
        a, b = r.cam_class, r.cam_versus
        if r.cam_empty:
            return (f"⚠️ **The {r.cam_method} map for {class_label(a)} rather than {class_label(b)} is empty**: "
                    f"no image region raises {a}'s score over {b}'s (every weighted activation is negative "
                    "or zero). The plain image is shown instead.")
        return (f"{r.cam_method} for **{class_label(a)}** rather than **{class_label(b)}**: red regions raised "
                f"{a}'s score over {b}'s most.")
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


def heatmap_html(rgb: np.ndarray, cam: np.ndarray, alt: str, outline: np.ndarray | None = None) -> str:
    """The heatmap `cam` over the image `rgb`, with the lesion's outline when given, as an inline <img>."""
    return image_html(with_outline(gradcam_overlay(rgb, cam), outline), alt)


def outlines_of(a: Analysis) -> list:
    """Each image's lesion outline (None where the weights have no segmenter)."""
    found = a.features.outlines if a.features is not None and a.features.outlines is not None else None
    return list(found) if found is not None else [None] * a.n_images


def cam_strip(a: Analysis, r: ModelResult, name: str, heatmap: Callable[..., str] = heatmap_html,
              outline: bool = True) -> str:
    """One model's heatmap (the lesion outlined on it when `outline`); for several images of a
    lesion, a strip of one map per image."""
    alt = f"{name} {r.cam_method}"
    masks = outlines_of(a) if outline else [None] * a.n_images
    if a.n_images == 1:
        return heatmap(a.image, r.cam, alt, masks[0])
    maps = [(r.cam, r.cam_empty), *r.extra_cams]
    cells = [f'<figure style="margin:0;min-width:0">'
             f'{heatmap(rgb, cam, f"{alt}, image {i + 1} of {a.n_images}", mask)}'
             f'<figcaption style="font-size:0.85em">Image {i + 1} of {a.n_images}'
             f'{": empty map, plain image shown" if empty else ""}</figcaption></figure>'
             for i, (rgb, (cam, empty), mask) in enumerate(zip(a.images, maps, masks))]
    # Two maps a row, each the same size, on a desktop and a phone alike.
    return f'<div class="cam_strip" style="display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:6px">' \
           f'{"".join(cells)}</div>'


def warnings_markdown(a: Analysis) -> str:
    """The warnings line: each warning, then how unlike the training images the image is and the
    skin around the lesion against the training images' (each a note when inside the training
    images' range, a warning otherwise), when the weights can tell."""
    lines = [f"⚠️ {w}" for w in a.warnings]
    if a.shift is not None:
        lines.append(("ℹ️ " if a.shift.typical else "⚠️ ") + a.shift.sentence())
    if a.skin_tone is not None:
        lines.append(("ℹ️ " if a.skin_tone.inside else "⚠️ ") + a.skin_tone.sentence())
    return "\n\n".join(lines)   # one paragraph each: joined by one newline, Markdown ran them together


def metadata_warning(error: Exception, a: Analysis | None = None) -> str:
    """The warnings line for an unfinished or invalid age, sex or site, above the shown analysis's own
    warnings (they still hold for the results shown)."""
    below = warnings_markdown(a) if a is not None else ""
    return "\n\n".join([f"⚠️ {error} The results below are for the last valid entry.", *([below] if below else [])])


def analysis_content(a: Analysis, clinical: ClinicalReport | None, specificity: str, level: str = "0.9",
                     heatmap: Callable[..., str] = heatmap_html, image_side: bool = True,
                     outline: bool = True) -> PageContent:
    """Every output for analysis a, at this operating point and prediction-set level.

    heatmap(rgb, cam, alt, outline) draws a map (a session passes its cache); the fusion map is
    drawn first, with the lesion's outline when `outline`. image_side=False leaves out the
    outputs that depend on the image alone (a metadata change); the warnings line and the lesion
    measures (whose attention figures follow the heatmaps) are always set.
    """
    page = PageContent(
        reading=f"## {reading(a)}", warnings=warnings_markdown(a),
        fusion_probs=labelled(a.fusion),
        fusion_cam=cam_strip(a, a.fusion, "Fusion", heatmap, outline), lesion_measures=lesion_markdown(a),
        fusion_note=cam_note(a.fusion), shap_plot=shap_figure(a), report_json=a.to_report(),
        melanoma=melanoma_markdown(clinical, a, specificity), subgroup=subgroup_markdown(clinical, a),
        what_if=what_if_figure(a), fusion_set=set_markdown(a, level, "fusion"),
        similar_vote=similar_markdown(a.similar_cases), similar_cases=similar_html(a.similar_cases))
    if image_side:
        page.image_only_probs = labelled(a.image_only)
        page.image_only_cam = cam_strip(a, a.image_only, "Image-only", heatmap, outline)
        page.lesion_view = lesion_view_html(a)
        page.image_only_note = cam_note(a.image_only)
        page.image_only_set = set_markdown(a, level, "image_only")
    return page


NO_ARCHIVE = "No similar-cases archive in these weights (python -m train.release.archive builds one)."
# Click a case to enlarge it, click again to close: a checkbox per case, no script (the page's
# HTML runs none), and the thumbnails are inline data, never files on the server.
GALLERY_STYLE = """<style>
#similar_cases .sc-grid{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}
@media (max-width:600px){#similar_cases .sc-grid{grid-template-columns:repeat(2,1fr)}}
#similar_cases figure{margin:0;font-size:0.85em;line-height:1.3}
#similar_cases input{display:none}
#similar_cases label{cursor:zoom-in;display:block}
#similar_cases img{width:100%;aspect-ratio:4/3;object-fit:cover;border-radius:6px;display:block}
#similar_cases input:checked+label{position:fixed;inset:0;z-index:1000;background:rgba(0,0,0,.85);cursor:zoom-out;
  display:flex;align-items:center;justify-content:center}
#similar_cases input:checked+label img{width:min(94vw,120vh,720px);height:auto;aspect-ratio:4/3;object-fit:contain}
</style>"""


def _case_html(i: int, case) -> str:
    age = "age not recorded" if case.age is None else f"{case.age:g} y"
    label = class_label(case.dx)
    data = base64.b64encode(case.thumbnail).decode()
    return (f'<figure class="sc-case" data-dx="{case.dx}"><input type="checkbox" id="sc-{i}">'
            f'<label for="sc-{i}" title="Click to enlarge"><img src="data:image/webp;base64,{data}" '
            f'alt="Confirmed {label}"></label><figcaption><b>{label}</b><br>{age} · {case.sex} · {case.site}'
            f'<br>similarity {case.similarity:.2f} · {case.image_id}</figcaption></figure>')


def similar_html(similar: SimilarCases | None) -> str:
    """The similar cases as a grid of captioned thumbnails (inline images)."""
    if similar is None:
        return ""
    if not similar.cases:
        return "<p>No archive lesion matches these filters.</p>"
    return GALLERY_STYLE + '<div class="sc-grid">' + "".join(_case_html(i, c) for i, c in enumerate(similar.cases)) \
        + "</div>"


def similar_markdown(similar: SimilarCases | None) -> str:
    """The k-NN vote as a third, separate opinion, with what the archive is."""
    if similar is None:
        return NO_ARCHIVE
    n = len(similar.cases)
    counts = {c: sum(case.dx == c for case in similar.cases) for c in CLASSES}
    ranked = sorted(CLASSES, key=lambda c: -similar.vote[c]) if n else []
    shares = ", ".join(f"{class_label(c)} {similar.vote[c]:.0%} ({counts[c]} of {n})"
                       for c in ranked if counts[c])
    weighting = ("class-weighted: each diagnosis's count divided by its share of the archive, so rare "
                 "diagnoses are not outvoted by the many nevi" if similar.weighting == "class_weighted" else "plain counts")
    filters = [f"{k} = {v}" for k, v in similar.filters.items() if v]
    lines = [f"**Vote of the {n} most similar confirmed cases** (a third opinion, separate from both models; "
             f"{weighting}): {shares or 'no cases'}."]
    if filters:
        lines.append(f"Only archive cases with {' and '.join(filters)}.")
    if similar.note:
        lines.append(f"⚠️ {similar.note}")
    lines.append(f"Archive: the {similar.archive_images:,} images of {similar.archive_lesions:,} lesions the shipped "
                 f"models trained on, each lesion shown once with its confirmed HAM10000 diagnosis; similarity is "
                 f"the cosine of {DESCRIPTIONS[similar.embedding]}. Uploads never join the archive. {ATTRIBUTION}.")
    return "\n\n".join(lines)


def similar_content(a: Analysis) -> PageContent:
    """The similar-cases panel and the report JSON (which holds them) for analysis a."""
    return PageContent(similar_vote=similar_markdown(a.similar_cases),
                       similar_cases=similar_html(a.similar_cases), report_json=a.to_report())


def prediction_sets_content(a: Analysis, level: str) -> PageContent:
    """Both models' prediction sets at another level."""
    return PageContent(fusion_set=set_markdown(a, level, "fusion"), image_only_set=set_markdown(a, level, "image_only"))


def melanoma_content(clinical: ClinicalReport | None, a: Analysis, specificity: str) -> PageContent:
    """The melanoma flags at another operating point."""
    return PageContent(melanoma=melanoma_markdown(clinical, a, specificity))


def heatmaps_content(a: Analysis, heatmap: Callable[..., str] = heatmap_html, outline: bool = True) -> PageContent:
    """Both models' heatmaps, with or without the lesion's outline (the outline toggle)."""
    return PageContent(fusion_cam=cam_strip(a, a.fusion, "Fusion", heatmap, outline),
                       image_only_cam=cam_strip(a, a.image_only, "Image-only", heatmap, outline))


NO_SEGMENTER = "These weights have no lesion segmenter (python -m train.fitting.segmentation), so no outline."
# The measures' rows: (key in the manifest's reference, label, how a value reads).
MEASURE_ROWS = (
    ("area_share", "Area (share of image)", lambda v: f"{v:.0%}"),
    ("asymmetry", "Asymmetry (0–1)", lambda v: f"{v:.2f}"),
    ("border_irregularity", "Border irregularity", lambda v: f"{v:.2f}"),
    ("border_sharpness", "Border sharpness (0–1)", lambda v: f"{v:.2f}"),
    ("colour_count", f"Colours present (of {len(COLOURS)})", lambda v: f"{v:.0f}"),
)
MEASURE_NOTES = ("Asymmetry: 0 when the outline is its own mirror image about both principal axes. Border "
                 "irregularity: 1 for a circle, higher for ragged or lobed outlines. Border sharpness: 1 when the "
                 "whole step from skin to lesion happens at the outline, low for a gradual edge.")
REFERENCE_CLASSES = ("mel", "nv", "bkl")


def lesion_view_html(a: Analysis) -> str:
    """The first image with the lesion's outline drawn, or why there is none."""
    if a.lesion is None:
        return f"<p>{NO_SEGMENTER}</p>"
    if not a.lesion.found:
        return image_html(a.image, "The image; no lesion outlined") + "<p>No lesion outlined.</p>"
    return image_html(with_outline(a.image, a.lesion.mask), "The image with the lesion's outline")


def _unbroken(text: str) -> str:
    """text with word joiners around its en dashes, which a line may otherwise break after ("0.06–" / "0.11")."""
    return text.replace("–", "\u2060–\u2060")


def _quartiles(q) -> str:
    return "–" if not q else f"{q[1]} " + _unbroken(f"[{q[0]}–{q[2]}]")


def lesion_markdown(a: Analysis) -> str:
    """The outline's measures, each beside the archive's median [quartiles] for melanomas, nevi
    and benign keratoses, and each heatmap's share inside the outline."""
    L = a.lesion
    if L is None:
        return NO_SEGMENTER
    if not L.found:
        return "**No lesion outlined.** " + " ".join(L.warnings)
    values = {"area_share": L.area_share, "asymmetry": L.asymmetry, "border_irregularity": L.border.get("irregularity"),
              "border_sharpness": L.border.get("sharpness"), "colour_count": len(L.colours)}
    lines = ["**Measurements of the outline**: not the ABCD rule's scores and not a diagnosis. The images carry "
             "no scale, so no diameter is measured.", "",
             f"| measure | this lesion | {' | '.join(REFERENCE_CLASSES)} |", "|---|---|" + "---|" * len(REFERENCE_CLASSES)]
    if OUTLINE_CAVEAT in L.warnings:
        lines[:0] = [f"**Read with care:** {OUTLINE_CAVEAT}", ""]
    for key, label, fmt in MEASURE_ROWS:
        v = values[key]
        shown = "–" if v is None or v != v else fmt(v)
        ref = L.reference.get(key, {})
        cells = " | ".join(_quartiles([fmt(x) for x in ref[c]] if c in ref else None) for c in REFERENCE_CLASSES)
        lines.append(f"| {_unbroken(label)} | **{shown}** | {cells} |")
    colours = ", ".join(f"{name} {share:.0%}" for name, share in sorted(L.colours.items(), key=lambda kv: -kv[1]))
    inside = ", ".join(f"{'fusion' if k == 'fusion' else 'image-only'} {v:.0%}" for k, v in L.attention_inside.items()
                       if v is not None)
    notes = [f"**Colours present** (at least {COLOUR_MIN_SHARE:.0%} of the lesion nearest to it): {colours or 'none'}.",
             f"**Heatmap mass inside the outline:** {inside or 'no map (empty)'}."]
    if L.reference:
        notes.append("Columns " + ", ".join(f"{c}: {class_label(c)}" for c in REFERENCE_CLASSES) + ": the archive's "
                     "median [quartiles] for that diagnosis, each image measured on the outline drawn by a segmenter "
                     "that never saw it (out-of-fold).")
    notes.append(MEASURE_NOTES)
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)
