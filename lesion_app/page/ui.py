"""The Gradio app, as wiring only: `wire` connects the components `layout` placed
(lesion_app.page.layout) to the page's events as lesion_app.page.events defines them, each once;
`build_app` makes the whole app. The one rule between the two: a slip the user can put right is a
warning toast on the page (on_page) and an error through the API (on_api); a PageUpdate becomes
{component: value}. Model work is the Predictor's, rendering lesion_app.page.presentation's, choice
parsing lesion_app.page.choices'.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import gradio as gr

from ..analysis.predictor import Predictor
from ..classifier.reader_cases import ReaderCases
from ..evidence.clinical_report import ClinicalReport
from ..files.report_files import ReportFiles
from . import reader_tab
from .events import USER_ERRORS, PageEvents, PageUpdate
from .layout import View, example_digests, layout
from .reader import ReaderEvents
from .slips import warn

# Fetches the case report the hidden File was handed, as a download under its own name.
DOWNLOAD_JS = """(f) => {
  if (f && f.url) {
    const a = document.createElement("a");
    a.href = f.url; a.download = f.orig_name || "case_report.pdf";
    document.body.appendChild(a); a.click(); a.remove();
  }
  return [];
}"""
# Every event that runs the models: one at a time in one queue, whoever launches the app
# (Predictor and its Grad-CAM hooks are not safe to run concurrently).
MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}
# What /analyze promises its callers (the page's Analyze button runs the same event with a warning
# for a slip, lesion_app.page.events.PageEvents.analyze).
ANALYZE_API = ("Analyses the image (and up to 3 further images of the same lesion) with the given inputs; returns "
               "every output of the page's analysis, the report JSON tenth. A mistake in the inputs is an error "
               "with a plain message.")


def shown(view: View, result):
    """An event's result as Gradio takes it: a PageUpdate as {component: value} (its state too,
    when it has one), None as gr.skip() (nothing to do), anything else as it is."""
    if result is None:
        return gr.skip()
    if not isinstance(result, PageUpdate):
        return result
    out = {getattr(view, name): value for name, value in result.content.shown().items()}
    if result.state is not None:
        out[view.state] = result.state
    return out


def for_user(fn, *args, **kwargs):
    """fn(*args) for an API endpoint: a mistake the caller can fix becomes a gr.Error with its plain
    message, no traceback, which the client raises (on the page, see on_page)."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        raise gr.Error(str(e), print_exception=False) from None


def on_page(view: View, event: Callable, nothing: Callable = gr.skip) -> Callable:
    """event as the page calls it (its signature, name and docstring kept: Gradio reads them), its
    result shown. A slip the user can put right is one warning toast, and nothing() is returned
    (every output skipped): gr.Error would mark each output with an "Error" badge whose overlay
    takes the clicks, and nothing on the page (an earlier analysis) is lost."""
    @functools.wraps(event)
    def call(*values, **named):
        try:
            result = event(*values, **named)
        except USER_ERRORS as e:
            warn(e)
            return nothing()
        if isinstance(result, PageUpdate) and result.slip is not None:
            warn(result.slip)   # the content is left as it was; the state keeps the uploads read
        return shown(view, result)
    return call


def on_api(view: View, event: Callable) -> Callable:
    """event as an API endpoint calls it (its signature, name and docstring kept: Gradio reads them),
    its result shown; a slip is a gr.Error the client raises (for_user), found before or after the
    uploads were read."""
    @functools.wraps(event)
    def call(*values, **named):
        result = for_user(event, *values, **named)
        if isinstance(result, PageUpdate) and result.slip is not None:
            raise gr.Error(str(result.slip), print_exception=False)
        return shown(view, result)
    return call


