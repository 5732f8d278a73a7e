"""'Test yourself': the reader mode's logic, testable without a browser or Gradio.

A reader goes through a deck of held-out cases (lesion_app.classifier.reader_cases): for each one
they choose a diagnosis (and optionally whether they would excise or biopsy), reveal the confirmed
diagnosis beside both models' answers, their heatmaps and the similar-cases vote, may revise their
answer once, and go on. The deck is drawn from a short code, so the same code gives the same deck
(a room can follow one deck) and a new code a new one.

Everything about a reader lives in their ReaderSession (the page keeps it in gr.State, in memory);
the CSV of their answers is built in memory. Rendering is plain Markdown and inline HTML.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from ..analysis.predictor import Predictor
from ..classifier.reader_cases import ReaderCase, ReaderCases
from ..analysis.analysis import Analysis, ModelResult
from ..classifier.vocab import CLASSES, class_label
from .choices import Choice
from .presentation import heatmap_html, labelled

DECK_SIZE = 20
MELANOMA_SHARE = 0.25          # melanoma enriched to about a quarter of a deck (4-11% of real lesions)
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"   # no I, O, 0 or 1: a code read aloud is not misheard
CODE_LENGTH = 5
MELANOMA = "mel"
DIAGNOSIS = Choice("diagnosis", {class_label(c): c for c in CLASSES}, None, aliases={c: c for c in CLASSES},
                   expected=f"one of: {', '.join(class_label(c) for c in CLASSES)}")
EXCISE = Choice("'would excise or biopsy' answer", {"yes": "yes", "no": "no"}, None, ignore_case=True)
WHO = ("before", "after", "fusion", "image_only")   # the four answers a case is scored on
WHO_LABELS = {"before": "You, before the models", "after": "You, after the models", "fusion": "Fusion model",
              "image_only": "Image-only model"}
ATTRIBUTION = "Cases: HAM10000's held-out slice (Tschandl et al., Sci Data 2018), CC BY-NC 4.0."


class ReaderError(ValueError):
    """Something the reader can put right (no deck yet, no answer chosen); shown as is."""


# ----------------------------------------------------------------------------- the deck

def new_deck_code() -> str:
    """A fresh random deck code, e.g. 'K7M2Q'."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def parse_deck_code(text) -> str | None:
    """A typed code, normalised (capitals; spaces and dashes dropped); None when blank.
    ReaderError for anything but 3 to 12 letters and digits."""
    code = re.sub(r"[\s\-]", "", str(text or "")).upper()
    if not code:
        return None
    if not re.fullmatch(r"[A-Z0-9]{3,12}", code):
        raise ReaderError(f"A deck code is 3 to 12 letters and digits, such as {new_deck_code()}; "
                          f"not {str(text).strip()!r}.")
    return code


def deck_rng(code: str) -> np.random.Generator:
    digest = hashlib.sha256(f"reader-deck/1 {code}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def draw_deck(code: str, dx: Sequence[str], lesion_ids: Sequence[str], image_ids: Sequence[str],
              size: int = DECK_SIZE, melanoma_share: float = MELANOMA_SHARE) -> list[int]:
    """The deck of code: `size` row indices into the cases, in the order shown.

    One image per lesion; round(size * melanoma_share) melanomas (at least one), one lesion of
    every other class, the rest drawn from all other lesions alike (so mostly nevi, as in the
    clinic); then shuffled. Depends only on the code, the size and the cases themselves (not on
    their row order).
    """
    others = [c for c in CLASSES if c != MELANOMA]
    if size < len(CLASSES):
        raise ValueError(f"a deck needs at least {len(CLASSES)} cases, one of each class; not {size}")
    rng = deck_rng(code)
    images_of = defaultdict(list)
    for i, lesion in enumerate(lesion_ids):
        images_of[lesion].append(i)
    lesions = {c: sorted(les for les, rows in images_of.items() if dx[rows[0]] == c) for c in CLASSES}
    n_mel = min(max(1, round(size * melanoma_share)), size - len(others))
    short = [c for c in CLASSES if len(lesions[c]) < (n_mel if c == MELANOMA else 1)]
    if short:
        raise ValueError(f"the cases hold too few lesions of {', '.join(short)} for a deck of {size}")
    picked = [str(les) for les in rng.choice(lesions[MELANOMA], n_mel, replace=False)]
    picked += [str(rng.choice(lesions[c])) for c in others]
    rest = [les for c in others for les in lesions[c] if les not in set(picked)]
    if len(rest) < size - len(picked):
        raise ValueError(f"the cases hold too few lesions for a deck of {size}")
    picked += [str(les) for les in rng.choice(rest, size - len(picked), replace=False)]
    rows = []
    for les in picked:
        images = sorted(images_of[les], key=lambda i: image_ids[i])
        rows.append(images[int(rng.integers(len(images)))])
    rng.shuffle(rows)
    return [int(r) for r in rows]


