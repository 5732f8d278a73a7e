"""The reading: the one sentence that says whether the two models agree and what the entered metadata
did to the fusion model's top class (from how many images, and what was counted once).

/report returns it as `reading` (and the repeat note as `note`), so it is made here, below the page;
the page shows the same sentence (lesion_app.page.presentation) and the case report prints it. The
Analysis itself holds only numbers and classes.
"""
from __future__ import annotations

from ..classifier.vocab import class_label


def reading(a) -> str:
    """Do the models agree, and what did the entered metadata do to the fusion top class, for an
    Analysis a (lesion_app.analysis.analysis); from how many images, when more than one.

    Credits only fields that were entered; with none entered it says so and nothing more.
    """
    line = _verdict_and_metadata(a)
    line = line if a.n_images == 1 else f"From {a.n_images} images of this lesion: {line}"
    return f"{line} Note: {repeat_note(a.repeated)}." if a.repeated else line


def repeat_note(repeated: list[int]) -> str:
    """What was counted once: '2 of the images were the same; counted once' ('' if nothing).
    repeated: how often each image given more than once was given."""
    if not repeated:
        return ""
    first, *rest = repeated
    same = " and ".join([f"{first} of the images were the same", *(f"{g} others were the same" for g in rest)])
    return f"{same}; {'counted once' if not rest else 'each counted once'}"


def _verdict_and_metadata(a) -> str:
    f, i = a.fusion, a.image_only
    top, pf, pi = class_label(f.top), f.probabilities[f.top], i.probabilities[i.top]
    verdict = (f"Both models agree: {top} (fusion {pf:.0%}, image-only {pi:.0%})." if a.agree else
               f"The models disagree: image-only says {class_label(i.top)} ({pi:.0%}), "
               f"fusion says {top} ({pf:.0%}).")
    fields = a.entered()
    if not fields:
        return ("No metadata entered: the fusion model answered from the image alone "
                f"(age, sex and site all not entered). {verdict}")
    names = _join([f"{k} ({_value(a.metadata[k])})" for k in fields])
    s = a.top_explained
    if a.no_metadata_top != f.top:
        line = (f"{verdict} The entered {names} moved the fusion model from "
                f"{class_label(a.no_metadata_top)} to {top}")
        if s is None:
            return line + "."
        pushes = [f"{k} {signed(s.contributions[k])}" for k in _by_size(s, fields)
                  if s.contributions[k] >= 0.0005]
        return line + (f", pushed by {', '.join(pushes)}." if pushes else
                       f"; no entered field alone raised P({f.top}).")
    line = f"{verdict} From the image alone the fusion model also says {f.top}"
    if s is None:
        return f"{line}; entered: {names}."
    effects = ", ".join(f"{k} {signed(s.contributions[k])}" for k in _by_size(s, fields))
    return f"{line}; the entered {names} changed P({f.top}) by {effects}."


def _join(items: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def signed(v: float) -> str:
    """A probability change in percentage points, one decimal; no '-0.0%'."""
    return "±0.0%" if abs(v) < 0.0005 else f"{v:+.1%}"


def _by_size(s, fields) -> list[str]:
    """The fields, largest absolute Shapley value first (s: a ShapleyResult)."""
    return sorted(fields, key=lambda k: -abs(s.contributions[k]))
