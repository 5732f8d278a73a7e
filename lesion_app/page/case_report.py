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

Fonts: matplotlib's bundled DejaVu Sans (and Sans Mono), embedded as TrueType subsets, so every
glyph renders, and the text can be extracted, on a machine with no fonts installed. Images are
drawn with numpy/PIL into in-memory JPEGs. Built in reportlab's invariant mode with the given
`when`, so the same analysis at the same time gives the same bytes. Nothing touches the disk:
it returns bytes, and writing them anywhere is the caller's business.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

import matplotlib
import numpy as np
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (BaseDocTemplate, Flowable, Frame, Image, KeepTogether, PageTemplate, Paragraph, Spacer,
                                Table, TableStyle)

from ..analysis.analysis import Analysis
from ..analysis.reading import reading as reading_of
from ..classifier.vocab import CLASSES, UNKNOWN, class_label
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import gradcam_overlay
from ..evidence.lesion import LesionFindings
from ..evidence.lesion import with_outline as draw_outline
from ..evidence.shapley import ShapleyResult
from .clinical import melanoma_markdown

DISCLAIMER = ("Research demo, not a medical device. Not for diagnosis. Outputs come from models trained on one "
              "public dataset (HAM10000) and can be wrong; they must not guide care.")
TITLE = "Skin-lesion case report: image-only vs image + age, sex and site"
COLOURS = {"fusion": "#1f77b4", "image_only": "#ff7f0e"}
NAMES = {"fusion": "Fusion", "image_only": "Image-only"}
MARGIN = 36                       # pt, each side of the A4 page
WIDTH, HEIGHT = A4[0] - 2 * MARGIN, A4[1] - 2 * MARGIN   # the one frame, pt
GAP = 8                           # pt between the three images
MIN_SCALE = 0.4                   # the smallest image size tried (of full width) to fit the page
OUTLINE = (255, 0, 255)           # the lesion outline: magenta is in neither the jet map nor skin
REFERENCE_CLASSES = ("mel", "nv", "bkl")  # the archive's classes the lesion measures are set against
RED = colors.HexColor("#a00000")
CLOSE_CALL = 0.20                 # the contrastive map is shown when the top two are this close


def plain(markdown: str) -> str:
    """Markdown as plain text: no emphasis marks, list bullets as dashes."""
    text = re.sub(r"[*_`#]", "", markdown)
    return re.sub(r"^\s*-\s+", "- ", text, flags=re.M).replace("⚠️", "Warning:")


def metadata_lines(a: Analysis) -> list[str]:
    """['Age: 65 years', 'Sex: male', 'Body site: scalp'], 'not entered' where blank."""
    m = a.metadata
    age = "not entered" if m.get("age") is None else f"{m['age']:g} years"
    sex = "not entered" if m.get("sex") in (None, UNKNOWN) else m["sex"]
    site = "not entered" if m.get("site") in (None, UNKNOWN) else m["site"]
    return [f"Age: {age}", f"Sex: {sex}", f"Body site: {site}"]


def entered_metadata(a: Analysis) -> str:
    return "   ".join(metadata_lines(a))


# --- fonts and styles ------------------------------------------------------------------------

@cache
def _fonts() -> None:
    """Registers matplotlib's DejaVu Sans (regular, bold, oblique) and Sans Mono with reportlab."""
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name, file in (("DejaVuSans", "DejaVuSans.ttf"), ("DejaVuSans-Bold", "DejaVuSans-Bold.ttf"),
                       ("DejaVuSans-Oblique", "DejaVuSans-Oblique.ttf"),
                       ("DejaVuSans-BoldOblique", "DejaVuSans-BoldOblique.ttf"),
                       ("DejaVuSansMono", "DejaVuSansMono.ttf")):
        pdfmetrics.registerFont(TTFont(name, str(ttf / file)))
    pdfmetrics.registerFontFamily("DejaVuSans", normal="DejaVuSans", bold="DejaVuSans-Bold",
                                  italic="DejaVuSans-Oblique", boldItalic="DejaVuSans-BoldOblique")


