"""'Test yourself': a reader's answers and their score. Each case done is a CaseAnswer (the reader's
diagnosis before and after seeing the models, both models' answers, the similar cases' vote); `score`
counts them against the confirmed diagnoses, `score_markdown` shows the running score, and
`answers_csv` is the reader's download, built in memory.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from .reader_deck import MELANOMA

WHO = ("before", "after", "fusion", "image_only")   # the four answers a case is scored on
WHO_LABELS = {"before": "You, before the models", "after": "You, after the models", "fusion": "Fusion model",
              "image_only": "Image-only model"}


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