# ----------------------------------------------------------------------------- answers and the score

@dataclass(frozen=True)
class CaseAnswer:
    """One case as the reader and the models answered it. `after` is None until the reader goes on."""
    number: int                 # 1-based place in the deck
    image_id: str
    lesion_id: str
    truth: str                  # HAM10000's confirmed diagnosis
    dx_type: str                # how HAM10000 confirmed it (histo, follow_up, consensus, confocal)
    age: float | None
    sex: str
    site: str
    before: str                 # the reader's diagnosis before seeing the models
    excise_before: str | None   # "yes", "no" or None (not answered)
    fusion: str                 # each model's top class and its probabilities
    image_only: str
    fusion_probabilities: dict = field(default_factory=dict, repr=False)
    image_only_probabilities: dict = field(default_factory=dict, repr=False)
    similar_vote: str | None = None   # the similar cases' vote's top class (None: no archive)
    after: str | None = None
    excise_after: str | None = None

    def answer(self, who: str) -> str | None:
        return getattr(self, who)

    def correct(self, who: str) -> bool:
        return self.answer(who) == self.truth

    @property
    def change(self) -> str:
        """What seeing the models did to the reader's answer: 'kept', 'better' (wrong to right),
        'worse' (right to wrong) or 'other' (one wrong answer for another)."""
        if self.after is None or self.after == self.before:
            return "kept"
        if self.correct("after"):
            return "better"
        return "worse" if self.correct("before") else "other"


def balanced_accuracy(truth: Sequence[str], answers: Sequence[str]) -> float | None:
    """Mean recall over the classes present in truth (None for no cases)."""
    present = sorted(set(truth))
    if not present:
        return None
    return float(np.mean([np.mean([a == c for t, a in zip(truth, answers) if t == c]) for c in present]))


@dataclass(frozen=True)
class Score:
    """The running score over the cases done (each answered, revealed and passed)."""
    cases: int
    correct: dict                # who -> cases right
    accuracy: dict               # who -> share right (None for no cases)
    balanced_accuracy: dict      # who -> mean recall over the classes among these cases
    classes: int                 # how many classes those are
    melanomas: int
    melanomas_caught: dict       # who -> melanomas it called melanoma
    melanomas_excised: dict      # before/after -> melanomas the reader would excise or biopsy
    better: int                  # the models turned a wrong answer into the right one
    worse: int                   # ... a right answer into a wrong one
    other: int                   # ... one wrong answer into another


def score(answers: Sequence[CaseAnswer]) -> Score:
    """The score of the cases done (answers whose `after` is set)."""
    done = [a for a in answers if a.after is not None]
    truth = [a.truth for a in done]
    mel = [a for a in done if a.truth == MELANOMA]
    changes = [a.change for a in done]
    correct = {w: sum(a.correct(w) for a in done) for w in WHO}
    return Score(
        cases=len(done), correct=correct,
        accuracy={w: correct[w] / len(done) if done else None for w in WHO},
        balanced_accuracy={w: balanced_accuracy(truth, [a.answer(w) for a in done]) for w in WHO},
        classes=len(set(truth)), melanomas=len(mel),
        melanomas_caught={w: sum(a.answer(w) == MELANOMA for a in mel) for w in WHO},
        melanomas_excised={"before": sum(a.excise_before == "yes" for a in mel),
                           "after": sum(a.excise_after == "yes" for a in mel)},
        better=changes.count("better"), worse=changes.count("worse"), other=changes.count("other"))


