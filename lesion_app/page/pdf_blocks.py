"""The case report's building blocks, for reportlab's platypus (lesion_app.page.case_report lays the
page out with them): the A4 page and its one frame, the fonts and paragraph styles, paragraphs of
plain text, of markup or of the app's small Markdown, in-memory JPEG pictures, bars, borderless
grids, and two sections side by side.

Fonts: matplotlib's bundled DejaVu Sans (and Sans Mono), embedded as TrueType subsets, so every
glyph renders, and the text can be extracted, on a machine with no fonts installed. Images are
drawn with numpy/PIL into in-memory JPEGs.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable
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
from reportlab.platypus import Flowable, Image, Paragraph, Spacer, Table, TableStyle

MARGIN = 36                       # pt, each side of the A4 page
WIDTH, HEIGHT = A4[0] - 2 * MARGIN, A4[1] - 2 * MARGIN   # the one frame, pt
RED = colors.HexColor("#a00000")


def plain(markdown: str) -> str:
    """Markdown as plain text: no emphasis marks, list bullets as dashes."""
    text = re.sub(r"[*_`#]", "", markdown)
    return re.sub(r"^\s*-\s+", "- ", text, flags=re.M).replace("⚠️", "Warning:")


@cache
def register_fonts() -> None:
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
def styles() -> dict[str, ParagraphStyle]:
    register_fonts()
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


def para(text: str, style: str = "body") -> Paragraph:
    """A paragraph of plain text (escaped) in one of styles()."""
    return Paragraph(escape(text), styles()[style])


def marked(text: str, style: str = "body") -> Paragraph:
    """A paragraph of markup written here (already escaped where it holds data)."""
    return Paragraph(text, styles()[style])


def markdown_paras(md: str, style: str = "body") -> list[Paragraph]:
    """The app's small Markdown (bold, list items, code) as paragraphs: bold kept, bullets indented."""
    out = []
    for line in md.replace("⚠️", "Warning:").splitlines():
        if not line.strip():
            continue
        bullet = re.match(r"^\s*-\s+", line)
        text = escape(line[bullet.end():] if bullet else line)
        text = re.sub(r"[*`#]", "", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text))
        out.append(Paragraph(text, styles()["bullet" if bullet else style], bulletText="–" if bullet else None))
    return out


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


def jpeg(rgb: np.ndarray | PILImage.Image) -> io.BytesIO:
    """An image as an in-memory JPEG (quality 90, no chroma subsampling, so the outline stays crisp):
    a photograph is a fifth of its PNG's size, and the PDF embeds a JPEG as it is."""
    im = rgb if isinstance(rgb, PILImage.Image) else PILImage.fromarray(np.asarray(rgb, dtype=np.uint8))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=90, subsampling=0)
    buf.seek(0)
    return buf


def picture(rgb: np.ndarray | PILImage.Image, width: float) -> Image:
    """An image flowable `width` pt wide, its aspect kept."""
    w, h = rgb.size if isinstance(rgb, PILImage.Image) else (rgb.shape[1], rgb.shape[0])
    return Image(jpeg(rgb), width=width, height=width * h / w)


def grid(rows: list[list], widths: list[float], style: list = (), padding: float = 1.5) -> Table:
    """A borderless table, cells aligned at their tops."""
    return Table(rows, colWidths=widths, style=TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONTNAME", (0, 0), (-1, -1), "DejaVuSans"),
        ("LEFTPADDING", (0, 0), (-1, -1), padding),
        ("RIGHTPADDING", (0, 0), (-1, -1), padding), ("TOPPADDING", (0, 0), (-1, -1), 0.8),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 0.8), *style]), hAlign="LEFT")


def pct(v: float) -> str:
    return f"{v:.0%}"


def beside(left: Callable, right: Callable, left_share: float) -> Callable:
    """A section of two sections (functions of the report's context -> flowables) side by side, the
    left taking left_share of the width."""
    def section(c) -> list[Flowable]:
        lw = WIDTH * left_share
        t = grid([[left(c), right(c)]], [lw, WIDTH - lw], padding=0)
        t.setStyle(TableStyle([("RIGHTPADDING", (0, 0), (0, 0), 12)]))
        return [t, Spacer(0, 5)]
    return section
