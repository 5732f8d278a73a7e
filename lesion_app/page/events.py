"""The page's events, each defined once: raw component values in, as Gradio passes them; out what the
page shows (a PageUpdate: its content and the session's new state; None when the event has nothing
to do), the /report JSON, or the path of a file served once. lesion_app.page.ui connects components
to these methods as they are, through one rule for slips (a warning on the page, an error through
the API); nothing forwards them. All model work is the Predictor's; all rendering is
lesion_app.page.presentation's.

Blank means not entered everywhere: an empty age box reaches the Predictor as None, an empty sex or
site as 'unknown' (lesion_app.classifier.metadata.Metadata.parse, the one parser, once per event). A
mistake the user can fix raises one of USER_ERRORS, whose message is meant to be shown as is.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from ..analysis.analysis import Analysis
from ..analysis.predictor import Predictor
from ..classifier.metadata import Metadata, MetadataError
from ..evidence.archive import SimilarQuery
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import DEFAULT_CAM_METHOD
from ..files.image_input import InputError
from ..files.report_files import ReportFiles
from .case_report import case_report_pdf, close_call
from .choices import (HEATMAP_CLASS, HEATMAP_METHOD, OPERATING_POINT, SAME_SEX, SAME_SITE, SET_LEVEL, SIMILAR_K,
                      ChoiceError)
from .presentation import (NEW_IMAGE, START, PageContent, analysis_content, heatmaps_content, melanoma_content,
                           metadata_warning, prediction_sets_content, similar_content)
from .session import SessionState
from .uploads import decode_uploads, read_uploads, upload_key


class NothingToReport(ValueError):
    """A case report asked for before any analysis; the message is shown to the user as is."""


class NothingToRedraw(ValueError):
    """A heatmap class or method chosen before any image; the message is shown to the user as is."""


USER_ERRORS = (ChoiceError, InputError, MetadataError, NothingToReport, NothingToRedraw)


def similar_query(k_choice=None, same_site=None, same_sex=None) -> SimilarQuery:
    """The similar cases asked for (blank: 8 cases, no filters); ChoiceError for anything else."""
    return SimilarQuery(SIMILAR_K.parse(k_choice), SAME_SITE.parse(same_site), SAME_SEX.parse(same_sex))


class Inputs(NamedTuple):
    """What an analysis reads from the page, raw, in the order of the page's analysis inputs
    (lesion_app.page.layout.View.inputs), which are /analyze's parameters (PageEvents.analyze)."""
    payload: object           # the image's upload payload
    age: object
    sex: object
    site: object
    cam_choice: object        # heatmap class
    op_choice: object         # melanoma operating point
    level_choice: object      # prediction-set level
    method_choice: object     # heatmap method
    state: SessionState
    k_choice: object = None   # how many similar cases
    same_site: object = None
    same_sex: object = None
    extra: object = None      # further images of the same lesion


@dataclass
class PageUpdate:
    """What one event changes: the page's content and the session's state (None: unchanged).
    `slip`: a mistake the user can put right, found once the state had learned something (uploads
    read, their files deleted): the content is then left as it was and only the state changes."""
    content: PageContent
    state: SessionState | None = None
    slip: Exception | None = None


