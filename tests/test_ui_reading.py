"""The reading (lesion_app.analysis.reading): credits only the metadata that was entered, and explains
the fusion top class whatever the heatmap class is."""
import numpy as np

from lesion_app.analysis.analysis import Analysis, ModelResult
from lesion_app.analysis.reading import reading
from lesion_app.classifier.vocab import CLASSES
from lesion_app.evidence.shapley import ShapleyResult

NOTHING = {"age": None, "sex": "unknown", "site": "unknown"}


def result(top, p=0.6):
    probs = {c: (1 - p) / (len(CLASSES) - 1) for c in CLASSES}
    probs[top] = p
    return ModelResult(probs, np.zeros((2, 2)), top, False)


def shap(cls, age=0.0, sex=0.0, site=0.0, base=0.3):
    return ShapleyResult(cls, base, {"age": age, "sex": sex, "site": site}, base + age + sex + site)


def analysis(fusion_top, image_top, no_metadata_top, metadata, s, top_shap=None):
    return Analysis(np.zeros((2, 2, 3), np.uint8), result(fusion_top), result(image_top), s,
                    no_metadata_top, metadata, top_shap=top_shap)


def test_nothing_entered_says_so_and_credits_no_metadata():
    for image_top in ("mel", "nv"):
        text = reading(analysis("mel", image_top, "mel", NOTHING, shap("mel")))
        assert text.startswith("No metadata entered: the fusion model answered from the image alone")
        assert "entered metadata" not in text and "pushed" not in text and "no single input" not in text
        assert ("agree" if image_top == "mel" else "disagree") in text


def test_only_the_entered_field_is_credited():
    meta = {**NOTHING, "age": 63.0}
    text = reading(analysis("mel", "nv", "nv", meta, shap("mel", age=0.2)))
    assert "entered age (63) moved the fusion model from Melanocytic nevus (nv) to Melanoma (mel)" in text
    assert "pushed by age +20.0%" in text
    assert "sex" not in text and "site" not in text


def test_unchanged_top_lists_each_entered_field_with_its_sign():
    meta = {"age": 70.0, "sex": "male", "site": "unknown"}
    text = reading(analysis("bcc", "bkl", "bcc", meta, shap("bcc", age=-0.031, sex=0.012)))
    assert "also says bcc" in text and "changed P(bcc) by age -3.1%, sex +1.2%" in text
    assert "site" not in text


def test_a_heatmap_class_other_than_the_top_does_not_change_the_reading():
    meta = {**NOTHING, "site": "back"}
    top = shap("bcc", site=0.15)
    default = reading(analysis("bcc", "akiec", "akiec", meta, top))
    for_akiec = reading(analysis("bcc", "akiec", "akiec", meta, shap("akiec", site=-0.1), top_shap=top))
    assert for_akiec == default and "pushed by site +15.0%" in default


def test_without_the_top_class_shapley_values_the_reading_claims_no_pushes():
    meta = {**NOTHING, "site": "back"}
    text = reading(analysis("bcc", "akiec", "akiec", meta, shap("akiec", site=-0.1)))
    assert text.endswith("moved the fusion model from Actinic keratosis / intraepithelial carcinoma "
                         "(akiec) to Basal cell carcinoma (bcc).")
    assert "-10" not in text and "no single" not in text
