"""'Test yourself': the reader mode's session and events, testable without a browser.

A reader goes through a deck of held-out cases (lesion_app.page.reader_deck): for each one they
choose a diagnosis (and optionally whether they would excise or biopsy), reveal the confirmed
diagnosis beside both models' answers, their heatmaps and the similar-cases vote, may revise their
answer once, and go on; lesion_app.page.reader_score keeps the score and builds the CSV.

Everything about a reader lives in their ReaderSession (the page keeps it in gr.State, in memory);
the CSV of their answers is built in memory and served once. Rendering is plain Markdown and inline
HTML. lesion_app.page.reader_tab wires the tab's components to these events as they are.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, fields, replace

import gradio as gr
from gradio.utils import get_upload_folder

from ..analysis.analysis import Analysis, ModelResult
from ..analysis.predictor import Predictor
from ..classifier.reader_cases import ReaderCase, ReaderCases
from ..classifier.vocab import CLASSES, class_label
from ..files.report_files import ReportFiles
from .choices import Choice
from .presentation import heatmap_html, labelled
from .reader_deck import DECK_SIZE, ReaderError, draw_deck, new_deck_code, parse_deck_code
from .reader_score import CaseAnswer, answers_csv, csv_name, score, score_markdown

DIAGNOSIS = Choice("diagnosis", {class_label(c): c for c in CLASSES}, None, aliases={c: c for c in CLASSES},
                   expected=f"one of: {', '.join(class_label(c) for c in CLASSES)}")
EXCISE = Choice("'would excise or biopsy' answer", {"yes": "yes", "no": "no"}, None, ignore_case=True)
ATTRIBUTION = "Cases: HAM10000's held-out slice (Tschandl et al., Sci Data 2018), CC BY-NC 4.0."


# ----------------------------------------------------------------------------- one reader's session

@dataclass(frozen=True)
class ReaderSession:
    """One reader's deck and answers (kept in the page's gr.State, in memory only)."""
    code: str | None = None
    deck: tuple[int, ...] = ()
    position: int = 0                       # the current case's place in the deck
    pending: CaseAnswer | None = None       # the current case once revealed, until the reader goes on
    answers: tuple[CaseAnswer, ...] = ()    # the cases done

    @property
    def started(self) -> bool:
        return bool(self.deck)

    @property
    def finished(self) -> bool:
        return self.started and self.position >= len(self.deck)


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()   # a ReaderView field the event leaves as the page shows it

ANSWERING, REVEALED, FINISHED, IDLE = "answering", "revealed", "finished", "idle"


@dataclass
class ReaderView:
    """What one event shows, by the tab's outputs; KEEP leaves one as is. `phase` says which
    controls are open: IDLE (no deck), ANSWERING, REVEALED or FINISHED."""
    phase: str
    code: object = KEEP
    progress: object = KEEP
    image: object = KEEP
    case: object = KEEP
    answer: object = KEEP            # the first answer's value (None clears it)
    excise: object = KEEP
    truth: object = KEEP
    fusion_probs: object = KEEP
    fusion_cam: object = KEEP
    image_only_probs: object = KEEP
    image_only_cam: object = KEEP
    similar: object = KEEP
    revision: object = KEEP          # the revised answer's value (starts as the first answer)
    excise_after: object = KEEP
    score: object = KEEP

    def shown(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not KEEP}


# HTML, in the case image's place (a gr.HTML, where Markdown's ** showed as is).
START_TEXT = ("Press <strong>Start deck</strong> for a new deck of 20 held-out cases, or type the code a presenter "
              "shows to follow the same deck.")


def case_image_html(case: ReaderCase, number: int, of: int) -> str:
    """The case's image, inline (no file on the server); its alt text names nothing but its place."""
    data = base64.b64encode(case.data).decode()
    return (f'<img class="reader-case-image" src="data:{case.media_type};base64,{data}" '
            f'alt="Case {number} of {of}">')


def case_markdown(case: ReaderCase) -> str:
    age = "not recorded" if case.age is None else f"{case.age:g} years"
    return f"**Age** {age} · **Sex** {case.sex} · **Site** {case.site}"


