"""One analysis as a one-page A4 PDF case report, laid out by reportlab's platypus and built in memory.

The page is SECTIONS, a list of small functions of the report's context, each returning its
flowables; a new section (a contrastive heatmap, say) is one more function there. Top to bottom:
the title, date and time (UTC) and disclaimer; the metadata as entered ("not entered" where blank)
and, for several images of one lesion, how many the models combined; image 1 and both models'
heatmaps (method and class named), the lesion outlined on each when the analysis has an outline;
both models' probabilities for the 7 classes with their prediction sets at the chosen level;
the Shapley values of the metadata beside the melanoma operating point; the reading and the
warnings; the lesion measures from the outline, against the archive's quartiles (only when the
analysis has them); the similar archive cases with their vote and licence; the model version
with every member's sha256; and the disclaimer again. platypus places everything (no
hand-placed coordinates); when the page would overflow, the images shrink (never the text) to
the largest size that fits.

The building blocks (fonts, styles, paragraphs, pictures, grids) are lesion_app.page.pdf_blocks'.
Built in reportlab's invariant mode with the given `when`, so the same analysis at the same time
gives the same bytes. Nothing touches the disk: it returns bytes, and writing them anywhere is the
caller's business.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from xml.sax.saxutils import escape

import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.platypus import BaseDocTemplate, Flowable, Frame, KeepTogether, PageTemplate, Spacer

from ..analysis.analysis import Analysis
from ..analysis.reading import reading as reading_of
from ..analysis.reading import signed
from ..classifier.vocab import CLASSES, UNKNOWN, class_label
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import gradcam_overlay
from ..evidence.lesion import LesionFindings
from ..evidence.lesion import with_outline as draw_outline
from ..evidence.shapley import ShapleyResult
from .clinical import melanoma_markdown
from .pdf_blocks import (HEIGHT, MARGIN, WIDTH, Bar, beside, grid, marked, markdown_paras, para, pct, picture, plain,
                         register_fonts)

DISCLAIMER = ("Research demo, not a medical device. Not for diagnosis. Outputs come from models trained on one "
              "public dataset (HAM10000) and can be wrong; they must not guide care.")
TITLE = "Skin-lesion case report: image-only vs image + age, sex and site"
COLOURS = {"fusion": "#1f77b4", "image_only": "#ff7f0e"}
NAMES = {"fusion": "Fusion", "image_only": "Image-only"}
GAP = 8                           # pt between the three images
MIN_SCALE = 0.4                   # the smallest image size tried (of full width) to fit the page
OUTLINE = (255, 0, 255)           # the lesion outline: magenta is in neither the jet map nor skin
REFERENCE_CLASSES = ("mel", "nv", "bkl")  # the archive's classes the lesion measures are set against
CLOSE_CALL = 0.20                 # the contrastive map is shown when the top two are this close


def metadata_lines(a: Analysis) -> list[str]:
    """['Age: 65 years', 'Sex: male', 'Body site: scalp'], 'not entered' where blank."""
    m = a.metadata
    age = "not entered" if m.get("age") is None else f"{m['age']:g} years"
    sex = "not entered" if m.get("sex") in (None, UNKNOWN) else m["sex"]
    site = "not entered" if m.get("site") in (None, UNKNOWN) else m["site"]
    return [f"Age: {age}", f"Sex: {sex}", f"Body site: {site}"]


# --- the report's pieces ---------------------------------------------------------------------

@dataclass(frozen=True)
class ReportContext:
    """What every section reads: the analysis, the page's choices, and how large to draw images."""
    a: Analysis
    clinical: ClinicalReport | None
    specificity: str
    level: str
    when: datetime
    scale: float = 1.0
    contrast: tuple | None = None   # (map, a, b): the fusion model's map for a rather than b, or None


Section = Callable[[ReportContext], list[Flowable]]


def with_outline(rgb: np.ndarray, lesion: LesionFindings | None) -> np.ndarray:
    """rgb with the lesion's outline drawn on it (unchanged without a lesion found)."""
    if lesion is None or not lesion.found or lesion.mask.shape != rgb.shape[:2]:
        return rgb
    return draw_outline(rgb, lesion.mask.astype(bool), colour=OUTLINE)


# --- the sections, top to bottom ---------------------------------------------------------------

def header(c: ReportContext) -> list[Flowable]:
    return [para(TITLE, "title"), Spacer(0, 1), para(f"{c.when:%Y-%m-%d %H:%M} UTC. {DISCLAIMER}", "red"), Spacer(0, 4)]


