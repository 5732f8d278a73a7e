"""Several images of one lesion in one analysis, with the shipped weights."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import EXAMPLES
from lesion_app.analysis.pipeline import MAX_IMAGES
from lesion_app.analysis.predictor import Predictor
from lesion_app.analysis.reading import reading
from lesion_app.classifier.vocab import CLASSES


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def views():
    """One example and three other views of it (mirrored, rotated, zoomed): one lesion."""
    case = pd.read_csv(EXAMPLES / "metadata.csv").iloc[4]
    im = Image.open(EXAMPLES / "images" / f"{case.image_id}.jpg").convert("RGB")
    w, h = im.size
    zoom = im.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((w, h))
    return case, [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), im.rotate(90, expand=True), zoom]


def test_combined_probabilities_are_the_softmax_of_the_mean_per_image_logits(predictor, views):
    """p_i = softmax(z_i / T), so softmax(mean_i log p_i) = softmax(mean_i z_i / T): the mean of
    the per-image logits, which is what the combined answer must be."""
    case, images = views
    meta = (float(case.age), case.sex, case.localization)
    per_image = predictor.probabilities(images, [meta] * len(images))
    combined = predictor.lesion_probabilities([images], [meta])
    a = predictor.analyze(images, *meta)
    for k in ("fusion", "image_only"):
        logp = np.log(per_image[k]).mean(0)
        expected = np.exp(logp - logp.max()) / np.exp(logp - logp.max()).sum()
        assert np.allclose(combined[k][0], expected, atol=1e-5)
        shown = getattr(a, k).probabilities
        assert np.allclose([shown[c] for c in CLASSES], expected, atol=1e-5)
    # Not just the first image's answer.
    assert not np.allclose(per_image["fusion"][0], combined["fusion"][0], atol=1e-3)


def test_heatmaps_and_the_reading_are_per_image_explanations_use_the_combined_answer(predictor, views):
    case, images = views
    a = predictor.analyze(images[:3], float(case.age), case.sex, case.localization)
    assert a.n_images == 3 and len(a.extra_images) == 2
    assert reading(a).startswith("From 3 images of this lesion: ")
    for r in (a.fusion, a.image_only):
        assert len(r.extra_cams) == 2
        maps = [r.cam, *(c for c, _ in r.extra_cams)]
        assert all(m.shape == a.image.shape[:2] for m in maps)
        assert not np.allclose(maps[0], maps[1])   # each image its own map
    s = a.shap
    assert np.isclose(s.base + sum(s.contributions.values()), a.fusion.probabilities[s.cls], atol=1e-6)
    report = a.to_report()
    assert report["n_images"] == 3
    at_entered = report["what_if"]["sex"]["values"].index(case.sex)
    assert np.isclose(report["what_if"]["sex"]["probabilities"]["nv"][at_entered], a.fusion.probabilities["nv"],
                      atol=1e-6)
    # A metadata change keeps all three images and their combined features.
    b = predictor.with_metadata(a, None, "unknown", "unknown")
    assert b.n_images == 3 and len(b.fusion.extra_cams) == 2 and reading(b).startswith("From 3 images")


def test_the_ood_check_warns_per_image(predictor, views):
    case, images = views
    grey = Image.fromarray(np.full((150, 200, 3), 128, np.uint8))
    a = predictor.analyze([images[0], grey], float(case.age), case.sex, case.localization)
    assert [w[:14] for w in a.warnings] == ["Image 2 of 2: "]


def test_one_image_in_a_list_is_the_single_image_analysis_and_too_many_are_refused(predictor, views):
    case, images = views
    one, listed = predictor.analyze(images[0], 50, "male", "back"), predictor.analyze(images[:1], 50, "male", "back")
    assert one.to_report() == listed.to_report() and "n_images" not in one.to_report()
    with pytest.raises(ValueError, match=f"1 to {MAX_IMAGES} images"):
        predictor.analyze(images + images[:1], 50, "male", "back")


def test_the_out_of_fold_study_scores_a_lesion_by_its_first_image_and_by_its_mean_logits():
    from train.evaluation.multi_image import lesion_logits
    df = pd.DataFrame({"lesion_id": ["L2", "L1", "L2", "L1", "L2"], "image_id": ["c", "b", "a", "d", "e"],
                       "dx": ["mel", "nv", "mel", "nv", "mel"]})
    logits = np.arange(35, dtype=float).reshape(5, 7)
    one, mean, lesions = lesion_logits(df, logits)
    assert lesions["lesion_id"].tolist() == ["L1", "L2"] and lesions["image_id"].tolist() == ["b", "a"]
    assert lesions["n_images"].tolist() == [2, 3]
    assert np.array_equal(one, logits[[1, 2]])
    assert np.allclose(mean, [logits[[1, 3]].mean(0), logits[[0, 2, 4]].mean(0)])