@cache
def _styles() -> dict[str, ParagraphStyle]:
    _fonts()
    body = ParagraphStyle("body", fontName="DejaVuSans", fontSize=7.5, leading=9.2)
    return {
        "body": body,
        "title": ParagraphStyle("title", body, fontName="DejaVuSans-Bold", fontSize=13, leading=16),
        "head": ParagraphStyle("head", body, fontName="DejaVuSans-Bold", fontSize=8.5, leading=10.5,
                               spaceAfter=1.5),
        "small": ParagraphStyle("small", body, fontSize=7, leading=8.4),
        "caption": ParagraphStyle("caption", body, fontSize=7, leading=8.4, alignment=1),
        "cell": ParagraphStyle("cell", body, fontSize=7.3, leading=8.6),
        "number": ParagraphStyle("number", body, fontSize=7.3, leading=8.6, alignment=2),
        "bullet": ParagraphStyle("bullet", body, leftIndent=9, bulletIndent=1, bulletFontName="DejaVuSans"),
        "warning": ParagraphStyle("warning", body, textColor=RED),
        "red": ParagraphStyle("red", body, textColor=RED),
        "disclaimer": ParagraphStyle("disclaimer", body, fontName="DejaVuSans-Bold", fontSize=8, leading=9.8,
                                     textColor=RED),
        "mono": ParagraphStyle("mono", body, fontName="DejaVuSansMono", fontSize=7, leading=8.6),
    }


def _p(text: str, style: str = "body") -> Paragraph:
    """A paragraph of plain text (escaped) in one of _styles()."""
    return Paragraph(escape(text), _styles()[style])


def _marked(text: str, style: str = "body") -> Paragraph:
    """A paragraph of markup written here (already escaped where it holds data)."""
    return Paragraph(text, _styles()[style])


def _markdown(md: str, style: str = "body") -> list[Paragraph]:
    """The app's small Markdown (bold, list items, code) as paragraphs: bold kept, bullets indented."""
    out = []
    for line in md.replace("⚠️", "Warning:").splitlines():
        if not line.strip():
            continue
        bullet = re.match(r"^\s*-\s+", line)
        text = escape(line[bullet.end():] if bullet else line)
        text = re.sub(r"[*`#]", "", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text))
        out.append(Paragraph(text, _styles()["bullet" if bullet else style], bulletText="–" if bullet else None))
    return out


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


class Bar(Flowable):
    """A horizontal bar of `value` (0..1) of its width, on a light track."""

    def __init__(self, value: float, width: float, height: float, colour: str):
        super().__init__()
        self.value, self.width, self.height, self.colour = value, width, height, colour

    def draw(self):
        self.canv.setFillColor(colors.HexColor("#eeeeee"))
        self.canv.rect(0, 0, self.width, self.height, stroke=0, fill=1)
        self.canv.setFillColor(colors.HexColor(self.colour))
        self.canv.rect(0, 0, max(0.0, min(1.0, self.value)) * self.width, self.height, stroke=0, fill=1)


def with_outline(rgb: np.ndarray, lesion: LesionFindings | None) -> np.ndarray:
    """rgb with the lesion's outline drawn on it (unchanged without a lesion found)."""
    if lesion is None or not lesion.found or lesion.mask.shape != rgb.shape[:2]:
        return rgb
    return draw_outline(rgb, lesion.mask.astype(bool), colour=OUTLINE)


def _jpeg(rgb: np.ndarray | PILImage.Image) -> io.BytesIO:
    """An image as an in-memory JPEG (quality 90, no chroma subsampling, so the outline stays crisp):
    a photograph is a fifth of its PNG's size, and the PDF embeds a JPEG as it is."""
    im = rgb if isinstance(rgb, PILImage.Image) else PILImage.fromarray(np.asarray(rgb, dtype=np.uint8))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=90, subsampling=0)
    buf.seek(0)
    return buf


def _picture(rgb: np.ndarray | PILImage.Image, width: float) -> Image:
    """An image flowable `width` pt wide, its aspect kept."""
    w, h = rgb.size if isinstance(rgb, PILImage.Image) else (rgb.shape[1], rgb.shape[0])
    return Image(_jpeg(rgb), width=width, height=width * h / w)


def _grid(rows: list[list], widths: list[float], style: list = (), padding: float = 1.5) -> Table:
    """A borderless table, cells aligned at their tops."""
    return Table(rows, colWidths=widths, style=TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONTNAME", (0, 0), (-1, -1), "DejaVuSans"),
        ("LEFTPADDING", (0, 0), (-1, -1), padding),
        ("RIGHTPADDING", (0, 0), (-1, -1), padding), ("TOPPADDING", (0, 0), (-1, -1), 0.8),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 0.8), *style]), hAlign="LEFT")