def metadata(c: ReportContext) -> list[Flowable]:
    """The metadata as entered; how many images of the lesion were combined, when more than one."""
    text = "<b>Metadata as entered:</b> " + "&nbsp;&nbsp;&nbsp; ".join(escape(x) for x in metadata_lines(c.a))
    if c.a.n_images > 1:
        text += (f"<br/><b>Images of this lesion: {c.a.n_images}</b>; the models combined them "
                 "(image 1 and its heatmaps shown).")
    return [marked(text), Spacer(0, 4)]


def images(c: ReportContext) -> list[Flowable]:
    """Image 1 and both models' heatmaps, method and class named; the lesion outlined on each."""
    a = c.a
    lesion = a.lesion if a.lesion is not None and a.lesion.found and a.lesion.mask.shape == a.image.shape[:2] else None
    cell = (WIDTH + GAP) / 3
    side = (cell - GAP) * c.scale
    shown = " with the lesion outline" if lesion is not None else ""
    cells = [[picture(with_outline(a.image, lesion), side), para(f"Image (as the models saw it){shown}", "caption")]]
    for key, r in (("fusion", a.fusion), ("image_only", a.image_only)):
        note = " (empty map: plain image)" if r.cam_empty else ""
        cells.append([picture(with_outline(gradcam_overlay(a.image, r.cam), lesion), side),
                      para(f"{NAMES[key]}: {r.cam_method} for {class_label(r.cam_class)}"
                         f"{f' rather than {class_label(r.cam_versus)}' if r.cam_versus else ''}{note}", "caption")])
    widths = [cell - GAP / 2, cell, cell - GAP / 2]
    return [grid([cells], widths, padding=GAP / 2, style=[
        ("ALIGN", (0, 0), (-1, -1), "CENTER"), ("LEFTPADDING", (0, 0), (0, 0), 0),
        ("RIGHTPADDING", (-1, 0), (-1, 0), 0)]), Spacer(0, 5)]


