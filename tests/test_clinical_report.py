"""The app's use of reports/report.json: operating points and similar-patient rows."""
import json

import numpy as np
import pytest

from lesion_app.evidence.clinical_report import ClinicalReport, age_band
from lesion_app.analysis.analysis import Analysis, ModelResult
from lesion_app.evidence.shapley import ShapleyResult
from lesion_app.classifier.vocab import CLASSES
from lesion_app.page.clinical import melanoma_markdown, model_report_markdown


@pytest.mark.parametrize("age,band", [(None, "missing"), (float("nan"), "missing"), (0, "<30"), (29.9, "<30"),
                                      (30, "30-44"), (59, "45-59"), (60, "60-74"), (75, "75+"), (120, "75+")])
def test_age_bands(age, band):
    assert age_band(age) == band


def analysis(p_mel_fusion, p_mel_image, meta):
    def result(p):
        probs = {c: (1 - p) / 6 for c in CLASSES}
        probs["mel"] = p
        return ModelResult(probs, np.zeros((2, 2)), "mel", True)
    return Analysis(np.zeros((2, 2, 3), np.uint8), result(p_mel_fusion), result(p_mel_image),
                    ShapleyResult("mel", 0.2, {"age": 0.0, "sex": 0.0, "site": 0.0}, 0.2), "mel", meta)


@pytest.fixture
def report(tmp_path):
    op = {"90": {"threshold": 0.3, "sensitivity": 0.6, "specificity": 0.9},
          "95": {"threshold": 0.5, "sensitivity": 0.4, "specificity": 0.95}}
    row = lambda g, n: {"group": g, "n": n, "fusion_balanced_accuracy": 0.7, "image_only_balanced_accuracy": 0.6,
                        "fusion_mel_recall": 0.5, "image_only_mel_recall": 0.4}
    data = {"weights": {"sha256": {"fusion": "a", "image_only": "b"}}, "figures": [],
            "models": {k: {"melanoma_operating_points": op} for k in ("fusion", "image_only")},
            "subgroups": {"age": {"rows": [row("60-74", 100), row("missing", 3)]},
                          "sex": {"rows": [row("male", 500)]}, "site": {"rows": [row("back", 200)]}}}
    (tmp_path / "report.json").write_text(json.dumps(data))
    (tmp_path / "report.md").write_text("# report\n")
    return ClinicalReport.load({"sha256": {"fusion": "a", "image_only": "b"}}, tmp_path)


def test_operating_point_flags_follow_the_validation_threshold(report):
    a = analysis(0.4, 0.2, {"age": 65.0, "sex": "male", "site": "back"})
    p_mel = {"fusion": a.fusion.probabilities["mel"], "image_only": a.image_only.probabilities["mel"]}
    f90, f95 = report.melanoma_flags(p_mel, "90"), report.melanoma_flags(p_mel, "95")
    assert f90["fusion"]["flagged"] and not f90["image_only"]["flagged"]
    assert not f95["fusion"]["flagged"]
    assert "above" in melanoma_markdown(report, a, "90")


def test_subgroup_rows_match_the_entered_patient(report):
    rows = report.subgroup_rows({"age": 65.0, "sex": "male", "site": "face"})
    assert rows["age"]["group"] == "60-74" and rows["sex"]["n"] == 500 and rows["site"] is None


def test_missing_report_and_stale_report(tmp_path, report):
    assert ClinicalReport.load({"sha256": {}}, tmp_path / "nowhere") is None
    stale = ClinicalReport.load({"sha256": {"fusion": "other"}}, report.folder)
    assert not stale.matches_weights and "other weights" in model_report_markdown(stale)


def test_the_report_tab_appends_the_study_when_there_is_one(report):
    assert model_report_markdown(report) == "# report\n"
    (report.folder / "study.md").write_text("## Imbalance and fusion study\n")
    assert model_report_markdown(report).endswith("## Imbalance and fusion study\n")
    assert model_report_markdown(report).startswith("# report\n")