def _mark(right: bool) -> str:
    return "✓" if right else "✗"


def truth_markdown(a: CaseAnswer, case: ReaderCase) -> str:
    """The revealed case: the confirmed diagnosis, how it was confirmed, the image id, and each answer."""
    excise = f"; would excise or biopsy: **{a.excise_before}**" if a.excise_before else ""
    vote = f" · similar cases' vote: {class_label(a.similar_vote)} {_mark(a.similar_vote == a.truth)}" \
        if a.similar_vote else ""
    return (f"## Confirmed diagnosis: {class_label(a.truth)}\n"
            f"Confirmed by **{case.confirmed_by}** (HAM10000 dx_type `{a.dx_type}`) · image **{a.image_id}** · "
            f"lesion {a.lesion_id}\n\n"
            f"Your answer: **{class_label(a.before)}** {_mark(a.correct('before'))}{excise}\n\n"
            f"Fusion: {class_label(a.fusion)} {a.fusion_probabilities[a.fusion]:.0%} {_mark(a.correct('fusion'))} · "
            f"image-only: {class_label(a.image_only)} {a.image_only_probabilities[a.image_only]:.0%} "
            f"{_mark(a.correct('image_only'))}{vote}")


def cam_html(a: Analysis, r: ModelResult, name: str) -> str:
    """One model's heatmap for its top class, inline, with a caption saying what it shows."""
    what = (f"{r.cam_method} for {class_label(r.cam_class)}: empty (no region raises this class's score), plain "
            "image shown" if r.cam_empty else f"{r.cam_method} for {class_label(r.cam_class)}: red raised it most")
    return (f"{heatmap_html(a.image, r.cam, f'{name} {r.cam_method}, {class_label(r.cam_class)}')}"
            f"<p class='reader-cam-note'>{what}</p>")


def similar_vote_markdown(a: Analysis) -> str:
    """The similar confirmed cases' vote in one line (a third opinion, never mixed into the models')."""
    s = a.similar_cases
    if s is None:
        return "No similar-cases archive in these weights."
    n = len(s.cases)
    counts = {c: sum(case.dx == c for case in s.cases) for c in CLASSES}
    ranked = [c for c in sorted(CLASSES, key=lambda c: -s.vote[c]) if counts[c]]
    shares = ", ".join(f"{class_label(c)} {s.vote[c]:.0%} ({counts[c]} of {n})" for c in ranked)
    return (f"**Similar confirmed cases' vote** ({n} most similar lesions of the training archive, class-weighted; "
            f"a third opinion, separate from both models): {shares or 'no cases'}.")


