"""The report's render module draws from computed numbers only: report.md from report.json,
PNGs from the figure data, and the coverage and localisation tables."""
import json

import numpy as np
from PIL import Image

from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS
from train import REPO
from train.evaluation.metrics import softmax
from train.evaluation.report import figure_data
from train.evaluation.report_render import (FIGURES, coverage_markdown, draw_figures, localisation_table,
                                            report_markdown)


def test_the_shipped_report_md_is_drawn_from_the_shipped_report_json_alone():
    report = json.loads((REPO / "reports" / "report.json").read_text())
    assert report_markdown(report) == (REPO / "reports" / "report.md").read_text()


def test_figures_are_drawn_from_figure_data(tmp_path):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(len(CLASSES)), 20)
    z = {k: rng.normal(size=(len(y), len(CLASSES))) + 2 * np.eye(len(CLASSES))[y] for k in MODEL_KEYS}
    data = figure_data(y, {k: softmax(v, 1.5) for k, v in z.items()}, {k: softmax(v) for k, v in z.items()})
    assert data["fusion"]["confusion_matrix"].sum() == len(y)
    assert set(data["fusion"]["reliability"]) == {"before temperature", "after temperature"}
    assert draw_figures(tmp_path, data) == list(FIGURES)
    for name in FIGURES:
        assert Image.open(tmp_path / name).size == (1210, 528)  # figsize (11, 4.8) at 110 dpi


def test_coverage_markdown_has_a_row_per_level_model_and_evaluation():
    assert coverage_markdown(None) == ""
    cell = {"coverage": 0.9, "mean_size": 1.5, "per_class": {c: {"coverage": None if c == "df" else 0.9}
                                                             for c in CLASSES}}
    ps = {"method": "APS", "calibrated_on": "out-of-fold", "thresholds": {"0.9": {}},
          **{key: {"0.9": {k: cell for k in MODEL_KEYS}}
             for key in ("coverage_crossfit_out_of_fold", "coverage_heldout_ensemble")}}
    rows = [line for line in coverage_markdown(ps).splitlines() if line.startswith("| 90% |")]
    assert len(rows) == 2 * len(MODEL_KEYS)
    assert rows[0].startswith("| 90% | fusion | cross-fit OOF | 0.900 | 1.50 | 0.900 |") and "| n/a |" in rows[0]


def test_localisation_table_marks_missing_means_with_a_dash():
    result = {"Grad-CAM": {"fusion": {"n": 3, "empty_maps": 3, "energy_inside_mask_mean": None,
                                      "pointing_game_hit_rate": None},
                           "image_only": {"n": 3, "empty_maps": 0, "energy_inside_mask_mean": 0.61234,
                                          "pointing_game_hit_rate": 2 / 3}}}
    lines = localisation_table(result).splitlines()
    assert lines[2:] == ["| Grad-CAM | Fusion | 3 | 3 | - | - | - |", "| Grad-CAM | Image-only | 3 | 0 | 0.612 | 0.667 | - |"]
    result["Grad-CAM"]["image_only"]["attention_ratio_median"] = 4.567
    assert localisation_table(result).splitlines()[-1].endswith("| 0.612 | 0.667 | 4.57 |")
