"""The UI's event logic in-process (no server): what reaches the Predictor, session state,
and clear errors. The events get raw component values, as Gradio passes them, through the wiring's
own rule (lesion_app.page.ui): on the page a slip is a warning (outside a Gradio event, gr.Warning is a
Python UserWarning) and every output is skipped; the API endpoints raise it as a gr.Error."""
import re
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from conftest import EXAMPLES
from lesion_app.classifier.vocab import class_label
from lesion_app.evidence.gradcam import TOP_TWO
from lesion_app.page.choices import CONTRAST, HEATMAP_CLASS, OPERATING_POINT, PREDICTED
from lesion_app.page.events import PageEvents
from lesion_app.files.image_input import load_upload
from lesion_app.analysis.predictor import Predictor
from lesion_app.analysis.reading import reading
from lesion_app.page.layout import example_digests, layout
from lesion_app.page.presentation import NEW_IMAGE
from lesion_app.page.session import SessionState
from lesion_app.page.ui import for_user, on_api, on_page

OP = "90% specificity"
LEVEL = "90%"
METHOD = "Grad-CAM"


class Recording:
    """A Predictor that records the metadata and class of every analysis, full (analyze_parsed) or
    of the fusion side only (with_metadata_parsed, which reuses the image's kept features): the page
    parses the metadata once and hands them over parsed."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, []

    def analyze_parsed(self, image, metadata, *args):
        self.calls.append((*metadata, *args[:2]))   # age, sex, site, heatmap class, heatmap method
        return self.predictor.analyze_parsed(image, metadata, *args)

    def with_metadata_parsed(self, previous, metadata, *args):
        self.calls.append((*metadata, *args[:2]))
        return self.predictor.with_metadata_parsed(previous, metadata, *args)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


class Page:
    """The page's events as the wiring hands them to Gradio (lesion_app.page.ui.wire): each through
    on_page, /analyze through on_api; the case report's button returns None for a slip."""

    def __init__(self, events: PageEvents, view):
        self.events, self.view, self.predictor = events, view, events.predictor

    def __getattr__(self, name):
        return on_page(self.view, getattr(self.events, name))

    def analyze_api(self, *values, **named):
        return on_api(self.view, self.events.analyze)(*values, **named)

    def case_report(self, *values):
        return on_page(self.view, self.events.case_report, nothing=lambda: None)(*values)

    def cam_code(self, choice) -> str | None:
        """A heatmap-class choice as the API reads it (a slip is a gr.Error)."""
        return for_user(HEATMAP_CLASS.parse, choice)


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture
def app(predictor):
    with gr.Blocks():
        view = layout(None)
    return Page(PageEvents(Recording(predictor), None, example_digests()), view), view


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
    out = h.analyze(upload("ISIC_0024394.jpg"), age, "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState())
    assert h.predictor.calls == [(None, "unknown", "unknown", None, "Grad-CAM")]
    report = out[v.report_json]
    assert report["metadata"] == {"age": None, "sex": "unknown", "site": "unknown"}
    assert report["reading"].startswith("No metadata entered")


def test_padded_values_are_normalised_before_the_predictor(app, upload):
    h, v = app
    h.analyze(upload("ISIC_0024394.jpg"), " 63 ", " Male ", " back ", PREDICTED, OP, LEVEL, METHOD, SessionState())
    assert h.predictor.calls == [(63.0, "male", "back", None, "Grad-CAM")]


def test_heatmap_class_change_uses_the_current_inputs(app, upload):
    h, v = app
    payload = upload("ISIC_0024403.jpg")
    first = h.analyze(payload, "70", "male", "back", PREDICTED, OP, LEVEL, METHOD, SessionState())
    before = len(h.predictor.calls)
    # The age was cleared and the site changed after the analysis.
    out = h.heatmap_changed(payload, "", "male", "face", "Melanoma (mel)", OP, LEVEL, METHOD, first[v.state])
    later = h.predictor.calls[before:]
    assert later[0] == (None, "male", "face", "mel", "Grad-CAM") and all(c[:3] == (None, "male", "face") for c in later)
    report = out[v.report_json]
    assert report["metadata"] == {"age": None, "sex": "male", "site": "face"}
    assert report["shap"]["class"] == "mel" and out[v.state].analysis.fusion.cam_class == "mel"


def test_a_new_image_invalidates_the_session(app, upload, predictor):
    h, v = app
    old, new = upload("ISIC_0024403.jpg"), upload("ISIC_0024370.jpg")
    state = h.analyze(old, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState())[v.state]
    assert h.image_changed(old, state) == gr.skip()   # the analysed image itself: nothing to forget
    cleared = h.image_changed(new, state)
    assert cleared[v.state] == SessionState() and cleared[v.reading] == NEW_IMAGE
    assert cleared[v.report_json] is None
    # Even with the old state (events may arrive in any order), the new upload is what is analysed.
    out = h.heatmap_changed(new, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, state)
    expected = predictor.analyze(load_upload(EXAMPLES / "images" / "ISIC_0024370.jpg"))
    assert out[v.report_json]["fusion"] == expected.to_report()["fusion"]
    assert out[v.state].key == new["path"]


def test_heatmap_class_before_any_upload_says_so_and_changes_nothing(app):
    h, _ = app
    with pytest.warns(UserWarning, match="No image yet: upload one and press Analyze") as said:
        out = h.heatmap_changed(None, "", "unknown", "unknown", "Melanoma (mel)", OP, LEVEL, METHOD, SessionState())
    assert out == gr.skip() and len(said) == 1
    assert h.predictor.calls == []


def test_the_reading_explains_the_fusion_top_class_whatever_the_heatmap_class(app, upload):
    h, v = app
    payload = upload("ISIC_0024403.jpg")
    default = h.analyze(payload, "", "unknown", "back", PREDICTED, OP, LEVEL, METHOD, SessionState())
    a = default[v.state].analysis
    other = next(c for c in ("akiec", "bcc", "bkl") if c != a.fusion.top)
    out = h.heatmap_changed(payload, "", "unknown", "back", other, OP, LEVEL, METHOD, default[v.state])
    b = out[v.state].analysis
    assert b.shap.cls == other and b.top_explained.cls == a.fusion.top
    assert reading(b) == reading(a) and "no single input" not in reading(b)


@pytest.mark.parametrize("cam,op,message", [
    ("bogus", OP, "Unknown heatmap class 'bogus'"),
    (PREDICTED, "bogus", "Unknown melanoma operating point 'bogus'"),
])
def test_unknown_choices_are_clear_errors_before_any_work(app, upload, cam, op, message):
    h, _ = app
    with pytest.raises(gr.Error) as e:   # /analyze
        h.analyze_api(upload("ISIC_0024403.jpg"), "", "unknown", "unknown", cam, op, LEVEL, METHOD, SessionState())
    assert e.value.message.startswith(message) and "expected" in e.value.message
    with pytest.warns(UserWarning, match=message):   # the page: a warning, every output as it was
        assert h.analyze(upload("ISIC_0024403.jpg"), "", "unknown", "unknown", cam, op, LEVEL, METHOD,
                         SessionState()) == gr.skip()
    assert h.predictor.calls == []


def test_heatmap_class_accepts_labels_codes_and_blank(app):
    h, _ = app
    assert h.cam_code("Melanoma (mel)") == h.cam_code(" mel ") == "mel"
    assert h.cam_code(PREDICTED) is h.cam_code("") is h.cam_code(None) is None
    assert h.cam_code(CONTRAST) == h.cam_code(" top two ") == TOP_TWO
    with pytest.raises(gr.Error) as e:
        h.cam_code("top three")
    assert e.value.message.startswith("Unknown heatmap class 'top three'") and CONTRAST in e.value.message


def test_top_two_heatmaps_say_why_the_first_class_rather_than_the_second(app, upload):
    h, v = app
    out = h.analyze(upload("ISIC_0024449.jpg"), "55", "male", "back", CONTRAST, OP, LEVEL, " LayerCAM (fine) ",
                    SessionState())
    assert h.predictor.calls == [(55.0, "male", "back", TOP_TWO, "LayerCAM (fine)")]
    a = out[v.state].analysis
    for side, note in ((a.fusion, v.fusion_note), (a.image_only, v.image_only_note)):
        first, second = sorted(side.probabilities, key=side.probabilities.get, reverse=True)[:2]
        assert (side.cam_class, side.cam_versus) == (first, second)
        assert out[note] == (f"LayerCAM (fine) for **{class_label(first)}** rather than **{class_label(second)}**: "
                             f"red regions raised {first}'s score over {second}'s most.")
    assert out[v.report_json]["shap"]["class"] == a.fusion.top


@pytest.mark.parametrize("choice,spec", [("90% specificity", "90"), ("95% specificity", "95"), ("95", "95"),
                                         (None, "90"), (" ", "90")])
def test_operating_point_choices(choice, spec):
    assert OPERATING_POINT.parse(choice) == spec


def test_a_metadata_change_reruns_only_the_fusion_side(app, upload, monkeypatch):
    h, v = app
    first = h.analyze(upload("ISIC_0024394.jpg"), "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState())
    state = first[v.state]
    # The backbones must not run again: the trunk is counted by its first layer.
    calls = []
    trunk = h.predictor.trunk.members[0].backbone.conv_stem
    hook = trunk.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = h.metadata_changed(state.key, "80", "male", "face", PREDICTED, OP, LEVEL, METHOD, state)
    finally:
        hook.remove()
    assert calls == []
    report = out[v.report_json]
    assert report["metadata"] == {"age": 80.0, "sex": "male", "site": "face"}
    assert v.image_only_probs not in out and v.image_only_cam not in out   # the image side stays as it was
    fresh = h.predictor.analyze(state.image, 80, "male", "face").to_report()
    assert report["fusion"] == fresh["fusion"] and report["shap"] == fresh["shap"]
    # An unfinished age says so and changes nothing else.
    bad = h.metadata_changed(state.key, "8a", "male", "face", PREDICTED, OP, LEVEL, METHOD, out[v.state])
    assert list(bad) == [v.warnings] and "Age" in bad[v.warnings]


def test_prediction_sets_follow_the_chosen_level(app, upload):
    h, v = app
    out = h.analyze(upload("ISIC_0024394.jpg"), "", "unknown", "unknown", PREDICTED, OP, "95%", METHOD, SessionState())
    a = out[v.state].analysis
    assert set(a.prediction_sets) == {"0.9", "0.95"}
    for kind in ("fusion", "image_only"):
        assert set(a.prediction_sets["0.9"][kind]) <= set(a.prediction_sets["0.95"][kind])
    assert out[v.fusion_set].startswith("**95% prediction set:**")
    assert h.level_changed("90%", out[v.state])[v.fusion_set].startswith("**90% prediction set:**")
    with pytest.warns(UserWarning, match="Unknown prediction set level"):
        assert h.level_changed("80%", out[v.state]) == gr.skip()


def test_a_heatmap_method_change_redraws_both_heatmaps_from_the_kept_features(app, upload):
    h, v = app
    payload = upload("ISIC_0024394.jpg")
    first = h.analyze(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState())
    calls = []
    hook = h.predictor.trunk.members[0].backbone.conv_stem.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = h.heatmap_changed(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, " layercam ", first[v.state])
    finally:
        hook.remove()
    assert calls == []
    a, before = out[v.state].analysis, first[v.state].analysis
    assert a.fusion.probabilities == before.fusion.probabilities and a.fusion.cam_class == before.fusion.cam_class
    for side, note in ((a.fusion, v.fusion_note), (a.image_only, v.image_only_note)):
        assert side.cam_method == "LayerCAM" and out[note].startswith("LayerCAM for")
    # The redrawn maps are LayerCAM's for this image (as a fresh analysis draws them), not the
    # Grad-CAM maps kept: the two methods can agree closely on a lesion, so compare with both.
    fresh = h.predictor.predictor.analyze(out[v.state].image, None, "unknown", "unknown", None, "LayerCAM")
    for side, kept, again in ((a.fusion, before.fusion, fresh.fusion), (a.image_only, before.image_only, fresh.image_only)):
        assert np.allclose(side.cam, again.cam, atol=1e-4)
        assert not np.allclose(side.cam, kept.cam, atol=1e-4)
    with pytest.warns(UserWarning, match="Unknown heatmap method 'ScoreCAM'"):
        assert h.heatmap_changed(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, "ScoreCAM",
                                 out[v.state]) == gr.skip()


def test_the_outline_toggle_redraws_both_heatmaps_without_a_model_run_and_is_kept(app, upload):
    h, v = app
    payload = upload("ISIC_0024394.jpg")
    first = h.analyze(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState())
    a = first[v.state].analysis
    if a.lesion is None:
        pytest.skip("these weights ship no lesion segmenter")
    assert "outline" in first[v.lesion_view] and "Asymmetry" in first[v.lesion_measures]
    calls = []
    hook = h.predictor.trunk.members[0].backbone.conv_stem.register_forward_hook(lambda *_: calls.append(1))
    try:
        off = h.outline_changed(False, first[v.state])
    finally:
        hook.remove()
    assert calls == [] and off[v.state].outline is False
    assert off[v.fusion_cam] != first[v.fusion_cam] and off[v.image_only_cam] != first[v.image_only_cam]
    # The next image keeps the choice: its heatmaps come without the outline.
    other = upload("ISIC_0024336.jpg")
    cleared = h.image_changed(other, off[v.state])
    assert cleared[v.state].outline is False
    again = h.analyze(other, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, cleared[v.state])
    on = h.outline_changed(True, again[v.state])
    assert on[v.fusion_cam] != again[v.fusion_cam]


def test_a_slip_on_the_page_is_one_warning_and_leaves_the_analysis_as_it_was(app, upload, tmp_path):
    """No image, an age that is not a number or out of range, an unreadable file, an unreadable further
    image, too many further images, a case report before any analysis: each is one warning, every
    output is skipped (so the page keeps the analysis it shows), the session's analysis is untouched,
    no model runs, and the right next action works. /analyze raises the same slips as errors."""
    import copy
    import itertools
    from inputs import bad_files
    h, v = app
    bad, n = bad_files(tmp_path / "bad"), itertools.count()

    def broken(name):   # a fresh upload of a bad file each time (a file is deleted once read)
        dst = tmp_path / f"up-{next(n)}-{name}.png"
        shutil.copy(bad[name][0], dst)
        return {"path": str(dst)}
    payload = upload("ISIC_0024394.jpg")
    with pytest.warns(UserWarning, match="Analyze an image first: the case report describes the current analysis"):
        assert h.case_report(SessionState(), OP, LEVEL, None) is None   # the download that follows fetches nothing
    first = h.analyze(payload, "40", "male", "back", PREDICTED, OP, LEVEL, METHOD, SessionState())
    state = first[v.state]
    kept = copy.copy(state.__dict__)
    slips = [
        (lambda: (None, "40", None), "Please upload a dermoscopic image first."),
        (lambda: (payload, "abc", None), "Age must be a number of years, got 'abc'."),
        (lambda: (payload, "300", None), "Age must be between 0 and 120 years, got 300."),
        (lambda: (broken("not_an_image"), "", None), "The file is not an image this app can read"),
        (lambda: (payload, "", [upload("ISIC_0024403.jpg"), broken("truncated_jpeg")]),
         "Further image 2: The image file is damaged or truncated"),
        (lambda: (payload, "", [upload("ISIC_0024403.jpg") for _ in range(4)]),
         "At most 3 more images of the same lesion (4 in all); 4 were given."),
    ]
    calls = len(h.predictor.calls)
    for inputs, message in slips:
        image, age, extra = inputs()
        with pytest.warns(UserWarning) as said:
            out = h.analyze(image, age, "male", "back", PREDICTED, OP, LEVEL, METHOD, state, extra=extra)
        # Every output skipped, or (uploads read) only the session's memory of them updated.
        assert out == gr.skip() or list(out) == [v.state], message
        assert [str(w.message) for w in said] == [message] or \
            (len(said) == 1 and str(said[0].message).startswith(message)), (message, [str(w.message) for w in said])
        assert state.__dict__ == kept and state.analysis is first[v.state].analysis
        if out != gr.skip():
            assert (out[v.state].key, out[v.state].image, out[v.state].analysis) == (state.key, state.image,
                                                                                     state.analysis)
        image, age, extra = inputs()
        with pytest.raises(gr.Error, match=re.escape(message)):   # /analyze: an error its caller reads
            h.analyze_api(image, age, "male", "back", PREDICTED, OP, LEVEL, METHOD, state, extra=extra)
    assert len(h.predictor.calls) == calls   # no slip ran a model
    # The right next action: a valid age re-runs the fusion side of the analysed image.
    again = h.analyze(payload, "41", "male", "back", PREDICTED, OP, LEVEL, METHOD, state)
    assert again[v.report_json]["metadata"]["age"] == 41.0


def test_an_upload_read_once_is_not_asked_for_again(app, tmp_path):
    """A patient's image (not a bundled example: its file is deleted once read) stays usable: after a
    broken further image is refused and removed, and when a further image is added after an analysis,
    Analyze works without 'no longer available', and the analysis is of all the images given."""
    from PIL import Image
    from inputs import bad_files
    h, v = app
    im = Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg").transpose(Image.Transpose.ROTATE_180)
    main, other = tmp_path / "patient.png", tmp_path / "patient_zoom.png"
    im.save(main)
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    broken = {"path": str(bad_files(tmp_path / "bad")["truncated_jpeg"][0])}
    payload = {"path": str(main)}
    with pytest.warns(UserWarning, match="damaged or truncated"):
        out = h.analyze(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, SessionState(), extra=[broken])
    assert not main.exists() and not Path(broken["path"]).exists()   # read, then deleted, slip or not
    cleared = h.image_changed(payload, out[v.state], [])              # the broken image removed
    alone = h.analyze(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, cleared[v.state], extra=[])
    assert alone[v.report_json]["fusion"]["top"] and "n_images" not in alone[v.report_json]
    # A further image added after that analysis: both are analysed, the first from memory.
    extra = [{"path": str(other)}]
    cleared = h.image_changed(payload, alone[v.state], extra)
    both = h.analyze(payload, "", "unknown", "unknown", PREDICTED, OP, LEVEL, METHOD, cleared[v.state], extra=extra)
    assert both[v.report_json]["n_images"] == 2 and not other.exists()
    assert set(both[v.state].uploads) == {str(main), str(other)}
    # Another image forgets them: nothing of the old ones stays in memory.
    new = tmp_path / "next.png"
    im.save(new)
    assert h.image_changed({"path": str(new)}, both[v.state], None)[v.state].uploads == {}
