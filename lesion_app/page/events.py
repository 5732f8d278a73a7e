"""The page's events as plain functions: raw component values in, a `PageUpdate` out (what to show
and the session's new state), None when an event has nothing to do. All model work is the
Predictor's; all rendering is lesion_app.page.presentation's.

Blank means not entered everywhere: an empty age box reaches the Predictor as None, an empty
sex or site as 'unknown' (lesion_app.classifier.metadata.Metadata.parse). A mistake the user can fix raises
one of USER_ERRORS, whose message is meant to be shown as is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from ..analysis.pipeline import MAX_IMAGES
from ..analysis.predictor import Predictor
from ..classifier.metadata import Metadata, MetadataError
from ..analysis.analysis import Analysis
from ..evidence.archive import SimilarQuery
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import DEFAULT_CAM_METHOD
from ..files.image_input import InputError, load_upload, take_uploads
from .case_report import case_report_pdf, close_call
from .choices import (HEATMAP_CLASS, HEATMAP_METHOD, OPERATING_POINT, SAME_SEX, SAME_SITE, SET_LEVEL, SIMILAR_K,
                      ChoiceError)
from .presentation import (NEW_IMAGE, START, PageContent, analysis_content, heatmap_html, heatmaps_content,
                           melanoma_content, metadata_warning, prediction_sets_content, similar_content)


class NothingToReport(ValueError):
    """A case report asked for before any analysis; the message is shown to the user as is."""


class NothingToRedraw(ValueError):
    """A heatmap class or method chosen before any image; the message is shown to the user as is."""


USER_ERRORS = (ChoiceError, InputError, MetadataError, NothingToReport, NothingToRedraw)
KEPT_UPLOADS = 2 * MAX_IMAGES   # the most uploads one page's session keeps decoded (at most about 3 MB each)


def similar_query(k_choice=None, same_site=None, same_sex=None) -> SimilarQuery:
    """The similar cases asked for (blank: 8 cases, no filters); ChoiceError for anything else."""
    return SimilarQuery(SIMILAR_K.parse(k_choice), SAME_SITE.parse(same_site), SAME_SEX.parse(same_sex))


def upload_key(payload, extra=None):
    """Which upload a payload is: its server path (None when there is no image); with further
    images of the lesion, the tuple of all their paths."""
    key = payload.get("path") if isinstance(payload, dict) else payload
    extra = extra_payloads(extra)
    return key if not extra else (key, *(upload_key(e) for e in extra))


def further_image_name(payload, i: int) -> str:
    """How a message names the i-th further image: its file's name as uploaded, else its place."""
    name = payload.get("orig_name") if isinstance(payload, dict) else None
    return f"{name} (further image {i})" if name else f"Further image {i}"


def extra_payloads(extra) -> list:
    """The further images of the lesion as a list of payloads (blank: none)."""
    if extra is None or extra == "":
        return []
    return list(extra) if isinstance(extra, (list, tuple)) else [extra]


class HeatmapCache:
    """One image's last few heatmaps as inline images, by the map's bytes: a metadata change
    that leaves a map as it was does not encode it again."""
    SIZE = 4

    def __init__(self):
        self.entries: dict[tuple[str, str], str] = {}

    def html(self, rgb: np.ndarray, cam: np.ndarray, alt: str, outline: np.ndarray | None = None) -> str:
        """heatmap_html(rgb, cam, alt, outline), drawn once per map and outline (one image's outline
        never changes); the oldest entry goes first."""
        key = (hashlib.blake2b(cam.tobytes(), digest_size=16).hexdigest(), alt, outline is not None)
        if key not in self.entries:
            while len(self.entries) >= self.SIZE:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = heatmap_html(rgb, cam, alt, outline)
        return self.entries[key]


@dataclass
class SessionState:
    """One browser session's last analysed upload, decoded in memory, and its analysis.

    Valid only for the upload named by `key`; any other image means start again.
    """
    key: str | tuple | None = None   # upload_key of the upload (and its further images)
    image: Image.Image | list[Image.Image] | None = None   # a list: several images of one lesion
    analysis: Analysis | None = None
    heatmaps: HeatmapCache = field(default_factory=HeatmapCache, compare=False, repr=False)
    outline: bool = True   # the lesion's outline drawn on the heatmaps (the page's toggle; kept across images)
    # The page's current uploads already read, decoded, by server path: each file is deleted once read,
    # so a further image added later, or a slip put right (a broken further image removed), must not
    # need the file again.
    uploads: dict = field(default_factory=dict, compare=False, repr=False)

    def holds(self, payload, extra=None) -> bool:
        return self.image is not None and payload is not None and self.key == upload_key(payload, extra)

    def follow(self, analysis: Analysis) -> "SessionState":
        """The same upload with a newer analysis (its heatmaps kept)."""
        return SessionState(self.key, self.image, analysis, self.heatmaps, self.outline, self.uploads)

    def uploads_among(self, payload, extra=None) -> dict:
        """The uploads read before that are still among these inputs."""
        keys = {upload_key(p) for p in (payload, *extra_payloads(extra))}
        return {k: im for k, im in self.uploads.items() if k in keys}


