"""One analysis as a one-page A4 PDF case report, built in memory (matplotlib's PDF backend).

The page holds the image, both models' probabilities and prediction sets, both heatmaps
(method and class named), the Shapley bars, the melanoma operating point, the similar cases,
the warnings and the plain reading, the metadata as entered, the model version with its
member hashes, the date and time, and the disclaimer. Fonts: matplotlib's own DejaVu Sans,
embedded as TrueType, so every label renders (and its text can be extracted) on a machine
with no fonts installed. Returns bytes; writing them anywhere is the caller's business.
"""
from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ..classifier.result import Analysis
from ..classifier.vocab import CLASSES, UNKNOWN, class_label
from ..evidence.clinical_report import ClinicalReport, melanoma_markdown
from ..evidence.gradcam import gradcam_overlay

A4_INCHES = (8.27, 11.69)
DISCLAIMER = ("Research demo, not a medical device. Not for diagnosis. Outputs come from models trained on one "
              "public dataset (HAM10000) and can be wrong; they must not guide care.")
TITLE = "Skin-lesion case report: image-only vs image + age, sex and site"
COLOURS = {"fusion": "#1f77b4", "image_only": "#ff7f0e"}


def plain(markdown: str) -> str:
    """Markdown as plain text: no emphasis marks, list bullets as dashes."""
    text = re.sub(r"[*_`#]", "", markdown)
    return re.sub(r"^\s*-\s+", "- ", text, flags=re.M).replace("⚠️", "Warning:")


def entered_metadata(a: Analysis) -> str:
    m = a.metadata
    age = "not entered" if m.get("age") is None else f"{m['age']:g} years"
    sex = "not entered" if m.get("sex") in (None, UNKNOWN) else m["sex"]
    site = "not entered" if m.get("site") in (None, UNKNOWN) else m["site"]
    return f"Age: {age}   Sex: {sex}   Body site: {site}"


def _wrap(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.fill(line, width) if line else "" for line in text.split("\n"))


def _image(ax, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb)
    ax.set_title(title, fontsize=7.5)
    ax.axis("off")