class ReaderEvents:
    """The tab's events, each defined once: raw values and the session in, (ReaderView, session) out;
    the answers' CSV out as the path of a file served once (files: lesion_app.files.report_files; by
    default in Gradio's upload folder, as PageEvents'). Only `reveal` runs the models."""

    def __init__(self, predictor: Predictor | None, cases: ReaderCases | None, deck_size: int = DECK_SIZE,
                 files: ReportFiles | None = None):
        self.predictor, self.cases, self.deck_size = predictor, cases, deck_size
        self.files = files or ReportFiles(get_upload_folder())   # as PageEvents'

    def _need_cases(self) -> ReaderCases:
        if self.cases is None:
            raise ReaderError("These weights ship no reader cases (python -m train.release.reader_cases makes them).")
        return self.cases

    def progress(self, session: ReaderSession) -> str:
        n = len(session.deck)
        where = "finished" if session.finished else f"case **{session.position + 1}** of {n}"
        return f"Deck **{session.code}** · {where}"

    def _case_view(self, session: ReaderSession) -> ReaderView:
        """The current case, unanswered (or the end of the deck)."""
        s = score(session.answers)
        if session.finished:
            return ReaderView(FINISHED, progress=self.progress(session),
                              image="<p class='reader-done'>Deck finished. Download your answers below, or start "
                                    "another deck.</p>", case="", answer=None, excise=None, truth="",
                              score=score_markdown(s, len(session.deck)), revision=None, excise_after=None)
        case = self._need_cases()[session.deck[session.position]]
        return ReaderView(ANSWERING, code=session.code, progress=self.progress(session),
                          image=case_image_html(case, session.position + 1, len(session.deck)),
                          case=case_markdown(case), answer=None, excise=None, truth="", fusion_probs=None,
                          fusion_cam="", image_only_probs=None, image_only_cam="", similar="", revision=None,
                          excise_after=None, score=score_markdown(s, len(session.deck)))

    def start(self, code_text, session: ReaderSession | None = None) -> tuple[ReaderView, ReaderSession]:
        """A deck from the typed code (blank: a new code), at its first case; earlier answers are dropped."""
        cases = self._need_cases()
        code = parse_deck_code(code_text) or new_deck_code()
        deck = draw_deck(code, cases.dx, cases.lesion_id, cases.image_id, self.deck_size)
        new = ReaderSession(code=code, deck=tuple(deck))
        return self._case_view(new), new

    def new_deck(self, session: ReaderSession | None = None) -> tuple[ReaderView, ReaderSession]:
        return self.start(None, session)

    def reveal(self, answer, excise, session: ReaderSession) -> tuple[ReaderView, ReaderSession]:
        """Records the first answer, runs both models on the case, and shows the truth beside them."""
        if not session.started:
            raise ReaderError("Start a deck first.")
        if session.finished:
            raise ReaderError("This deck is finished: start another one.")
        if session.pending is not None:
            raise ReaderError("Already revealed: revise your answer if you wish, then press Next case.")
        before, excise = DIAGNOSIS.parse(answer), EXCISE.parse(excise)
        if before is None:
            raise ReaderError("Choose a diagnosis first; then reveal.")
        case = self._need_cases()[session.deck[session.position]]
        a = self.predictor.analyze(case.image(), case.age, case.sex, case.site)
        vote = a.similar_cases
        pending = CaseAnswer(
            number=session.position + 1, image_id=case.image_id, lesion_id=case.lesion_id, truth=case.dx,
            dx_type=case.dx_type, age=case.age, sex=case.sex, site=case.site, before=before, excise_before=excise,
            fusion=a.fusion.top, image_only=a.image_only.top, fusion_probabilities=dict(a.fusion.probabilities),
            image_only_probabilities=dict(a.image_only.probabilities),
            similar_vote=max(CLASSES, key=lambda c: vote.vote[c]) if vote is not None and vote.cases else None)
        session = replace(session, pending=pending)
        view = ReaderView(
            REVEALED, truth=truth_markdown(pending, case), answer=before, excise=excise,
            fusion_probs=labelled(a.fusion), image_only_probs=labelled(a.image_only),
            fusion_cam=cam_html(a, a.fusion, "Fusion"), image_only_cam=cam_html(a, a.image_only, "Image-only"),
            similar=similar_vote_markdown(a), revision=before, excise_after=excise)
        return view, session

    def next(self, revision, excise_after, session: ReaderSession) -> tuple[ReaderView, ReaderSession]:
        """Records the answer after seeing the models (blank: the first answer, kept) and shows the next case."""
        if not session.started:
            raise ReaderError("Start a deck first.")
        if session.finished:
            raise ReaderError("This deck is finished: start another one.")
        if session.pending is None:
            raise ReaderError("Reveal this case first.")
        after = DIAGNOSIS.parse(revision) or session.pending.before
        excise = EXCISE.parse(excise_after) or session.pending.excise_before
        done = replace(session.pending, after=after, excise_after=excise)
        session = replace(session, pending=None, position=session.position + 1, answers=(*session.answers, done))
        return self._case_view(session), session

    def answers_file(self, session: ReaderSession) -> tuple[bytes, str]:
        """(the CSV, a file name without extension) of the cases done."""
        if not session.answers:
            raise ReaderError("No answers yet: finish a case (choose, reveal, Next case) first.")
        return answers_csv(session.answers, session.code), csv_name(session.code)

    def answers_csv(self, session: ReaderSession, request: gr.Request = None) -> str:
        """The cases done as a CSV in the private folder (removed once served or when the page closes);
        its path."""
        data, name = self.answers_file(session)
        return str(self.files.write(data, request.session_hash if request else None, name=name, suffix=".csv"))