def wire(v: View, events: PageEvents) -> None:
    """Connects the page's components to its events. preprocess=False: the upload reaches our own
    checks as is (clear messages for broken files; Gradio never decodes or re-saves it) and every
    other value arrives raw, so blank and padded values are parsed by one rule."""
    private = {"api_visibility": "private", "preprocess": False}
    page = functools.partial(on_page, v)
    # /analyze: the page's analysis for API callers, whose slips are errors they can catch (no page to
    # warn); the Analyze button runs the same analysis with a warning for a slip.
    v.analyze_api.click(on_api(v, events.analyze), v.inputs, v.outputs, api_name="analyze",
                        api_description=ANALYZE_API, preprocess=False, **MODEL_QUEUE)
    v.button.click(page(events.analyze), v.inputs, v.outputs, **private, **MODEL_QUEUE)
    # One click on an example loads it and analyses it.
    # (An example is another lesion: further images of the previous one are cleared first.)
    v.examples.load_input_event.then(None, None, v.extra_images, js="() => null").then(
        page(events.analyze), v.inputs, v.outputs, **private, **MODEL_QUEUE)
    # The class dropdown's .select: its .input fires twice for one pick (seen in Chromium: two heatmap
    # redraws, or two 'No image yet' warnings).
    gr.on([v.cam_class.select, v.cam_method.input], page(events.heatmap_changed), v.inputs, v.outputs, **private,
          **MODEL_QUEUE)
    # Live what-if: a new age, sex or site re-runs only the fusion heads on the kept features.
    # always_last: keystrokes that arrive while one update runs collapse into one more with the final value.
    gr.on([v.age.input, v.sex.input, v.site.input], page(events.metadata_changed), v.inputs, v.outputs,
          trigger_mode="always_last", **private, **MODEL_QUEUE)
    # Same queue as the analyses, so a new upload is forgotten before the Analyze that follows it.
    v.image.input(page(events.image_changed), [v.image, v.state, v.extra_images], v.outputs, **private, **MODEL_QUEUE)
    gr.on([v.extra_images.upload, v.extra_images.clear, v.extra_images.delete], page(events.image_changed),
          [v.image, v.state, v.extra_images], v.outputs, **private, **MODEL_QUEUE)
    v.operating_point.input(page(events.operating_point), [v.operating_point, v.state], [v.melanoma], **private)
    v.set_level.input(page(events.level_changed), [v.set_level, v.state], [v.fusion_set, v.image_only_set], **private)
    v.outline.input(page(events.outline_changed), [v.outline, v.state], [v.fusion_cam, v.image_only_cam, v.state],
                    **private)
    # Other similar cases: the archive only (no model), from the kept query.
    gr.on([v.similar_k.input, v.same_site.input, v.same_sex.input], page(events.similar_changed),
          [*v.similar_inputs, v.state], [v.similar_vote, v.similar_cases, v.report_json, v.state], **private)
    # /report: the same inputs and the same analysis, returned as JSON only.
    v.report_button.click(on_api(v, events.report), [v.image, v.age, v.sex, v.site, *v.similar_inputs,
                                                     v.extra_images], v.report_out,
                          api_name="report", preprocess=False, **MODEL_QUEUE)
    # The case report: the PDF is written, handed to the hidden File, fetched by the browser as a
    # download (which removes it, lesion_app.files.report_files.ServeOnce). Before an analysis: a
    # warning, and None (the download that follows fetches nothing, not an old PDF).
    v.case_report.click(page(events.case_report, nothing=lambda: None), [v.state, v.operating_point, v.set_level],
                        v.case_report_file, api_name="case_report_download", **private).success(
        None, v.case_report_file, None, js=DOWNLOAD_JS)
    v.case_report_api.click(on_api(v, events.case_report_for), [v.image, v.age, v.sex, v.site, *v.similar_inputs,
                                                                v.extra_images],
                            v.case_report_api_out, api_name="case_report", preprocess=False, **MODEL_QUEUE)


def build_app(predictor: Predictor, clinical: ClinicalReport | None = None,
              files: ReportFiles | None = None, reader_cases: ReaderCases | None = None) -> gr.Blocks:
    """The whole app. Safe to launch as is: every event that runs the models has concurrency_limit=1.

    files: where case-report PDFs go (default: in Gradio's upload folder); launch with
    `app_kwargs=lesion_app.files.report_files.app_kwargs(files)` so that each is removed once served
    (the reader mode's answer CSVs go there too). reader_cases: the held-out cases of "Test yourself"
    (lesion_app.classifier.reader_cases.load_reader_cases); without them the tab says so.
    """
    with gr.Blocks(title="Skin-lesion fusion demo", delete_cache=(60, 300)) as demo:
        view = layout(clinical)
        events = PageEvents(predictor, clinical, example_digests(), files)
        wire(view, events)
        reader_tab.wire(view.reader, ReaderEvents(predictor, reader_cases, files=events.files), demo, MODEL_QUEUE,
                        DOWNLOAD_JS)
        demo.unload(events.session_ended)
    return demo
