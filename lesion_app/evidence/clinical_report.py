"""The clinical evaluation report (written by `python -m train.evaluation.report`) as the app uses it:
the Markdown for the "Model report" tab, melanoma operating points and subgroup rows."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..classifier.result import Analysis
from ..paths import REPO

REPORTS_DIR = REPO / "reports"
AGE_BANDS = [(0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+")]
SPECIFICITIES = ("90", "95")
# The UI's operating-point choices -> the report's specificity keys.
OPERATING_POINTS = {f"{s}% specificity": s for s in SPECIFICITIES}


def age_band(age) -> str:
    """The report's age bands; 'missing' when no age was entered."""
    if age is None or pd.isna(age):
        return "missing"
    return next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)


@dataclass
class ClinicalReport:
    data: dict
    folder: Path
    matches_weights: bool

    @classmethod
    def load(cls, model_info: dict, folder: Path = REPORTS_DIR) -> "ClinicalReport | None":
        path = Path(folder) / "report.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(data, Path(folder), data.get("weights", {}).get("sha256") == model_info["sha256"])

    def markdown(self) -> str:
        """report.md, then the study's study.md if there is one, with figure links pointing
        at files the app serves."""
        text = (self.folder / "report.md").read_text()
        if (self.folder / "study.md").is_file():
            text += "\n\n" + (self.folder / "study.md").read_text()
        for f in self.data["figures"]:
            text = text.replace(f"]({f})", f"](/gradio_api/file={(self.folder / f).resolve()})")
        if not self.matches_weights:
            text = ("> ⚠️ This report was made for other weights than the ones loaded; rerun "
                    "`python -m train.evaluation.report`.\n\n" + text)
        return text

    def melanoma_flags(self, a: Analysis, specificity: str) -> dict[str, dict]:
        """Per model: P(mel), the out-of-fold threshold for this specificity, and whether it crosses."""
        out = {}
        for key, result in (("fusion", a.fusion), ("image_only", a.image_only)):
            op = self.data["models"][key]["melanoma_operating_points"][specificity]
            p = result.probabilities["mel"]
            out[key] = {"p_mel": p, "threshold": op["threshold"], "flagged": p >= op["threshold"],
                        "sensitivity": op["sensitivity"], "specificity": op["specificity"]}
        return out

    def subgroup_rows(self, metadata: dict) -> dict[str, dict | None]:
        """The out-of-fold rows for this patient's age band, sex and site."""
        wanted = {"age": age_band(metadata["age"]), "sex": metadata["sex"], "site": metadata["site"]}
        return {key: next((r for r in self.data["subgroups"][key]["rows"] if r["group"] == value), None)
                for key, value in wanted.items()}


def melanoma_markdown(report: ClinicalReport | None, a: Analysis, specificity: str) -> str:
    if report is None:
        return "No evaluation report found (run `python -m train.evaluation.report`), so no operating points."
    names = {"fusion": "Fusion", "image_only": "Image-only"}
    lines = [f"**Melanoma at the {specificity}% specificity operating point** (threshold set on out-of-fold predictions):"]
    for key, f in report.melanoma_flags(a, specificity).items():
        verdict = "**above**: flagged as melanoma" if f["flagged"] else "below: not flagged"
        lines.append(f"- {names[key]}: P(mel) = {f['p_mel']:.3f} vs threshold {f['threshold']:.3f}, {verdict} "
                     f"(out-of-fold over all images: sensitivity {f['sensitivity']:.0%}, "
                     f"specificity {f['specificity']:.0%})")
    return "\n".join(lines)


def subgroup_markdown(report: ClinicalReport | None, a: Analysis) -> str:
    """Four narrow columns (each cell 'fusion / image-only'), so the table reads at phone width."""
    if report is None:
        return ""
    def fmt(x):
        return "–" if x is None else f"{x:.2f}"
    lines = ["**How the models did on similar patients** (out-of-fold, all images; each cell: "
             "fusion / image-only):", "",
             "| group | images | balanced accuracy | melanoma recall |", "|---|---|---|---|"]
    entered = a.entered()
    for key, r in report.subgroup_rows(a.metadata).items():
        if r is None:
            lines.append(f"| {key}: no such cases | 0 | – | – |")
            continue
        group = f"{key} {r['group']}" if key in entered else f"{key} not entered"
        lines.append(f"| {group} | {r['n']} | {fmt(r['fusion_balanced_accuracy'])} / "
                     f"{fmt(r['image_only_balanced_accuracy'])} | {fmt(r['fusion_mel_recall'])} / "
                     f"{fmt(r['image_only_mel_recall'])} |")
    return "\n".join(lines)
