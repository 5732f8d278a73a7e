"""The clinical evaluation report as the page words it (lesion_app.evidence.clinical_report holds
its numbers): the "Model report" tab's Markdown, the melanoma flags at an operating point, and how
the models did on patients like this one."""
from __future__ import annotations

from ..analysis.analysis import Analysis
from ..evidence.clinical_report import ClinicalReport


def model_report_markdown(report: ClinicalReport) -> str:
    """report.md, then the study's study.md if there is one, with figure links pointing
    at files the app serves."""
    text = (report.folder / "report.md").read_text()
    if (report.folder / "study.md").is_file():
        text += "\n\n" + (report.folder / "study.md").read_text()
    for f in report.data["figures"]:
        text = text.replace(f"]({f})", f"](/gradio_api/file={(report.folder / f).resolve()})")
    if not report.matches_weights:
        text = ("> ⚠️ This report was made for other weights than the ones loaded; rerun "
                "`python -m train.evaluation.report`.\n\n" + text)
    return text


def melanoma_markdown(report: ClinicalReport | None, a: Analysis, specificity: str) -> str:
    if report is None:
        return "No evaluation report found (run `python -m train.evaluation.report`), so no operating points."
    names = {"fusion": "Fusion", "image_only": "Image-only"}
    lines = [f"**Melanoma at the {specificity}% specificity operating point** (threshold set on out-of-fold predictions):"]
    p_mel = {key: r.probabilities["mel"] for key, r in (("fusion", a.fusion), ("image_only", a.image_only))}
    for key, f in report.melanoma_flags(p_mel, specificity).items():
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