def beside(left: Section, right: Section, left_share: float) -> Section:
    """A section of two sections side by side, the left taking left_share of the width."""
    def section(c: ReportContext) -> list[Flowable]:
        lw = WIDTH * left_share
        t = _grid([[left(c), right(c)]], [lw, WIDTH - lw], padding=0)
        t.setStyle(TableStyle([("RIGHTPADDING", (0, 0), (0, 0), 12)]))
        return [t, Spacer(0, 5)]
    return section


def _pct(v: float) -> str:
    return f"{v:.0%}"


def _signed(v: float) -> str:
    """A probability change in percentage points, one decimal; no '-0.0%'."""
    return "±0.0%" if abs(v) < 0.0005 else f"{v:+.1%}"


# --- the sections, top to bottom ---------------------------------------------------------------

def header(c: ReportContext) -> list[Flowable]:
    return [_p(TITLE, "title"), Spacer(0, 1), _p(f"{c.when:%Y-%m-%d %H:%M} UTC. {DISCLAIMER}", "red"), Spacer(0, 4)]


def metadata(c: ReportContext) -> list[Flowable]:
    """The metadata as entered; how many images of the lesion were combined, when more than one."""
    text = "<b>Metadata as entered:</b> " + "&nbsp;&nbsp;&nbsp; ".join(escape(x) for x in metadata_lines(c.a))
    if c.a.n_images > 1:
        text += (f"<br/><b>Images of this lesion: {c.a.n_images}</b>; the models combined them "
                 "(image 1 and its heatmaps shown).")
    return [_marked(text), Spacer(0, 4)]


def images(c: ReportContext) -> list[Flowable]:
    """Image 1 and both models' heatmaps, method and class named; the lesion outlined on each."""
    a = c.a
    lesion = a.lesion if a.lesion is not None and a.lesion.found and a.lesion.mask.shape == a.image.shape[:2] else None
    cell = (WIDTH + GAP) / 3
    side = (cell - GAP) * c.scale
    shown = " with the lesion outline" if lesion is not None else ""
    cells = [[_picture(with_outline(a.image, lesion), side), _p(f"Image (as the models saw it){shown}", "caption")]]
    for key, r in (("fusion", a.fusion), ("image_only", a.image_only)):
        note = " (empty map: plain image)" if r.cam_empty else ""
        cells.append([_picture(with_outline(gradcam_overlay(a.image, r.cam), lesion), side),
                      _p(f"{NAMES[key]}: {r.cam_method} for {class_label(r.cam_class)}"
                         f"{f' rather than {class_label(r.cam_versus)}' if r.cam_versus else ''}{note}", "caption")])
    widths = [cell - GAP / 2, cell, cell - GAP / 2]
    return [_grid([cells], widths, padding=GAP / 2, style=[
        ("ALIGN", (0, 0), (-1, -1), "CENTER"), ("LEFTPADDING", (0, 0), (0, 0), 0),
        ("RIGHTPADDING", (-1, 0), (-1, 0), 0)]), Spacer(0, 5)]


