"""The outline's measures and the attention check on shapes whose answers are known."""
import numpy as np
import pytest

from lesion_app.classifier.segmenter import largest_component
from lesion_app.evidence.lesion import (COLOURS, attention_inside, attention_ratio, lesion_findings, measure,
                                        no_lesion_reason, with_outline)

H, W = 192, 256
YY, XX = np.mgrid[:H, :W]
DISC = (YY - 96) ** 2 + (XX - 128) ** 2 < 50 ** 2
SKIN = (230, 190, 170)


def image(mask, colour=(60, 30, 10)):
    rgb = np.full((H, W, 3), SKIN, np.uint8)
    rgb[mask] = colour
    return rgb


def test_a_disc_is_symmetric_round_and_sharp_an_l_shape_is_not():
    disc = measure(DISC, image(DISC))
    assert disc["asymmetry"] < 0.02 and 0.95 < disc["border_irregularity"] < 1.05
    assert disc["border_sharpness"] > 0.95 and disc["area_share"] == pytest.approx(DISC.mean())
    ell = np.zeros((H, W), bool)
    ell[40:150, 60:100] = True
    ell[110:150, 60:200] = True
    shape = measure(ell, image(ell))
    assert shape["asymmetry"] > 0.3 and shape["border_irregularity"] > 1.3


def test_a_blurred_edge_is_less_sharp():
    from scipy import ndimage
    blurred = ndimage.gaussian_filter(image(DISC).astype(float), (6, 6, 0)).astype(np.uint8)
    assert measure(DISC, blurred)["border_sharpness"] < 0.5 * measure(DISC, image(DISC))["border_sharpness"]


def test_a_two_colour_lesion_counts_two_colours():
    rgb = image(DISC)
    rgb[DISC & (XX < 128)] = COLOURS["light brown"]
    rgb[DISC & (XX >= 128)] = COLOURS["blue-grey"]
    m = measure(DISC, rgb)
    assert set(m["colours"]) == {"light brown", "blue-grey"} and m["colour_count"] == 2
    assert sum(m["colours"].values()) == pytest.approx(1.0)
    one = image(DISC, COLOURS["dark brown"])
    assert measure(DISC, one)["colours"] == {"dark brown": 1.0}


def test_attention_inside_on_a_synthetic_map():
    cam = np.zeros((H, W))
    cam[DISC] = 1.0
    assert attention_inside(cam, DISC) == pytest.approx(1.0)
    cam[:10, :10] = 1.0                       # 100 pixels of equal weight outside
    assert attention_inside(cam, DISC) == pytest.approx(DISC.sum() / (DISC.sum() + 100))
    assert attention_ratio(cam, DISC) == pytest.approx(1.0 / (100 / (~DISC).sum()))
    assert attention_inside(np.zeros((H, W)), DISC) is None


def test_evidence_off_the_lesion_is_said_and_no_lesion_is_said():
    off = np.zeros((H, W))
    off[:40, :60] = 1.0
    found = lesion_findings(DISC, image(DISC), {"fusion": off, "image_only": DISC.astype(float)},
                            {"attention": {"threshold": 0.5}, "reference": {"asymmetry": {"mel": [0.1, 0.2, 0.3]}}})
    assert found.found and found.attention_inside["fusion"] == 0.0 and found.attention_inside["image_only"] == 1.0
    assert len(found.warnings) == 1 and "fusion model's heatmap" in found.warnings[0]
    report = found.to_report()
    assert set(report) >= {"found", "area_share", "asymmetry", "border", "colours", "attention_inside"}
    assert no_lesion_reason(np.zeros((H, W), bool)) and no_lesion_reason(DISC) is None
    none = lesion_findings(np.zeros((H, W), bool), image(DISC), {"fusion": off}, None)
    assert not none.found and none.to_report() == {"found": False, "warnings": none.warnings}
    whole = lesion_findings(np.ones((H, W), bool), image(DISC), {"fusion": off}, None)
    assert whole.found and whole.area_share == 1.0 and "covers 100% of the image" in whole.warnings[0]
    assert not any("covers" in w for w in found.warnings)


def test_the_outline_is_the_largest_region_holes_filled_and_drawn_on_its_edge():
    speck = DISC.copy()
    speck[5:8, 5:8] = True
    holed = speck & ~((YY - 96) ** 2 + (XX - 128) ** 2 < 10 ** 2)
    assert (largest_component(holed) == DISC).all()
    drawn = with_outline(image(DISC), DISC, colour=(0, 255, 255))
    changed = (drawn != image(DISC)).any(-1)
    assert changed.any() and (changed <= DISC).all() and not changed[96, 128]