def probabilities(c: ReportContext) -> list[Flowable]:
    """Both models' probabilities for all 7 classes, bars, set members ticked; the sets and top classes."""
    a = c.a
    sets = a.prediction_sets.get(c.level, {})
    level = f"{float(c.level):.0%}"
    bar = 70
    head = [marked("<b>Class</b>", "cell")]
    for key in ("fusion", "image_only"):
        head += [marked(f"<b>{NAMES[key]}</b>", "cell"), "", marked(f"<b>in {level} set</b>", "caption")]
    rows = [head]
    for cls in CLASSES:
        row = [para(class_label(cls), "cell")]
        for key, r in (("fusion", a.fusion), ("image_only", a.image_only)):
            p = r.probabilities[cls]
            row += [marked(f"<b>{pct(p)}</b>" if cls == r.top else pct(p), "number"),
                    Bar(p, bar, 6, COLOURS[key]), para("✓" if cls in (sets.get(key) or ()) else "", "caption")]
        rows.append(row)
    t = grid(rows, [199] + [30, bar + 6, 126 - bar] * 2, style=[
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("SPAN", (1, 0), (2, 0)), ("SPAN", (4, 0), (5, 0)),
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f2f2")])])
    lines = []
    for key in ("fusion", "image_only"):
        members = sets.get(key)
        lines.append(f"{NAMES[key]}: " + ("not available" if members is None else
                                          ", ".join(class_label(m) for m in members) or "empty"))
    return [para("Calibrated probabilities: fusion (image + age, sex, site) and image-only", "head"), t, Spacer(0, 2),
            para(f"{level} prediction sets (class-conditional conformal): " + "; ".join(lines) + ".", "small"),
            para(f"Top class: fusion {class_label(a.fusion.top)}, image-only {class_label(a.image_only.top)}.",
               "small"), Spacer(0, 5)]


def shapley(c: ReportContext) -> list[Flowable]:
    """The exact Shapley values of age, sex and site (for the heatmap class, and for the fusion top
    class when that differs)."""
    a = c.a
    shown: list[ShapleyResult] = [a.shap]
    if a.top_explained is not None and a.top_explained.cls != a.shap.cls:
        shown.append(a.top_explained)
    rows = [[marked("<b>Field</b>", "cell"), *(marked(f"<b>P({s.cls})</b>", "number") for s in shown)]]
    for name in ("age", "sex", "site"):
        rows.append([para(name, "cell"), *(para(signed(s.contributions[name]), "number") for s in shown)])
    rows.append([para("base → value", "cell"), *(para(f"{s.base:.1%} → {s.value:.1%}", "number") for s in shown)])
    t = grid(rows, [52] + [64] * len(shown), style=[
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey), ("LINEABOVE", (0, -1), (-1, -1), 0.5, colors.grey)])
    return [para("Shapley values of the metadata", "head"), t, Spacer(0, 2),
            para("Each entered field's share of the change in the fusion model's probability, from nothing "
               "entered (base) to what was entered (value).", "small")]


def melanoma(c: ReportContext) -> list[Flowable]:
    return markdown_paras(melanoma_markdown(c.clinical, c.a, c.specificity))


def reading(c: ReportContext) -> list[Flowable]:
    a = c.a
    out = [marked("<b>Reading:</b> " + escape(plain(reading_of(a))))]
    if a.warnings:
        out += [marked("<b>Warning:</b> " + escape(plain(w)), "warning") for w in a.warnings]
    else:
        out.append(para("Warnings: none."))
    # Each sentence names itself ("Likeness to the training images: ...", "Skin around the lesion: ...").
    if a.shift is not None:
        out.append(marked(escape(plain(a.shift.sentence())), "body" if a.shift.typical else "warning"))
    if a.skin_tone is not None:
        out.append(marked(escape(plain(a.skin_tone.sentence())), "body" if a.skin_tone.inside else "warning"))
    return [*out, Spacer(0, 5)]


# (label, its key in LesionFindings.reference, its value in LesionFindings, format); colours are
# set against the number of colours present.
MEASURES = (
    ("Area share of the image", "area_share", lambda f: f.area_share, pct),
    ("Asymmetry (0 symmetric .. 1)", "asymmetry", lambda f: f.asymmetry, "{:.2f}".format),
    ("Border irregularity", "border_irregularity", lambda f: f.border.get("irregularity"), "{:.2f}".format),
    ("Border sharpness (0 .. 1)", "border_sharpness", lambda f: f.border.get("sharpness"), "{:.2f}".format),
    ("Colours present", "colour_count",
     lambda f: ", ".join(f"{k} {v:.0%}" for k, v in sorted(f.colours.items(), key=lambda kv: -kv[1])) or "none",
     str),
)


def lesion_measures(c: ReportContext) -> list[Flowable]:
    """The outline's measures beside the archive's quartiles for mel, nv and bkl (only with a.lesion)."""
    f = c.a.lesion
    if f is None:
        return []
    head = para("Lesion measures (from the outline; measurements, not a diagnosis; no scale, so no diameter)", "head")
    if not f.found:
        return [head, para("No lesion outlined."), *(para("Warning: " + w, "warning") for w in f.warnings), Spacer(0, 5)]
    refs = [k for k in REFERENCE_CLASSES if any(k in f.reference.get(m[1], {}) for m in MEASURES)]
    rows = [[marked("<b>Measure</b>", "cell"), marked("<b>This lesion</b>", "cell"),
             *(marked(f"<b>{escape(class_label(k))}</b>", "cell") for k in refs)]]
    for label, key, value, fmt in MEASURES:
        v = value(f)
        ref = f.reference.get(key, {})
        cells = []
        for k in refs:
            q = ref.get(k)
            fmt_q = (lambda x: f"{x:g}") if key == "colour_count" else fmt
            cells.append(para("" if q is None else f"{fmt_q(q[1])} [{fmt_q(q[0])}-{fmt_q(q[2])}]", "cell"))
        rows.append([para(label, "cell"), para("n/a" if v is None else fmt(v), "cell"), *cells])
    for key in ("fusion", "image_only"):
        inside, ratio = f.attention_inside.get(key), f.attention_ratio.get(key)
        text = "n/a" if inside is None else pct(inside) + ("" if ratio is None else
                                                             f" (mean {ratio:.1f}× outside)")
        rows.append([para(f"Heatmap mass inside the outline, {NAMES[key].lower()}", "cell"), para(text, "cell"),
                     *([""] * len(refs))])
    ref_w = 72 if refs else 0
    t = grid(rows, [172, WIDTH - 172 - ref_w * len(refs)] + [ref_w] * len(refs), style=[
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f2f2")])])
    note = (para("Archive columns: median [q1-q3] of the same measure over the HAM10000 lesions of that class.",
               "small") if refs else Spacer(0, 0))
    return [head, t, note, *(para("Warning: " + w, "warning") for w in f.warnings), Spacer(0, 5)]


def similar_cases(c: ReportContext) -> list[Flowable]:
    """Up to 8 similar archive lesions (diagnosis, age, site, similarity), their vote, the licence."""
    sim = c.a.similar_cases
    if sim is None or not sim.cases:
        return [para("Similar confirmed cases: not available with these weights."), Spacer(0, 5)]
    shown = sim.cases[:8]
    cell = WIDTH / 8
    thumbs = []
    for case in shown:
        age = "age ?" if case.age is None else f"{case.age:g} y"
        thumbs.append([picture(case.image(), (cell - 6) * min(1.0, c.scale + 0.2)),
                       marked(f"{escape(case.dx)} · {age}<br/>{escape(case.site)} · {case.similarity:.2f}",
                               "caption")])
    ranked = sorted(CLASSES, key=lambda k: -sim.vote[k])
    vote = ", ".join(f"{class_label(k)} {sim.vote[k]:.0%}" for k in ranked if sim.vote[k] > 0)
    text = (f"Similar confirmed cases (HAM10000 archive, {len(shown)} of k = {sim.k} shown; each: diagnosis · "
            f"age · site · similarity; a third opinion, not part of either model). Vote "
            f"({sim.weighting.replace('_', '-')}): {vote}. Archive images CC BY-NC 4.0, Tschandl et al. 2018."
            + (f" {sim.note}" if sim.note else ""))
    return [para("Similar confirmed cases", "head"),
            grid([thumbs], [cell] * len(shown), padding=3, style=[("LEFTPADDING", (0, 0), (0, 0), 0)]),
            Spacer(0, 2), para(text, "small"), Spacer(0, 5)]


def model_version(c: ReportContext) -> list[Flowable]:
    info = c.a.model_info or {}
    out = [para(f"Model version {info.get('version', 'unknown')}; member sha256 (first 12 characters):", "small")]
    out += [para(f"{k}: " + " ".join(h[:12] for h in v), "mono") for k, v in info.get("sha256", {}).items()]
    return [*out, Spacer(0, 5)]


def disclaimer(c: ReportContext) -> list[Flowable]:
    return [para(DISCLAIMER, "disclaimer")]


def contrast(c: ReportContext) -> list[Flowable]:
    """Why the fusion model's first class rather than its second, when the two are close."""
    if c.contrast is None:
        return []
    cam, first, second = c.contrast
    p = c.a.fusion.probabilities
    lesion = c.a.lesion if c.a.lesion is not None and c.a.lesion.found else None
    side = (WIDTH + GAP) / 3 * 0.6 * c.scale
    text = (f"<b>Why {class_label(first)} rather than {class_label(second)}?</b> The fusion model's top two are "
            f"within {CLOSE_CALL:.0%} ({pct(p[first])} vs {pct(p[second])}). Red regions raised "
            f"{first}'s score over {second}'s most ({c.a.fusion.cam_method}, the difference of the two logits).")
    return [grid([[picture(with_outline(gradcam_overlay(c.a.image, cam), lesion), side), marked(text)]],
                  [side + GAP, WIDTH - side - GAP], style=[("VALIGN", (0, 0), (-1, -1), "TOP")]), Spacer(0, 5)]


SECTIONS: tuple[Section, ...] = (header, metadata, images, contrast, probabilities, beside(shapley, melanoma, 0.38), reading,
                                 lesion_measures, similar_cases, model_version, disclaimer)


def _build(c: ReportContext) -> tuple[bytes, int]:
    """The PDF of every section, and its number of pages."""
    register_fonts()
    buf, pages = io.BytesIO(), []
    doc = BaseDocTemplate(buf, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                          bottomMargin=MARGIN, title=TITLE, author="", subject="",
                          creator="lesion_app.page.case_report", invariant=1, initialFontName="DejaVuSans")
    frame = Frame(MARGIN, MARGIN, WIDTH, HEIGHT, leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0)
    doc.addPageTemplates([PageTemplate(frames=[frame], onPage=lambda canvas, doc: pages.append(doc.page))])
    doc.build([KeepTogether(flowables) for section in SECTIONS if (flowables := section(c))])
    return buf.getvalue(), len(pages)


def close_call(a: Analysis) -> bool:
    """Whether the fusion model's top two classes are within CLOSE_CALL of each other."""
    first, second = sorted(a.fusion.probabilities.values(), reverse=True)[:2]
    return first - second <= CLOSE_CALL


def case_report_pdf(a: Analysis, clinical: ClinicalReport | None, specificity: str = "90", level: str = "0.9",
                    when: datetime | None = None, contrast: tuple | None = None) -> bytes:
    """The one-page A4 PDF of analysis a, at this melanoma operating point and prediction-set level;
    the same bytes for the same analysis and `when` (default: now, UTC). contrast: the fusion model's
    contrastive map (Predictor.contrast_map), shown when its top two are close (close_call)."""
    c = ReportContext(a, clinical, specificity, level, when or datetime.now(timezone.utc),
                      contrast=contrast if contrast is not None and close_call(a) else None)
    pdf, pages = _build(c)
    if pages == 1:
        return pdf
    # Too long: shrink the images (never the text), the largest size that fits found by bisection.
    fits, lo, hi = None, MIN_SCALE, 1.0
    for _ in range(6):
        mid = (lo + hi) / 2
        candidate, pages = _build(replace(c, scale=mid))
        if pages == 1:
            fits, lo = candidate, mid
        else:
            hi = mid
    return fits or _build(replace(c, scale=MIN_SCALE))[0]