def case_report_pdf(a: Analysis, clinical: ClinicalReport | None, specificity: str = "90", level: str = "0.9",
                    when: datetime | None = None) -> bytes:
    """The one-page A4 PDF of analysis a, at this melanoma operating point and prediction-set level."""
    when = when or datetime.now(timezone.utc)
    with matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans", "font.size": 7}):
        fig = Figure(figsize=A4_INCHES)
        grid = fig.add_gridspec(7, 8, left=0.06, right=0.96, top=0.93, bottom=0.03,
                                height_ratios=[1.5, 1.45, 1.3, 0.9, 0.75, 0.75, 1.2], hspace=0.7, wspace=0.35)
        fig.text(0.06, 0.975, TITLE, fontsize=11, weight="bold", va="top")
        fig.text(0.06, 0.958, _wrap(f"{when:%Y-%m-%d %H:%M} UTC. {DISCLAIMER}", 150), fontsize=6.5, va="top",
                 color="#a00")

        # Row 1: the image and both heatmaps, method and class named.
        _image(fig.add_subplot(grid[0, 0:2]), a.image, "Image (as the models saw it)")
        for col, (key, r) in zip((3, 6), (("fusion", a.fusion), ("image_only", a.image_only))):
            name = "Fusion" if key == "fusion" else "Image-only"
            note = " (empty map: plain image)" if r.cam_empty else ""
            _image(fig.add_subplot(grid[0, col - 1:col + 1]), gradcam_overlay(a.image, r.cam),
                   f"{name}: {r.cam_method} for {class_label(r.cam_class)}{note}")
        ax = fig.add_subplot(grid[0, 7])
        ax.axis("off")
        images = (f"\n\nImages of this lesion: {a.n_images}; the models combined them (image 1 and its "
                  "heatmaps shown)" if a.n_images > 1 else "")
        ax.text(0, 1, _wrap(entered_metadata(a).replace("   ", "\n") + images, 24), va="top", fontsize=7)

        # Row 2: both models' probabilities and prediction sets at the chosen level.
        ax = fig.add_subplot(grid[1, 2:6])
        y = np.arange(len(CLASSES))
        for k, (key, r) in enumerate((("fusion", a.fusion), ("image_only", a.image_only))):
            p = [r.probabilities[c] for c in CLASSES]
            ax.barh(y + (k - 0.5) * 0.38, p, height=0.38, color=COLOURS[key],
                    label="fusion (image + age, sex, site)" if key == "fusion" else "image-only")
            for yy, v in zip(y, p):
                ax.text(v + 0.01, yy + (k - 0.5) * 0.38, f"{v:.0%}", va="center", fontsize=5.5)
        ax.set_yticks(y, [class_label(c) for c in CLASSES], fontsize=6.5)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12)
        ax.set_title("Calibrated probabilities", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
        ax = fig.add_subplot(grid[1, 6:8])
        ax.axis("off")
        sets = a.prediction_sets.get(level, {})
        lines = [f"{float(level):.0%} prediction sets (class-conditional conformal):"]
        for key, name in (("fusion", "Fusion"), ("image_only", "Image-only")):
            members = sets.get(key)
            lines.append(f"{name}: " + ("not available" if members is None else
                                        ", ".join(class_label(c) for c in members) or "empty"))
        lines += ["", f"Top class: fusion {class_label(a.fusion.top)}, image-only {class_label(a.image_only.top)}."]
        ax.text(0, 1, _wrap("\n".join(lines), 34), va="top", fontsize=6.5)

        # Row 3: Shapley bars; the melanoma operating point beside them.
        ax = fig.add_subplot(grid[2, 0:4])
        s = a.shap
        names = ["age", "sex", "site"]
        vals = [s.contributions[n] for n in names]
        ax.barh(names, vals, color=["#2ca02c" if v >= 0 else "#d62728" for v in vals])
        ax.axvline(0, color="k", lw=0.6)
        for n, v in zip(names, vals):
            ax.text(v, n, f" {v:+.1%}", va="center", ha="left" if v >= 0 else "right", fontsize=6.5)
        ax.invert_yaxis()
        lim = max(0.02, max(abs(v) for v in vals) * 1.5)
        ax.set_xlim(-lim, lim)
        ax.set_title(f"Shapley values of the metadata for P({s.cls}): base {s.base:.1%} -> {s.value:.1%}", fontsize=7.5)
        ax = fig.add_subplot(grid[2, 4:8])
        ax.axis("off")
        ax.text(0, 1, _wrap(plain(melanoma_markdown(clinical, a, specificity)), 62), va="top", fontsize=6.5)

        # Row 4: the reading and the warnings.
        ax = fig.add_subplot(grid[3, :])
        ax.axis("off")
        text = "Reading: " + plain(a.reading())
        text += "\n" + ("\n".join("Warning: " + w for w in a.warnings) if a.warnings else "Warnings: none.")
        ax.text(0, 1, _wrap(text, 150), va="top", fontsize=6.8)

        # Rows 5-6: the similar cases, if the weights have an archive.
        sim = a.similar_cases
        if sim is not None and sim.cases:
            shown = sim.cases[:8]
            for i, case in enumerate(shown):
                ax = fig.add_subplot(grid[4 + i // 8, i % 8])
                ax.imshow(case.image())
                age = "age ?" if case.age is None else f"{case.age:g} y"
                ax.set_title(f"{case.dx} · {age}\n{case.site} · {case.similarity:.2f}", fontsize=5.3)
                ax.axis("off")
            ax = fig.add_subplot(grid[5, :])
            ax.axis("off")
            ranked = sorted(CLASSES, key=lambda c: -sim.vote[c])
            vote = ", ".join(f"{class_label(c)} {sim.vote[c]:.0%}" for c in ranked if sim.vote[c] > 0)
            ax.text(0, 0.9, _wrap(f"Similar confirmed cases (HAM10000 archive, {len(shown)} of k = {sim.k} shown; "
                                  f"a third opinion, not part of either model). Vote "
                                  f"({sim.weighting.replace('_', '-')}): {vote}. Archive images CC BY-NC 4.0, "
                                  "Tschandl et al. 2018." + (f" {sim.note}" if sim.note else ""), 150),
                    va="top", fontsize=6.3)
        else:
            ax = fig.add_subplot(grid[4:6, :])
            ax.axis("off")
            ax.text(0, 1, "Similar confirmed cases: not available with these weights.", va="top")

        # Row 7: the model version and member hashes; the disclaimer again.
        ax = fig.add_subplot(grid[6, :])
        ax.axis("off")
        info = a.model_info or {}
        hashes = "\n".join(f"{k}: " + " ".join(h[:12] for h in v) for k, v in info.get("sha256", {}).items())
        ax.text(0, 1, f"Model version {info.get('version', 'unknown')}; member sha256 (first 12 characters):\n"
                      f"{hashes}", va="top", fontsize=6.3, family="DejaVu Sans Mono")
        ax.text(0, 0.35, _wrap(DISCLAIMER, 130), va="top", fontsize=7, color="#a00", weight="bold")
        buf = io.BytesIO()
        with PdfPages(buf, metadata={"Title": TITLE, "Creator": "lesion_app.case_report"}) as pdf:
            pdf.savefig(fig)
        return buf.getvalue()
