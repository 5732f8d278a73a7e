"""The page's choice inputs (heatmap class, heatmap method, prediction-set level, melanoma
operating point, the similar cases' number and filters) and the one rule that parses them: blank means the default; otherwise a label
or an accepted alias, surrounding whitespace ignored, means its value; anything else is a
ChoiceError naming what is accepted."""
from __future__ import annotations

from ..classifier.vocab import CLASSES, class_label
from ..evidence.archive import DEFAULT_K, K_CHOICES
from ..evidence.clinical_report import OPERATING_POINTS, SPECIFICITIES
from ..evidence.gradcam import CAM_METHODS, DEFAULT_CAM_METHOD, TOP_TWO

PREDICTED = "Predicted class (each model's own)"
CONTRAST = "Top two (why the first rather than the second)"   # each model's top class rather than its second
SET_LEVELS = {"90%": "0.9", "95%": "0.95"}   # the page's label -> the manifest's level key


class ChoiceError(ValueError):
    """A value that is none of a choice's options; the message is shown to the user as is."""


def is_blank(value) -> bool:
    """None or an all-whitespace string: not chosen."""
    return value is None or (isinstance(value, str) and not value.strip())


class Choice:
    """One input's options: `labels` (label -> value, as the page lists them) and `aliases` (other
    accepted text -> value); blank means `default`. Values arrive raw (text, or a number sent to
    the API), so a value is compared as its stripped text, case-folded when `ignore_case`."""

    def __init__(self, name: str, labels: dict, default, aliases: dict | None = None,
                 expected: str | None = None, ignore_case: bool = False):
        self.name, self.labels, self.default, self.ignore_case = name, dict(labels), default, ignore_case
        self.expected = expected or f"one of: {', '.join(self.labels)}"
        self._values = {self._key(k): v for k, v in {**(aliases or {}), **self.labels}.items()}

    def _key(self, text: str) -> str:
        text = text.strip()
        return text.lower() if self.ignore_case else text

    def parse(self, choice):
        """The value a choice means; ChoiceError 'Unknown <name> <choice!r>; expected <expected>.'"""
        if is_blank(choice):
            return self.default
        key = self._key(str(choice))
        if key in self._values:
            return self._values[key]
        raise ChoiceError(f"Unknown {self.name} {choice!r}; expected {self.expected}.")


# Blank or PREDICTED: each heatmap shows its own model's top class (None); CONTRAST (or "top two"):
# each model's top class rather than its second (TOP_TWO).
HEATMAP_CLASS = Choice("heatmap class", {PREDICTED: None, CONTRAST: TOP_TWO, **{class_label(k): k for k in CLASSES}},
                       None, aliases={TOP_TWO: TOP_TWO, **{k: k for k in CLASSES}},
                       expected=f"{PREDICTED!r}, {CONTRAST!r} (or {TOP_TWO!r}) or one of: "
                                f"{', '.join(class_label(k) for k in CLASSES)} (or its code)")
HEATMAP_METHOD = Choice("heatmap method", {m: m for m in CAM_METHODS}, DEFAULT_CAM_METHOD, ignore_case=True)
SET_LEVEL = Choice("prediction set level", SET_LEVELS, SET_LEVELS["90%"],
                   aliases={v: v for v in SET_LEVELS.values()})
OPERATING_POINT = Choice("melanoma operating point", OPERATING_POINTS, SPECIFICITIES[0],
                         aliases={s: s for s in SPECIFICITIES})
SIMILAR_K = Choice("number of similar cases", {str(k): k for k in K_CHOICES}, DEFAULT_K)
_ON_OFF = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
SAME_SITE = Choice("'same body site' filter", {"on": True, "off": False}, False, aliases=_ON_OFF, ignore_case=True)
SAME_SEX = Choice("'same sex' filter", {"on": True, "off": False}, False, aliases=_ON_OFF, ignore_case=True)
