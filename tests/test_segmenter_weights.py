"""The shipped lesion segmenter is checked at start like every member, and its outline reaches
/report's contract through the real Predictor."""
import shutil

import numpy as np
import pytest

from conftest import EXAMPLES
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.weights import WEIGHTS_DIR, WeightsError, sha256_file
from lesion_app.files.image_input import load_upload

pytestmark = pytest.mark.skipif(not Manifest.load(WEIGHTS_DIR).segmentation,
                                reason="these weights ship no lesion segmenter")


def test_a_damaged_or_missing_segmenter_refuses_to_start_naming_the_file(tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    path = weights / "segmenter.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="segmenter.safetensors is corrupted"):
        Predictor(weights)
    path.write_bytes(b"not a segmenter")
    m = Manifest.load(weights)
    m.with_segmentation({**m.segmentation, "sha256": sha256_file(path)}).save(weights)
    with pytest.raises(WeightsError, match="segmenter.safetensors is not a lesion segmenter"):
        Predictor(weights)
    path.unlink()
    with pytest.raises(WeightsError, match="segmenter.safetensors is missing"):
        Predictor(weights)


def test_every_example_is_outlined_measured_and_its_heatmaps_held_against_the_outline():
    p = Predictor()
    for f in sorted((EXAMPLES / "images").glob("*.jpg")):
        a = p.analyze(load_upload(f))
        lesion = a.to_report()["lesion"]
        assert lesion["found"], f.name
        assert 0.005 < lesion["area_share"] < 0.95 and 0 <= lesion["asymmetry"] <= 1
        assert lesion["border"]["irregularity"] >= 0.9 and 0 <= lesion["border"]["sharpness"] <= 1
        for kind in ("fusion", "image_only"):
            assert 0 <= lesion["attention_inside"][kind] <= 1
        assert a.lesion.mask.shape == a.image.shape[:2]
        assert np.isclose(a.lesion.mask.mean(), lesion["area_share"])
        # A metadata change keeps the outline and recomputes only the fusion side's attention.
        b = p.with_metadata(a, 70, "female", "face")
        assert (b.lesion.mask == a.lesion.mask).all()
        assert b.lesion.attention_inside["image_only"] == lesion["attention_inside"]["image_only"]
        assert len([w for w in b.warnings if "outline" in w]) == len(b.lesion.warnings)


def test_an_image_the_ood_check_flags_gets_its_outline_read_with_care():
    """A segmenter outlines something in any picture (this synthetic one included): on an image the
    OOD check flags, the measures come with the caveat (page, /report and case report all show the
    lesion's warnings), after a metadata change too; a dermoscopic example has none."""
    from PIL import Image
    from lesion_app.evidence.lesion import OUTLINE_CAVEAT
    from lesion_app.page.presentation import lesion_markdown
    p = Predictor()
    size = (256, 192)
    odd = Image.merge("RGB", (Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
                              Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 60)))
    a = p.analyze(odd, 55, "male", "back")
    assert any("does not look like" in w for w in a.warnings) and a.lesion.found
    assert a.lesion.warnings[0] == OUTLINE_CAVEAT and OUTLINE_CAVEAT in a.warnings
    assert "Read with care" in lesion_markdown(a) and a.to_report()["lesion"]["warnings"][0] == OUTLINE_CAVEAT
    assert p.with_metadata(a, 30, "female", "face").lesion.warnings[0] == OUTLINE_CAVEAT
    ok = p.analyze(load_upload(EXAMPLES / "images" / "ISIC_0024394.jpg"), 55, "male", "back")
    assert OUTLINE_CAVEAT not in ok.lesion.warnings and "Read with care" not in lesion_markdown(ok)


def test_a_metadata_change_keeps_the_outlines_measures_and_takes_only_the_heatmaps_share_again(monkeypatch):
    """The measures depend on the outline and the image only: the analysis takes them once, a
    metadata change reuses them (the live what-if stays cheap) and gives the same figures."""
    from lesion_app.evidence import lesion as lesion_module
    p = Predictor()
    taken = []
    for name, fn in list(lesion_module.MEASURES.items()):   # the real measures, counted
        monkeypatch.setitem(lesion_module.MEASURES, name, lambda m, rgb, fn=fn, name=name: taken.append(name) or fn(m, rgb))
    a = p.analyze(load_upload(EXAMPLES / "images" / "ISIC_0024394.jpg"), 55, "male", "back")
    assert sorted(taken) == sorted(lesion_module.MEASURES)
    b = p.with_metadata(a, 20, "female", "face", cam_class="bcc")   # another heatmap too
    assert sorted(taken) == sorted(lesion_module.MEASURES)           # none taken again
    first, again = a.to_report()["lesion"], b.to_report()["lesion"]
    for key in ("area_share", "asymmetry", "border", "colours"):
        assert again[key] == first[key]
    assert b.fusion.cam_class == "bcc" and again["attention_inside"]["fusion"] != first["attention_inside"]["fusion"]
