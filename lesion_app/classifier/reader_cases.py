"""The reader mode's cases ("Test yourself"): every image of the held-out slice, which no shipped
member trained on, shipped beside the weights so that the app needs no dataset.

weights/reader_cases.safetensors holds each case's image as its encoded bytes (HAM10000's own
200x150 JPEG, or WebP) in one uint8 tensor with offsets, and a JSON table as another uint8 tensor
(not the file's metadata, whose key order is not fixed: the same cases always give the same bytes):
image_id, lesion_id, dx, dx_type (how HAM10000 confirmed the diagnosis), age, sex, localization.
The manifest's "reader_cases" entry names it with its sha256, checked at start like every weights
file. Written by `python -m train.release.reader_cases`; read here only.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from .manifest import RESTORE_HINT, Manifest, WeightsError
from .vocab import CLASSES, SEXES, SITES
from .weights import verify_file

FORMAT = "reader-cases/1"
COLUMNS = ("image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization")
# HAM10000's dx_type: how each diagnosis was confirmed.
CONFIRMATIONS = {"histo": "histopathology", "follow_up": "follow-up examination (unchanged over time)",
                 "consensus": "expert consensus", "confocal": "in-vivo confocal microscopy"}
MEDIA_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


def media_type(data: bytes) -> str:
    """'image/jpeg' or 'image/webp' from the bytes' signature; ValueError for anything else."""
    for magic, kind in MEDIA_TYPES.items():
        if data.startswith(magic) and (kind != "image/webp" or data[8:12] == b"WEBP"):
            return kind
    raise ValueError("a case image is neither JPEG nor WebP")


@dataclass(frozen=True)
class ReaderCase:
    """One held-out image with what HAM10000 records about it."""
    image_id: str
    lesion_id: str
    dx: str
    dx_type: str
    age: float | None
    sex: str
    site: str
    data: bytes = field(repr=False)   # the encoded image (JPEG or WebP)

    @property
    def media_type(self) -> str:
        return media_type(self.data)

    @property
    def confirmed_by(self) -> str:
        """How HAM10000 confirmed the diagnosis, in words ('histopathology', ...)."""
        return CONFIRMATIONS[self.dx_type]

    def image(self) -> Image.Image:
        with Image.open(io.BytesIO(self.data)) as im:
            return im.convert("RGB")


class ReaderCases:
    """The held-out cases: a table (COLUMNS) and each image's bytes, row for row."""

    def __init__(self, table: dict[str, list], images: list[bytes]):
        n = len(images)
        if any(len(table[c]) != n for c in COLUMNS):
            raise ValueError("the reader cases' table and images differ in length")
        for column, allowed in (("dx", CLASSES), ("dx_type", tuple(CONFIRMATIONS)), ("sex", SEXES),
                                ("localization", SITES)):
            bad = sorted(set(table[column]) - set(allowed))
            if bad:
                raise ValueError(f"unknown {column} value(s) {bad}")
        for data in images:
            media_type(data)
        self.table = {c: list(table[c]) for c in COLUMNS}
        self.table["age"] = [None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
                             for a in self.table["age"]]
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> ReaderCase:
        t = self.table
        return ReaderCase(t["image_id"][i], t["lesion_id"][i], t["dx"][i], t["dx_type"][i], t["age"][i],
                          t["sex"][i], t["localization"][i], self.images[i])

    @property
    def dx(self) -> list[str]:
        return self.table["dx"]

    @property
    def lesion_id(self) -> list[str]:
        return self.table["lesion_id"]

    @property
    def image_id(self) -> list[str]:
        return self.table["image_id"]

    def save(self, path: Path) -> None:
        blob = b"".join(self.images)
        offsets = np.cumsum([0] + [len(b) for b in self.images])
        table = json.dumps(self.table, sort_keys=True).encode()
        save_file({"images": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                   "offsets": torch.from_numpy(offsets.astype(np.int64)),
                   "table": torch.frombuffer(bytearray(table), dtype=torch.uint8)}, str(path),
                  metadata={"format": FORMAT})

    @classmethod
    def load(cls, path: Path) -> "ReaderCases":
        """The file; a WeightsError naming it when it is not one this code reads."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
                blob, offsets = f.get_tensor("images").numpy().tobytes(), f.get_tensor("offsets").tolist()
                table = json.loads(f.get_tensor("table").numpy().tobytes())
            return cls(table, [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
        except Exception as e:   # a file with the manifest's checksum cannot fail here; say so plainly
            raise WeightsError(f"{path} is not a readable file of reader cases ({type(e).__name__}: {e}). "
                               f"{RESTORE_HINT}") from None


def load_reader_cases(weights_dir: Path, manifest: Manifest) -> ReaderCases | None:
    """The manifest's reader cases, checked against its sha256 and image count (None when these
    weights have none). Raises WeightsError naming the file at fault."""
    entry = manifest.reader_cases
    if not entry:
        return None
    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise WeightsError(f"{Path(weights_dir) / 'manifest.json'}: its reader_cases entry lacks file or sha256. "
                           f"{RESTORE_HINT}")
    path = verify_file(weights_dir, entry)
    cases = ReaderCases.load(path)
    if entry.get("n_images") is not None and len(cases) != entry["n_images"]:
        raise WeightsError(f"{path} holds {len(cases)} cases, the manifest says {entry['n_images']}. "
                           f"{RESTORE_HINT}")
    return cases