def _share(n: int, of: int) -> str:
    return f"{n}/{of} ({n / of:.0%})" if of else "–"


def score_markdown(s: Score, deck_size: int | None = None) -> str:
    """The running score as Markdown: a table of the four answers, then what the models changed."""
    of = f" of {deck_size}" if deck_size else ""
    if not s.cases:
        return f"**Cases done: 0{of}.** Choose a diagnosis, reveal, then go on: the score counts each case you finish."
    lines = [f"**Cases done: {s.cases}{of}.**", "",
             "| | right | balanced accuracy | melanomas caught |", "|---|---|---|---|"]
    for w in WHO:
        ba = s.balanced_accuracy[w]
        lines.append(f"| {WHO_LABELS[w]} | {_share(s.correct[w], s.cases)} | {'–' if ba is None else f'{ba:.2f}'} | "
                     f"{f'{s.melanomas_caught[w]}/{s.melanomas}' if s.melanomas else '–'} |")
    changed = s.better + s.worse + s.other
    diagnoses = "the 1 diagnosis" if s.classes == 1 else f"each of the {s.classes} diagnoses"
    lines += ["", f"**Seeing the models changed your answer {changed} time{'s' if changed != 1 else ''}: "
                  f"{s.better} for the better, {s.worse} for the worse**"
                  + (f", {s.other} from one wrong answer to another." if s.other else "."), ""]
    if s.melanomas:
        lines += [f"You would excise or biopsy {s.melanomas_excised['before']} of the {s.melanomas} "
                  f"melanoma{'s' if s.melanomas != 1 else ''} before seeing the models, "
                  f"{s.melanomas_excised['after']} after.", ""]
    lines.append(f"Fusion: image + age, sex and site; image-only: the image alone. Balanced accuracy is the mean "
                 f"recall of {diagnoses} among these cases; a melanoma is caught when it is called melanoma.")
    return "\n".join(lines)


CSV_COLUMNS = ("deck_code", "case", "image_id", "lesion_id", "confirmed_dx", "dx_type", "age", "sex", "site",
               "answer_before", "excise_before", "answer_after", "excise_after", "change", "fusion", "fusion_p",
               "image_only", "image_only_p", "similar_cases_vote", "correct_before", "correct_after",
               "correct_fusion", "correct_image_only")


def answers_csv(answers: Sequence[CaseAnswer], code: str) -> bytes:
    """The reader's answers as CSV (UTF-8), one row per case done, built in memory."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for a in answers:
        if a.after is None:
            continue
        writer.writerow([code, a.number, a.image_id, a.lesion_id, a.truth, a.dx_type,
                         "" if a.age is None else f"{a.age:g}", a.sex, a.site, a.before, a.excise_before or "",
                         a.after, a.excise_after or "", a.change, a.fusion, f"{a.fusion_probabilities[a.fusion]:.4f}",
                         a.image_only, f"{a.image_only_probabilities[a.image_only]:.4f}", a.similar_vote or "",
                         *(int(a.correct(w)) for w in WHO)])
    return buf.getvalue().encode()


def csv_name(code: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"reader_answers_{code}_{when:%Y%m%d-%H%M%S}"


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
    """The tab's events as plain functions: raw values and the session in, (ReaderView, session) out.
    Only `reveal` runs the models."""

    def __init__(self, predictor: Predictor | None, cases: ReaderCases | None, deck_size: int = DECK_SIZE):
        self.predictor, self.cases, self.deck_size = predictor, cases, deck_size

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