def probabilities(c: ReportContext) -> list[Flowable]:
    """Both models' probabilities for all 7 classes, bars, set members ticked; the sets and top classes."""
    a = c.a
    sets = a.prediction_sets.get(c.level, {})
    level = f"{float(c.level):.0%}"
    bar = 70
    head = [_marked("<b>Class</b>", "cell")]
    for key in ("fusion", "image_only"):
        head += [_marked(f"<b>{NAMES[key]}</b>", "cell"), "", _marked(f"<b>in {level} set</b>", "caption")]
    rows = [head]
    for cls in CLASSES:
        row = [_p(class_label(cls), "cell")]
        for key, r in (("fusion", a.fusion), ("image_only", a.image_only)):
            p = r.probabilities[cls]
            row += [_marked(f"<b>{_pct(p)}</b>" if cls == r.top else _pct(p), "number"),
                    Bar(p, bar, 6, COLOURS[key]), _p("✓" if cls in (sets.get(key) or ()) else "", "caption")]
        rows.append(row)
    t = _grid(rows, [199] + [30, bar + 6, 126 - bar] * 2, style=[
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("SPAN", (1, 0), (2, 0)), ("SPAN", (4, 0), (5, 0)),
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f2f2")])])
    lines = []
    for key in ("fusion", "image_only"):
        members = sets.get(key)
        lines.append(f"{NAMES[key]}: " + ("not available" if members is None else
                                          ", ".join(class_label(m) for m in members) or "empty"))
    return [_p("Calibrated probabilities: fusion (image + age, sex, site) and image-only", "head"), t, Spacer(0, 2),
            _p(f"{level} prediction sets (class-conditional conformal): " + "; ".join(lines) + ".", "small"),
            _p(f"Top class: fusion {class_label(a.fusion.top)}, image-only {class_label(a.image_only.top)}.",
               "small"), Spacer(0, 5)]


def shapley(c: ReportContext) -> list[Flowable]:
    """The exact Shapley values of age, sex and site (for the heatmap class, and for the fusion top
    class when that differs)."""
    a = c.a
    shown: list[ShapleyResult] = [a.shap]
    if a.top_explained is not None and a.top_explained.cls != a.shap.cls:
        shown.append(a.top_explained)
    rows = [[_marked("<b>Field</b>", "cell"), *(_marked(f"<b>P({s.cls})</b>", "number") for s in shown)]]
    for name in ("age", "sex", "site"):
        rows.append([_p(name, "cell"), *(_p(_signed(s.contributions[name]), "number") for s in shown)])
    rows.append([_p("base → value", "cell"), *(_p(f"{s.base:.1%} → {s.value:.1%}", "number") for s in shown)])
    t = _grid(rows, [52] + [64] * len(shown), style=[
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey), ("LINEABOVE", (0, -1), (-1, -1), 0.5, colors.grey)])
    return [_p("Shapley values of the metadata", "head"), t, Spacer(0, 2),
            _p("Each entered field's share of the change in the fusion model's probability, from nothing "
               "entered (base) to what was entered (value).", "small")]


def melanoma(c: ReportContext) -> list[Flowable]:
    return _markdown(melanoma_markdown(c.clinical, c.a, c.specificity))


def reading(c: ReportContext) -> list[Flowable]:
    a = c.a
    out = [_marked("<b>Reading:</b> " + escape(plain(reading_of(a))))]
    if a.warnings:
        out += [_marked("<b>Warning:</b> " + escape(plain(w)), "warning") for w in a.warnings]
    else:
        out.append(_p("Warnings: none."))
    # Each sentence names itself ("Likeness to the training images: ...", "Skin around the lesion: ...").
    if a.shift is not None:
        out.append(_marked(escape(plain(a.shift.sentence())), "body" if a.shift.typical else "warning"))
    if a.skin_tone is not None:
        out.append(_marked(escape(plain(a.skin_tone.sentence())), "body" if a.skin_tone.inside else "warning"))
    return [*out, Spacer(0, 5)]


# (label, its key in LesionFindings.reference, its value in LesionFindings, format); colours are
# set against the number of colours present.
MEASURES = (
    ("Area share of the image", "area_share", lambda f: f.area_share, _pct),
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
    head = _p("Lesion measures (from the outline; measurements, not a diagnosis; no scale, so no diameter)", "head")
    if not f.found:
        return [head, _p("No lesion outlined."), *(_p("Warning: " + w, "warning") for w in f.warnings), Spacer(0, 5)]
    refs = [k for k in REFERENCE_CLASSES if any(k in f.reference.get(m[1], {}) for m in MEASURES)]
    rows = [[_marked("<b>Measure</b>", "cell"), _marked("<b>This lesion</b>", "cell"),
             *(_marked(f"<b>{escape(class_label(k))}</b>", "cell") for k in refs)]]
    for label, key, value, fmt in MEASURES:
        v = value(f)
        ref = f.reference.get(key, {})
        cells = []
        for k in refs:
            q = ref.get(k)
            fmt_q = (lambda x: f"{x:g}") if key == "colour_count" else fmt
            cells.append(_p("" if q is None else f"{fmt_q(q[1])} [{fmt_q(q[0])}-{fmt_q(q[2])}]", "cell"))
        rows.append([_p(label, "cell"), _p("n/a" if v is None else fmt(v), "cell"), *cells])
    for key in ("fusion", "image_only"):
        inside, ratio = f.attention_inside.get(key), f.attention_ratio.get(key)
        text = "n/a" if inside is None else _pct(inside) + ("" if ratio is None else
                                                             f" (mean {ratio:.1f}× outside)")
        rows.append([_p(f"Heatmap mass inside the outline, {NAMES[key].lower()}", "cell"), _p(text, "cell"),
                     *([""] * len(refs))])
    ref_w = 72 if refs else 0
    t = _grid(rows, [172, WIDTH - 172 - ref_w * len(refs)] + [ref_w] * len(refs), style=[
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f2f2")])])
    note = (_p("Archive columns: median [q1-q3] of the same measure over the HAM10000 lesions of that class.",
               "small") if refs else Spacer(0, 0))
    return [head, t, note, *(_p("Warning: " + w, "warning") for w in f.warnings), Spacer(0, 5)]


def similar_cases(c: ReportContext) -> list[Flowable]:
    """Up to 8 similar archive lesions (diagnosis, age, site, similarity), their vote, the licence."""
    sim = c.a.similar_cases
    if sim is None or not sim.cases:
        return [_p("Similar confirmed cases: not available with these weights."), Spacer(0, 5)]
    shown = sim.cases[:8]
    cell = WIDTH / 8
    thumbs = []
    for case in shown:
        age = "age ?" if case.age is None else f"{case.age:g} y"
        thumbs.append([_picture(case.image(), (cell - 6) * min(1.0, c.scale + 0.2)),
                       _marked(f"{escape(case.dx)} · {age}<br/>{escape(case.site)} · {case.similarity:.2f}",
                               "caption")])
    ranked = sorted(CLASSES, key=lambda k: -sim.vote[k])
    vote = ", ".join(f"{class_label(k)} {sim.vote[k]:.0%}" for k in ranked if sim.vote[k] > 0)
    text = (f"Similar confirmed cases (HAM10000 archive, {len(shown)} of k = {sim.k} shown; each: diagnosis · "
            f"age · site · similarity; a third opinion, not part of either model). Vote "
            f"({sim.weighting.replace('_', '-')}): {vote}. Archive images CC BY-NC 4.0, Tschandl et al. 2018."
            + (f" {sim.note}" if sim.note else ""))
    return [_p("Similar confirmed cases", "head"),
            _grid([thumbs], [cell] * len(shown), padding=3, style=[("LEFTPADDING", (0, 0), (0, 0), 0)]),
            Spacer(0, 2), _p(text, "small"), Spacer(0, 5)]


def model_version(c: ReportContext) -> list[Flowable]:
    info = c.a.model_info or {}
    out = [_p(f"Model version {info.get('version', 'unknown')}; member sha256 (first 12 characters):", "small")]
    out += [_p(f"{k}: " + " ".join(h[:12] for h in v), "mono") for k, v in info.get("sha256", {}).items()]
    return [*out, Spacer(0, 5)]


def disclaimer(c: ReportContext) -> list[Flowable]:
    return [_p(DISCLAIMER, "disclaimer")]


def contrast(c: ReportContext) -> list[Flowable]:
    """Why the fusion model's first class rather than its second, when the two are close."""
    if c.contrast is None:
        return []
    cam, first, second = c.contrast
    p = c.a.fusion.probabilities
    lesion = c.a.lesion if c.a.lesion is not None and c.a.lesion.found else None
    side = (WIDTH + GAP) / 3 * 0.6 * c.scale
    text = (f"<b>Why {class_label(first)} rather than {class_label(second)}?</b> The fusion model's top two are "
            f"within {CLOSE_CALL:.0%} ({_pct(p[first])} vs {_pct(p[second])}). Red regions raised "
            f"{first}'s score over {second}'s most ({c.a.fusion.cam_method}, the difference of the two logits).")
    return [_grid([[_picture(with_outline(gradcam_overlay(c.a.image, cam), lesion), side), _marked(text)]],
                  [side + GAP, WIDTH - side - GAP], style=[("VALIGN", (0, 0), (-1, -1), "TOP")]), Spacer(0, 5)]


SECTIONS: tuple[Section, ...] = (header, metadata, images, contrast, probabilities, beside(shapley, melanoma, 0.38), reading,
                                 lesion_measures, similar_cases, model_version, disclaimer)


def _build(c: ReportContext) -> tuple[bytes, int]:
    """The PDF of every section, and its number of pages."""
    _fonts()
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
