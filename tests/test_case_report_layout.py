"""The case report's layout, read back from the PDF with pdfplumber: for every kind of case (one
image or four, metadata blank, the longest class name, long warnings, a lesion outlined or not)
the report is one A4 page, every word lies inside a 12 pt margin, and no two words (nor a word
and an image) overlap."""
import dataclasses
import io
from datetime import datetime, timezone
from itertools import combinations

import numpy as np
import pandas as pd
import pdfplumber
import pytest
from PIL import Image

from conftest import EXAMPLES
from lesion_app.analysis.predictor import Predictor
from lesion_app.evidence.lesion import LesionFindings
from lesion_app.evidence.clinical_report import ClinicalReport
from lesion_app.page.case_report import case_report_pdf

MARGIN = 12.0   # pt: no word closer to the page's edge
EPS = 0.5       # pt: boxes touching by less than this do not overlap
WHEN = datetime(2026, 12, 3, 14, 5, tzinfo=timezone.utc)
LONG_WARNING = ("This image looks unlike the dermoscopic images the models were trained on (out-of-distribution "
                "score far above the 99th percentile of the training images), so every number on this page may "
                "be wrong: photograph the lesion again through a dermatoscope, centred and in focus.")
SECOND_WARNING = ("The fusion and image-only models disagree on whether this lesion is melanocytic; "
                  "read both heatmaps before trusting either answer.")
VARIANTS = ("one image", "four images", "metadata blank", "akiec", "heatmaps of another class", "warnings",
            "lesion outlined", "no lesion found", "everything at once")


def example(i: int) -> tuple[Image.Image, pd.Series]:
    case = pd.read_csv(EXAMPLES / "metadata.csv").iloc[i]
    return Image.open(EXAMPLES / "images" / f"{case.image_id}.jpg").convert("RGB"), case


def disc(shape: tuple[int, int], share: float = 0.3) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[:h, :w]
    return (y - h / 2) ** 2 + (x - w / 2) ** 2 <= share * h * w / np.pi


def outlined(a) -> LesionFindings:
    ref = {"area_share": {"mel": [0.18, 0.31, 0.47], "nv": [0.12, 0.22, 0.36], "bkl": [0.15, 0.27, 0.44]},
           "asymmetry": {"mel": [0.21, 0.33, 0.46], "nv": [0.1, 0.17, 0.27], "bkl": [0.14, 0.24, 0.37]},
           "border_irregularity": {"mel": [1.3, 1.6, 2.1], "nv": [1.1, 1.25, 1.45], "bkl": [1.2, 1.4, 1.8]},
           "border_sharpness": {"mel": [0.3, 0.42, 0.55], "nv": [0.4, 0.52, 0.63], "bkl": [0.35, 0.47, 0.6]},
           "colour_count": {"mel": [3, 4, 5], "nv": [1, 2, 3], "bkl": [2, 3, 3]}}
    return LesionFindings(mask=disc(a.image.shape[:2]), found=True, area_share=0.3, asymmetry=0.27,
                          border={"irregularity": 1.52, "sharpness": 0.44},
                          colours={"light brown": 0.46, "dark brown": 0.31, "blue-grey": 0.12, "white": 0.06},
                          attention_inside={"fusion": 0.71, "image_only": 0.58},
                          attention_ratio={"fusion": 5.7, "image_only": 3.2}, reference=ref,
                          warnings=["Most of the image-only heatmap's mass lies outside the outline."])


def not_found(a) -> LesionFindings:
    return LesionFindings(mask=np.zeros(a.image.shape[:2], bool), found=False,
                          warnings=[("No lesion outlined: the segmentation found none, or one covering nearly "
                                     "the whole image, so no measures are given.")])


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def clinical(predictor):
    return ClinicalReport.load(predictor.model_info)


@pytest.fixture(scope="module")
def analyses(predictor):
    """Each variant's analysis: three real ones, the rest made from them."""
    akiec_image, akiec_case = example(0)     # the longest class name
    bkl_image, bkl_case = example(2)
    one = predictor.analyze(bkl_image, float(bkl_case.age), bkl_case.sex, bkl_case.localization)
    akiec = predictor.analyze(akiec_image, float(akiec_case.age), akiec_case.sex, akiec_case.localization)
    if akiec.fusion.top != "akiec":          # the heatmaps then name it
        akiec = predictor.analyze(akiec_image, float(akiec_case.age), akiec_case.sex, akiec_case.localization,
                                  cam_class="akiec")
    t = Image.Transpose
    four = predictor.analyze([akiec_image, *(akiec_image.transpose(m) for m in
                                             (t.FLIP_LEFT_RIGHT, t.FLIP_TOP_BOTTOM, t.ROTATE_180))],
                             float(akiec_case.age), akiec_case.sex, akiec_case.localization, cam_class="akiec")
    assert four.n_images == 4
    warned = dataclasses.replace(akiec, warnings=[LONG_WARNING, SECOND_WARNING])
    return {
        "one image": one,
        "four images": four,
        "metadata blank": predictor.analyze(bkl_image, None, "unknown", "unknown"),
        "akiec": akiec,
        # Shapley values for two classes; the longest name in the heatmaps' captions
        "heatmaps of another class": predictor.analyze(bkl_image, float(bkl_case.age), bkl_case.sex,
                                                       bkl_case.localization, cam_class="akiec"),
        "warnings": warned,
        "lesion outlined": dataclasses.replace(akiec, lesion=outlined(akiec)),
        "no lesion found": dataclasses.replace(akiec, lesion=not_found(akiec)),
        "everything at once": dataclasses.replace(
            four, warnings=warned.warnings, lesion=outlined(four),
            fusion=dataclasses.replace(four.fusion, cam=np.zeros_like(four.fusion.cam), cam_empty=True)),
    }


def overlap(a: dict, b: dict) -> bool:
    return (min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > EPS and
            min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > EPS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_page_every_word_inside_the_margins_and_none_overlapping(variant, analyses, clinical):
    pdf = case_report_pdf(analyses[variant], clinical, "90", "0.9", WHEN)
    with pdfplumber.open(io.BytesIO(pdf)) as doc:
        assert len(doc.pages) == 1
        page = doc.pages[0]
        words = page.extract_words()
        assert len(words) > 200
        outside = [w["text"] for w in words if w["x0"] < MARGIN or w["top"] < MARGIN
                   or w["x1"] > page.width - MARGIN or w["bottom"] > page.height - MARGIN]
        assert not outside, f"words within {MARGIN} pt of the page's edge: {outside}"
        clashes = [(v["text"], w["text"]) for v, w in combinations(words, 2) if overlap(v, w)]
        assert not clashes, f"overlapping words: {clashes[:10]}"
        covered = [(w["text"], round(im["x0"]), round(im["top"])) for w in words for im in page.images
                   if overlap(w, im)]
        assert not covered, f"words over an image: {covered[:10]}"
