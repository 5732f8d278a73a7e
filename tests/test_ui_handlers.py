"""The UI's event logic in-process (no server): what reaches the Predictor, session state,
and clear errors. The handlers get raw component values, as Gradio passes them."""
import shutil

import gradio as gr
import pytest

from conftest import EXAMPLES
from lesion_app.clinical_report import parse_operating_point
from lesion_app.image_input import load_upload
from lesion_app.predictor import Predictor
from lesion_app.ui import NEW_IMAGE, PREDICTED, Handlers, SessionState, layout

OP = "90% specificity"


class Recording:
    """A Predictor that records the arguments of every analyze call."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, []

    def analyze(self, *args):
        self.calls.append(args[1:])
        return self.predictor.analyze(*args)


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture
def app(predictor):
    with gr.Blocks():
        view = layout(None)
    return Handlers(Recording(predictor), None, view), view


@pytest.fixture
def upload(tmp_path):
    """An example image as a fresh upload payload (a copy, as Gradio's upload folder holds it)."""
    def make(name):
        dst = tmp_path / f"up-{name}"
        shutil.copy(EXAMPLES / "images" / name, dst)
        return {"path": str(dst)}
    return make


@pytest.mark.parametrize("age", ["", "   ", None])
def test_untouched_inputs_reach_the_predictor_as_not_entered(app, upload, age):
    h, v = app
    out = h.analyze(upload("ISIC_0024394.jpg"), age, "unknown", "unknown", PREDICTED, OP, SessionState())
    assert h.predictor.calls == [(None, "unknown", "unknown", None)]
    report = out[v.report_json]
    assert report["metadata"] == {"age": None, "sex": "unknown", "site": "unknown"}
    assert report["reading"].startswith("No metadata entered")


def test_padded_values_are_normalised_before_the_predictor(app, upload):
    h, v = app
    h.analyze(upload("ISIC_0024394.jpg"), " 63 ", " Male ", " back ", PREDICTED, OP, SessionState())
    assert h.predictor.calls == [(63.0, "male", "back", None)]


def test_heatmap_class_change_uses_the_current_inputs(app, upload):
    h, v = app
    payload = upload("ISIC_0024403.jpg")
    first = h.analyze(payload, "70", "male", "back", PREDICTED, OP, SessionState())
    before = len(h.predictor.calls)
    # The age was cleared and the site changed after the analysis.
    out = h.heatmap_class(payload, "", "male", "face", "Melanoma (mel)", OP, first[v.state])
    later = h.predictor.calls[before:]
    assert later[0] == (None, "male", "face", "mel") and all(c[:3] == (None, "male", "face") for c in later)
    report = out[v.report_json]
    assert report["metadata"] == {"age": None, "sex": "male", "site": "face"}
    assert report["shap"]["class"] == "mel" and out[v.state].analysis.fusion.cam_class == "mel"


def test_a_new_image_invalidates_the_session(app, upload, predictor):
    h, v = app
    old, new = upload("ISIC_0024403.jpg"), upload("ISIC_0024370.jpg")
    state = h.analyze(old, "", "unknown", "unknown", PREDICTED, OP, SessionState())[v.state]
    assert h.image_changed(old, state) == gr.skip()   # the analysed image itself: nothing to forget
    cleared = h.image_changed(new, state)
    assert cleared[v.state] == SessionState() and cleared[v.reading] == NEW_IMAGE
    assert cleared[v.report_json] is None
    # Even with the old state (events may arrive in any order), the new upload is what is analysed.
    out = h.heatmap_class(new, "", "unknown", "unknown", PREDICTED, OP, state)
    expected = predictor.analyze(load_upload(EXAMPLES / "images" / "ISIC_0024370.jpg"))
    assert out[v.report_json]["fusion"] == expected.to_report()["fusion"]
    assert out[v.state].key == new["path"]


def test_heatmap_class_before_any_upload_does_nothing(app):
    h, _ = app
    assert h.heatmap_class(None, "", "unknown", "unknown", "Melanoma (mel)", OP, SessionState()) == gr.skip()
    assert h.predictor.calls == []


def test_the_reading_explains_the_fusion_top_class_whatever_the_heatmap_class(app, upload):
    h, v = app
    payload = upload("ISIC_0024403.jpg")
    default = h.analyze(payload, "", "unknown", "back", PREDICTED, OP, SessionState())
    a = default[v.state].analysis
    other = next(c for c in ("akiec", "bcc", "bkl") if c != a.fusion.top)
    out = h.heatmap_class(payload, "", "unknown", "back", other, OP, default[v.state])
    b = out[v.state].analysis
    assert b.shap.cls == other and b.top_explained.cls == a.fusion.top
    assert b.reading() == a.reading() and "no single input" not in b.reading()


@pytest.mark.parametrize("cam,op,message", [
    ("bogus", OP, "Unknown heatmap class 'bogus'"),
    (PREDICTED, "bogus", "Unknown melanoma operating point 'bogus'"),
])
def test_unknown_choices_are_clear_errors_before_any_work(app, upload, cam, op, message):
    h, _ = app
    with pytest.raises(gr.Error) as e:
        h.analyze(upload("ISIC_0024403.jpg"), "", "unknown", "unknown", cam, op, SessionState())
    assert e.value.message.startswith(message) and "expected" in e.value.message
    assert h.predictor.calls == []


def test_heatmap_class_accepts_labels_codes_and_blank(app):
    h, _ = app
    assert h.cam_code("Melanoma (mel)") == h.cam_code(" mel ") == "mel"
    assert h.cam_code(PREDICTED) is h.cam_code("") is h.cam_code(None) is None


@pytest.mark.parametrize("choice,spec", [("90% specificity", "90"), ("95% specificity", "95"), ("95", "95"),
                                         (None, "90"), (" ", "90")])
def test_operating_point_choices(choice, spec):
    assert parse_operating_point(choice) == spec