class PageEvents:
    """The page's events. `keep`: digests of uploads whose files are not deleted once read (the
    bundled examples, which every example click uploads again); `files`: where case-report PDFs
    are written, each removed once served (default: in Gradio's upload folder)."""

    def __init__(self, predictor: Predictor, clinical: ClinicalReport | None, keep: frozenset[str] = frozenset(),
                 files: ReportFiles | None = None):
        self.predictor, self.clinical, self.keep = predictor, clinical, keep
        self.files = files or ReportFiles(get_upload_folder())

    def decode(self, payload, extra=None) -> Image.Image | list[Image.Image]:
        """The upload (and its further images) in memory, every file read and deleted first
        (lesion_app.page.uploads.decode_uploads)."""
        return decode_uploads(payload, extra, self.keep)

    def run(self, image, metadata: Metadata, cam: str | None, previous: Analysis | None = None,
            method: str = DEFAULT_CAM_METHOD, similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """Predictor.analyze_parsed; with the previous analysis of the same image, only the fusion
        side runs again (Predictor.with_metadata_parsed)."""
        if previous is not None:
            return self.predictor.with_metadata_parsed(previous, metadata, cam, method, similar)
        return self.predictor.analyze_parsed(image, metadata, cam, method, similar)

    # ------------------------------------------------------------------ the analysis and its choices

    def analyze(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                state: SessionState, k_choice=None, same_site=None, same_sex=None, extra=None) -> PageUpdate:
        """Analyses the current image (and further images of the lesion) with the current inputs
        (the Analyze button, an example click, /analyze)."""
        return self._analyze(Inputs(payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                                    state, k_choice, same_site, same_sex, extra))

    def _analyze(self, i: Inputs) -> PageUpdate:
        # Refuse unknown choices before any work.
        cam, spec = HEATMAP_CLASS.parse(i.cam_choice), OPERATING_POINT.parse(i.op_choice)
        level, method = SET_LEVEL.parse(i.level_choice), HEATMAP_METHOD.parse(i.method_choice)
        similar = similar_query(i.k_choice, i.same_site, i.same_sex)
        metadata = Metadata.parse(i.age, i.sex, i.site)   # and the metadata, before any upload is read (and deleted)
        # Re-analysing the same upload (its file already deleted) uses the in-memory copy and,
        # once analysed, its kept features: the backbones do not run again.
        state = i.state
        same = state.holds(i.payload, i.extra)
        if same:
            image, read = state.image, state.uploads
        else:
            image, read, error = read_uploads(i.payload, i.extra, self.keep, state.uploads_among(i.payload, i.extra))
            if error is not None:   # the page stays as it was; the session remembers what was read
                return PageUpdate(PageContent(), replace(state, uploads=read), slip=error)
        a = self.run(image, metadata, cam, state.analysis if same else None, method, similar)
        state = state.follow(a) if same else SessionState(upload_key(i.payload, i.extra), image, a,
                                                          outline=state.outline, uploads=read)
        return PageUpdate(analysis_content(a, self.clinical, spec, level, state.heatmaps.html,
                                           outline=state.outline), state)

    def metadata_changed(self, *inputs, **named) -> PageUpdate | None:
        """Live what-if (inputs: analyze's, Inputs): new age, sex or site for the analysed image updates
        the fusion side at once, from the kept features (fusion heads only). Before an analysis it does
        nothing; an unfinished or invalid entry says so in the warnings line and changes nothing else."""
        i = Inputs(*inputs, **named)
        state = i.state
        if state.analysis is None or not state.holds(i.payload, i.extra):
            return None
        try:
            metadata = Metadata.parse(i.age, i.sex, i.site)
        except MetadataError as e:
            return PageUpdate(PageContent(warnings=metadata_warning(e, state.analysis)))
        a = self.predictor.with_metadata_parsed(state.analysis, metadata, HEATMAP_CLASS.parse(i.cam_choice),
                                                HEATMAP_METHOD.parse(i.method_choice),
                                                similar_query(i.k_choice, i.same_site, i.same_sex))
        state = state.follow(a)
        return PageUpdate(analysis_content(a, self.clinical, OPERATING_POINT.parse(i.op_choice),
                                           SET_LEVEL.parse(i.level_choice), state.heatmaps.html, image_side=False,
                                           outline=state.outline), state)

    def heatmap_changed(self, *inputs, **named) -> PageUpdate:
        """A new heatmap class or method (inputs: analyze's, Inputs): the current image and inputs
        again (once analysed, from the kept features: heatmaps only). Before an upload
        NothingToRedraw says the choice waits for one (the choice itself stays as chosen)."""
        i = Inputs(*inputs, **named)
        if i.payload is None:
            raise NothingToRedraw("No image yet: upload one and press Analyze; its heatmaps will use the class "
                                  "and method chosen here.")
        return self._analyze(i)

    def similar_changed(self, k_choice, same_site, same_sex, state: SessionState) -> PageUpdate | None:
        """Another number of similar cases or other filters: the archive is searched again from the
        kept query (no model runs); nothing before an analysis."""
        query = similar_query(k_choice, same_site, same_sex)
        a = state.analysis
        if a is None or a.features is None:
            return None
        a = replace(a, similar_cases=self.predictor.similar_cases(a.features, query, a.metadata["sex"],
                                                                  a.metadata["site"]))
        return PageUpdate(similar_content(a), state.follow(a))

    def outline_changed(self, show, state: SessionState) -> PageUpdate:
        """The outline toggle: both heatmaps again, with or without the lesion's outline (no model
        runs); remembered for the next analyses of this session."""
        state = replace(state, outline=bool(show))
        if state.analysis is None:
            return PageUpdate(PageContent(), state)
        return PageUpdate(heatmaps_content(state.analysis, state.heatmaps.html, state.outline), state)

    def level_changed(self, level_choice, state: SessionState) -> PageUpdate | None:
        level = SET_LEVEL.parse(level_choice)
        if state.analysis is None:
            return None
        return PageUpdate(prediction_sets_content(state.analysis, level))

    def operating_point(self, op_choice, state: SessionState) -> PageUpdate | None:
        spec = OPERATING_POINT.parse(op_choice)
        if state.analysis is None:
            return None
        return PageUpdate(melanoma_content(self.clinical, state.analysis, spec))

    def image_changed(self, payload, state: SessionState, extra=None) -> PageUpdate | None:
        """A new or cleared image (or other further images): forget the old ones and blank their
        results (already analysed: no-op)."""
        if state.holds(payload, extra):
            return None
        return PageUpdate(PageContent.blank(NEW_IMAGE if payload is not None else START),
                          SessionState(outline=state.outline, uploads=state.uploads_among(payload, extra)))

    # ------------------------------------------------------------------ the API and the files

    def report(self, image, age, sex, site, k=None, same_site=None, same_sex=None, extra_images=None) -> dict:
        """JSON report: both models' probabilities, exact Shapley values of age/sex/site, warnings,
        and the similar confirmed cases (k: 4, 8 or 16, default 8; same_site / same_sex filters, off).
        extra_images: up to 3 further images of the same lesion; the answer is then the lesion's.

        Blank means not entered: age None or '' -> no age; sex or site None, '' or whitespace ->
        'unknown'; values are stripped and lower-cased (' Back ' -> 'back').
        """
        similar = similar_query(k, same_site, same_sex)
        return self.run(self.decode(image, extra_images), Metadata.parse(age, sex, site), None,
                        similar=similar).to_report()

    def case_report(self, state: SessionState, op_choice=None, level_choice=None, request: gr.Request = None) -> str:
        """The session's current analysis as a one-page PDF, at the page's melanoma operating point and
        prediction-set level (the "Download case report" button), written to the private folder
        (removed once served); its path. NothingToReport before an analysis."""
        spec, level = OPERATING_POINT.parse(op_choice), SET_LEVEL.parse(level_choice)
        if state.analysis is None:
            raise NothingToReport("Analyze an image first: the case report describes the current analysis.")
        pdf = case_report_pdf(state.analysis, self.clinical, spec, level, contrast=self.contrast(state.analysis))
        return str(self.files.write(pdf, request.session_hash if request else None))

    def case_report_for(self, image, age, sex, site, k=None, same_site=None, same_sex=None, extra_images=None,
                        request: gr.Request = None) -> str:
        """/case_report: the same inputs as /report; the one-page PDF (90% specificity, 90% sets)."""
        similar = similar_query(k, same_site, same_sex)
        a = self.run(self.decode(image, extra_images), Metadata.parse(age, sex, site), None, similar=similar)
        pdf = case_report_pdf(a, self.clinical, OPERATING_POINT.default, SET_LEVEL.default, contrast=self.contrast(a))
        return str(self.files.write(pdf, request.session_hash if request else None))

    def session_ended(self, request: gr.Request) -> None:
        """A closed or reloaded page: its PDFs that were never fetched go."""
        self.files.end_session(request.session_hash if request else None)

    def contrast(self, a: Analysis) -> tuple | None:
        """The fusion model's map for its first class rather than its second, when the case report
        shows it (the two within CLOSE_CALL)."""
        return self.predictor.contrast_map(a) if close_call(a) else None