@dataclass
class PageUpdate:
    """What one event changes: the page's content and the session's state (None: unchanged).
    `slip`: a mistake the user can put right, found once the state had learned something (uploads
    read, their files deleted): the content is then left as it was and only the state changes."""
    content: PageContent
    state: SessionState | None = None
    slip: Exception | None = None


class PageEvents:
    """The event logic. `keep`: digests of uploads whose files are not deleted once read (the
    bundled examples, which every example click uploads again)."""

    def __init__(self, predictor: Predictor, clinical: ClinicalReport | None, keep: frozenset[str] = frozenset()):
        self.predictor, self.clinical, self.keep = predictor, clinical, keep

    def decode(self, payload, extra=None) -> Image.Image | list[Image.Image]:
        """The upload as an in-memory image (with further images of the lesion, the list of
        all); every file is read, then deleted, before any analysis runs. InputError for the first
        one that cannot be read, or too many."""
        images, _, error = self.read(payload, extra)
        if error is not None:
            raise error
        return images

    def read(self, payload, extra=None, kept: dict | None = None) -> tuple:
        """(the upload as an in-memory image, with further images of the lesion the list of all; the
        uploads read, by server path, for SessionState.uploads; the first InputError, the images
        then None). Every file is read, then deleted, even when another is refused; an upload in
        `kept` (read before: its file is gone) is taken from there. At most KEPT_UPLOADS are
        decoded: more are refused anyway, and their files deleted all the same."""
        kept = kept or {}
        extra = extra_payloads(extra)
        payloads = [payload, *extra]
        keys = [upload_key(p) for p in payloads]
        fresh = [k is None or k not in kept for k in keys]
        taken = iter(take_uploads([p for p, f in zip(payloads, fresh) if f], self.keep, raise_errors=False))
        images, read, error = [], {}, None
        for i, (p, k, f) in enumerate(zip(payloads, keys, fresh)):
            data = next(taken) if f else None
            if k is not None and k in read:
                images.append(read[k])
                continue
            if len(read) >= KEPT_UPLOADS:
                continue
            try:
                if isinstance(data, InputError):
                    raise data
                image = load_upload(data) if f else kept[k]
            except InputError as e:
                error = error or (InputError(f"{further_image_name(p, i)}: {e}") if i else e)
                continue
            images.append(image)
            if k is not None:
                read[k] = image
        if len(extra) > MAX_IMAGES - 1:
            error = InputError(f"At most {MAX_IMAGES - 1} more images of the same lesion ({MAX_IMAGES} in all); "
                               f"{len(extra)} were given.")
        if error is not None:
            return None, read, error
        return (images if extra else images[0]), read, None

    def run(self, image: Image.Image, metadata: Metadata, cam: str | None,
            previous: Analysis | None = None, method: str = DEFAULT_CAM_METHOD,
            similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """Predictor.analyze_parsed on the metadata the event parsed; with the previous analysis of
        the same image, only the fusion side runs again (Predictor.with_metadata_parsed)."""
        if previous is not None:
            return self.predictor.with_metadata_parsed(previous, metadata, cam, method, similar)
        return self.predictor.analyze_parsed(image, metadata, cam, method, similar)

    def analyze(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                state: SessionState, k_choice=None, same_site=None, same_sex=None, extra=None) -> PageUpdate:
        """Analyses the current image (and further images of the lesion) with the current inputs
        (the Analyze button, /analyze)."""
        # Refuse unknown choices before any work.
        cam, spec = HEATMAP_CLASS.parse(cam_choice), OPERATING_POINT.parse(op_choice)
        level, method = SET_LEVEL.parse(level_choice), HEATMAP_METHOD.parse(method_choice)
        similar = similar_query(k_choice, same_site, same_sex)
        metadata = Metadata.parse(age, sex, site)   # and the metadata, before any upload is read (and deleted)
        # Re-analysing the same upload (its file already deleted) uses the in-memory copy and,
        # once analysed, its kept features: the backbones do not run again.
        same = state.holds(payload, extra)
        if same:
            image, read = state.image, state.uploads
        else:
            image, read, error = self.read(payload, extra, state.uploads_among(payload, extra))
            if error is not None:   # the page stays as it was; the session remembers what was read
                return PageUpdate(PageContent(), replace(state, uploads=read), slip=error)
        a = self.run(image, metadata, cam, state.analysis if same else None, method, similar)
        state = state.follow(a) if same else SessionState(upload_key(payload, extra), image, a, outline=state.outline,
                                                          uploads=read)
        return PageUpdate(analysis_content(a, self.clinical, spec, level, state.heatmaps.html,
                                           outline=state.outline), state)

    def metadata_changed(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                         state: SessionState, k_choice=None, same_site=None, same_sex=None,
                         extra=None) -> PageUpdate | None:
        """Live what-if: new age, sex or site for the analysed image updates the fusion side at once,
        from the kept features (fusion heads only). Before an analysis it does nothing; an
        unfinished or invalid entry says so in the warnings line and changes nothing else."""
        if state.analysis is None or not state.holds(payload, extra):
            return None
        try:
            metadata = Metadata.parse(age, sex, site)
        except MetadataError as e:
            return PageUpdate(PageContent(warnings=metadata_warning(e, state.analysis)))
        a = self.predictor.with_metadata_parsed(state.analysis, metadata, HEATMAP_CLASS.parse(cam_choice),
                                                HEATMAP_METHOD.parse(method_choice),
                                                similar_query(k_choice, same_site, same_sex))
        state = state.follow(a)
        return PageUpdate(analysis_content(a, self.clinical, OPERATING_POINT.parse(op_choice),
                                         SET_LEVEL.parse(level_choice), state.heatmaps.html, image_side=False,
                                         outline=state.outline), state)

    def heatmap_changed(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                        state: SessionState, k_choice=None, same_site=None, same_sex=None,
                        extra=None) -> PageUpdate | None:
        """A new heatmap class or method: the current image and inputs again (once analysed, from
        the kept features: heatmaps only). Before an upload NothingToRedraw says the choice waits for
        one (the choice itself stays as chosen)."""
        if payload is None:
            raise NothingToRedraw("No image yet: upload one and press Analyze; its heatmaps will use the class "
                                  "and method chosen here.")
        return self.analyze(payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice, state,
                            k_choice, same_site, same_sex, extra)

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

    def outline_changed(self, show, state: SessionState) -> PageUpdate | None:
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

    def report(self, image, age, sex, site, k_choice=None, same_site=None, same_sex=None, extra=None) -> dict:
        """JSON report: both models' probabilities, exact Shapley values of age/sex/site, warnings,
        and the similar confirmed cases (k: 4, 8 or 16, default 8; filters off by default).
        extra: up to 3 further images of the same lesion (the answer is then the lesion's).

        Blank means not entered: age None or '' -> no age; sex or site None, '' or whitespace ->
        'unknown'; values are stripped and lower-cased (' Back ' -> 'back').
        """
        similar = similar_query(k_choice, same_site, same_sex)
        return self.run(self.decode(image, extra), Metadata.parse(age, sex, site), None, similar=similar).to_report()

    def case_report(self, state: SessionState, op_choice=None, level_choice=None) -> bytes:
        """The one-page PDF of the session's current analysis, at the page's melanoma operating
        point and prediction-set level (the "Download case report" button)."""
        spec, level = OPERATING_POINT.parse(op_choice), SET_LEVEL.parse(level_choice)
        if state.analysis is None:
            raise NothingToReport("Analyze an image first: the case report describes the current analysis.")
        return case_report_pdf(state.analysis, self.clinical, spec, level, contrast=self.contrast(state.analysis))

    def case_report_for(self, image, age, sex, site, k_choice=None, same_site=None, same_sex=None,
                        extra=None) -> bytes:
        """/case_report: the PDF for the same inputs as /report (90% specificity, 90% sets)."""
        similar = similar_query(k_choice, same_site, same_sex)
        a = self.run(self.decode(image, extra), Metadata.parse(age, sex, site), None, similar=similar)
        return case_report_pdf(a, self.clinical, OPERATING_POINT.default, SET_LEVEL.default, contrast=self.contrast(a))

    def contrast(self, a: Analysis) -> tuple | None:
        """The fusion model's map for its first class rather than its second, when the case report
        shows it (the two within CLOSE_CALL)."""
        return self.predictor.contrast_map(a) if close_call(a) else None
