"""'Test yourself': the deck. A short code fixes the cases and their order, so the same code gives the
same deck (a room can follow one deck) and a new code a new one; `draw_deck` draws it from the
held-out cases (lesion_app.classifier.reader_cases): one image per lesion, every class present,
melanoma enriched.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections import defaultdict
from typing import Sequence

import numpy as np

from ..classifier.vocab import CLASSES

DECK_SIZE = 20
MELANOMA_SHARE = 0.25          # melanoma enriched to about a quarter of a deck (4-11% of real lesions)
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"   # no I, O, 0 or 1: a code read aloud is not misheard
CODE_LENGTH = 5
MELANOMA = "mel"


class ReaderError(ValueError):
    """Something the reader can put right (no deck yet, no answer chosen); shown as is."""


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
