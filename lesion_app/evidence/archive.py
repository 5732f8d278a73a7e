"""Similar confirmed cases: the archive of the images the shipped members trained on, and
retrieval over it.

An embedding turns what an analysis already computed (the shared trunk's output, each
member's pooled features) into one vector, so retrieval adds no network pass. The archive
holds, for every archive image, that vector (centred and projected onto its principal
directions, unit length), a small WebP thumbnail, and the confirmed diagnosis, age, sex and
site. A query returns the k most similar *lesions* (each lesion once, by its most similar
image) and their vote over the diagnoses, which is shown as its own opinion and never mixed
into the models' probabilities. Uploads never join the archive.

The candidates and the choice between them: train.evaluation.retrieval; the file:
train.release.archive.
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

from ..classifier.manifest import RESTORE_HINT, WeightsError
from ..classifier.vocab import CLASSES, UNKNOWN
from .ood import OODDetector

EMBEDDINGS = ("trunk_mean", "image_only", "fusion")   # the candidates train.evaluation.retrieval compares
DESCRIPTIONS = {"trunk_mean": "the shared frozen ImageNet trunk's features",
                "image_only": "the image-only ensemble's image features",
                "fusion": "the fusion ensemble's image features (before the metadata joins them)"}
VOTES = ("class_weighted", "plain")
K_CHOICES = (4, 8, 16)
DEFAULT_K = 8
ATTRIBUTION = ("Archive images: HAM10000 (Tschandl P, Rosendahl C, Kittler H, Sci Data 5, 180161, 2018), "
               "CC BY-NC 4.0")
COLUMNS = ("image_id", "lesion_id", "dx", "age", "sex", "site")
FORMAT = "lesion-archive/1"


def raw_embedding(name: str, trunk_mean: torch.Tensor, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
    """One image's vector before projection, (B, D).

    trunk_mean: (B, C) the shared trunk's channel means over positions and flip views
    (lesion_app.evidence.ood.OODDetector.trunk_features); pooled: kind -> (M, B, V, F) each member's
    pooled features (Passes.pooled_features). An ensemble's vector joins its members'
    view-averaged features, each scaled to unit length and by 1/sqrt(M), so the cosine of
    two vectors is the mean of the members' cosines.
    """
    if name == "trunk_mean":
        return trunk_mean.float()
    if name not in pooled:
        raise ValueError(f"unknown embedding {name!r}; one of {EMBEDDINGS}")
    p = torch.nn.functional.normalize(pooled[name].float().mean(2), dim=-1)   # (M, B, F)
    return p.permute(1, 0, 2).reshape(p.shape[1], -1) / math.sqrt(p.shape[0])


def image_embedding(name: str, reference: torch.Tensor | None, pooled: dict[str, torch.Tensor],
                    n_images: int) -> torch.Tensor:
    """raw_embedding `name` of n_images images from their frozen trunk output for every flip view
    (reference; None will do unless name is "trunk_mean") and their members' pooled features (kind ->
    (M, n_images, V, F)): no network pass of its own."""
    trunk = None if reference is None else OODDetector.trunk_features(reference, n_images)
    return raw_embedding(name, trunk, {k: v.cpu() for k, v in pooled.items()})


@dataclass
class Projection:
    """Centring and projection onto the top principal directions, then unit length."""
    mean: torch.Tensor          # (D,)
    components: torch.Tensor    # (D, d)

    @classmethod
    def fit(cls, x: torch.Tensor, dims: int) -> "Projection":
        x = torch.as_tensor(x, dtype=torch.float64)
        mean = x.mean(0)
        evals, evecs = torch.linalg.eigh((x - mean).T @ (x - mean) / len(x))
        top = torch.argsort(evals, descending=True)[:dims]
        return cls(mean.float(), evecs[:, top].float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, d) unit vectors: the cosine similarity is their dot product."""
        z = (torch.as_tensor(x).float() - self.mean) @ self.components
        return torch.nn.functional.normalize(z, dim=1)


def lesion_groups(lesion_ids) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): an order of the rows that puts each lesion's images together, and where
    each lesion's run begins in it (for np.maximum.reduceat)."""
    lesion_ids = np.asarray(lesion_ids)
    order = np.argsort(lesion_ids, kind="stable")
    ordered = lesion_ids[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def lesion_similarity(sims: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(Q, N) similarities of lesion-grouped rows -> (Q, lesions): each lesion's best image."""
    return np.maximum.reduceat(sims, starts, axis=1)


def vote(dx_codes: np.ndarray, prior: np.ndarray, weighting: str = "class_weighted") -> np.ndarray:
    """(Q, k) class indices of the retrieved lesions -> (Q, classes) vote shares summing to 1.

    class_weighted divides each class's count by its share of the archive's lesions (prior),
    so a class the archive holds few of is not outvoted by sheer numbers; plain counts.
    """
    counts = np.stack([(dx_codes == c).sum(1) for c in range(len(CLASSES))], 1).astype(np.float64)
    if weighting == "class_weighted":
        counts = counts / prior
    elif weighting != "plain":
        raise ValueError(f"unknown vote weighting {weighting!r}; one of {VOTES}")
    return counts / counts.sum(1, keepdims=True)


@dataclass
class SimilarCase:
    image_id: str
    lesion_id: str
    dx: str
    age: float | None
    sex: str
    site: str
    similarity: float
    thumbnail: bytes = field(repr=False)   # WebP

    def to_report(self) -> dict:
        return {"image_id": self.image_id, "lesion_id": self.lesion_id, "dx": self.dx, "age": self.age,
                "sex": self.sex, "site": self.site, "similarity": round(self.similarity, 4)}

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.thumbnail)).convert("RGB")


@dataclass
class SimilarCases:
    """The k most similar archive lesions for one image, and their vote."""
    k: int
    embedding: str
    weighting: str
    vote: dict[str, float]
    cases: list[SimilarCase]
    filters: dict[str, str | None]   # {"site": value or None, "sex": value or None}: what was required
    note: str = ""                   # e.g. why a filter was not applied
    archive_images: int = 0
    archive_lesions: int = 0

    def to_report(self) -> dict:
        return {"k": self.k, "embedding": self.embedding, "vote_weighting": self.weighting, "vote": self.vote,
                "filters": self.filters, "note": self.note, "cases": [c.to_report() for c in self.cases]}


@dataclass
class SimilarQuery:
    """What a user asks of the panel: how many cases, and whether they must share the entered
    body site or sex (ignored, with a note, when that field was not entered)."""
    k: int = DEFAULT_K
    same_site: bool = False
    same_sex: bool = False

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k not in K_CHOICES:
            raise ValueError(f"k must be one of {K_CHOICES}, not {self.k!r}")


class Archive:
    """The archive images' projected vectors (rows grouped by lesion), table and thumbnails."""

    def __init__(self, embedding: str, projection: Projection, vectors: torch.Tensor, table: dict[str, list],
                 thumbnails: list[bytes], weighting: str = "class_weighted"):
        if embedding not in EMBEDDINGS or weighting not in VOTES:
            raise ValueError(f"unknown embedding {embedding!r} or vote weighting {weighting!r}")
        n = len(vectors)
        if any(len(table[c]) != n for c in COLUMNS) or len(thumbnails) != n:
            raise ValueError("the archive's vectors, table and thumbnails differ in length")
        order, self.starts = lesion_groups(table["lesion_id"])
        if not np.array_equal(order, np.arange(n)):
            raise ValueError("the archive's rows must be grouped by lesion (train.release.archive writes them so)")
        self.embedding, self.projection, self.weighting = embedding, projection, weighting
        self.vectors = torch.as_tensor(vectors).float().contiguous()
        self.table, self.thumbnails = {c: list(table[c]) for c in COLUMNS}, thumbnails
        self.dx_index = np.array([CLASSES.index(d) for d in self.table["dx"]])
        lesion_dx = self.dx_index[self.starts]
        self.prior = np.bincount(lesion_dx, minlength=len(CLASSES)) / len(lesion_dx)
        self._sex = np.array(self.table["sex"])
        self._site = np.array(self.table["site"])
        self._lesion = np.array(self.table["lesion_id"])

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def n_lesions(self) -> int:
        return len(self.starts)

    def project(self, raw: torch.Tensor) -> torch.Tensor:
        return self.projection(raw)

    def search(self, queries: torch.Tensor, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) projected queries -> (rows (Q, k), similarities (Q, k)): each query's k most similar
        lesions, as the row of each one's most similar image, best first. allowed: (N,) or (Q, N)
        bool of the rows that may be returned (fewer than k lesions allowed: rows of -1)."""
        sims = (torch.as_tensor(queries).float() @ self.vectors.T).numpy().astype(np.float64)
        if allowed is not None:
            sims = np.where(allowed, sims, -np.inf)
        by_lesion = lesion_similarity(sims, self.starts)
        k = min(k, by_lesion.shape[1])
        top = np.argpartition(-by_lesion, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(by_lesion, top, 1), axis=1), 1)
        ends = np.r_[self.starts[1:], len(self)]
        rows = np.full(top.shape, -1)
        best = np.full(top.shape, -np.inf)
        for q in range(len(top)):
            for j, les in enumerate(top[q]):
                s, e = self.starts[les], ends[les]
                r = s + int(np.argmax(sims[q, s:e]))
                if np.isfinite(sims[q, r]):
                    rows[q, j], best[q, j] = r, sims[q, r]
        return rows, best

    def vote_of(self, rows: np.ndarray) -> np.ndarray:
        """(Q, k) rows from search -> (Q, classes) vote shares (rows of -1 ignored)."""
        codes = np.where(rows >= 0, self.dx_index[np.maximum(rows, 0)], -1)
        return vote(codes, self.prior, self.weighting)

    def similar(self, raw: torch.Tensor, query: SimilarQuery = SimilarQuery(), sex: str = UNKNOWN,
                site: str = UNKNOWN, exclude_lesions=()) -> SimilarCases:
        """One image's similar cases, from its raw embedding (1, D); sex and site as entered
        (filters apply only to entered fields). exclude_lesions: lesions never returned."""
        allowed = ~np.isin(self._lesion, list(exclude_lesions))
        notes, filters = [], {"site": None, "sex": None}
        for wanted, name, value, column in ((query.same_site, "site", site, self._site),
                                            (query.same_sex, "sex", sex, self._sex)):
            if not wanted:
                continue
            if value in (None, UNKNOWN):
                notes.append(f"'same {name}' is not applied: no {name} was entered.")
                continue
            allowed &= column == value
            filters[name] = value
        rows, sims = self.search(self.project(raw), query.k, allowed)
        rows, sims = rows[0][rows[0] >= 0], sims[0][rows[0] >= 0]
        if len(rows) < query.k:
            notes.append(f"Only {len(rows)} archive lesions match the filters.")
        share = self.vote_of(rows[None])[0] if len(rows) else np.full(len(CLASSES), np.nan)
        cases = [SimilarCase(*(self.table[c][r] for c in COLUMNS), similarity=float(s),
                             thumbnail=self.thumbnails[r]) for r, s in zip(rows, sims)]
        return SimilarCases(k=query.k, embedding=self.embedding, weighting=self.weighting,
                            vote={c: float(v) for c, v in zip(CLASSES, share)}, cases=cases,
                            filters=filters, note=" ".join(notes), archive_images=len(self),
                            archive_lesions=self.n_lesions)

    # ------------------------------------------------------------------ the file

    def save(self, path: Path) -> None:
        blob = b"".join(self.thumbnails)
        offsets = np.cumsum([0] + [len(t) for t in self.thumbnails])
        ages = [None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a) for a in self.table["age"]]
        table = {**self.table, "age": ages}
        save_file({"vectors": self.vectors.half().contiguous(), "mean": self.projection.mean.contiguous(),
                   "components": self.projection.components.half().contiguous(),
                   "thumbnails": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                   "thumbnail_offsets": torch.from_numpy(offsets.astype(np.int64))}, str(path),
                  metadata={"format": FORMAT, "embedding": self.embedding, "vote_weighting": self.weighting,
                            "table": json.dumps(table)})

    @classmethod
    def load(cls, path: Path) -> "Archive":
        """The archive file; a WeightsError naming it when it is not one this code reads."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            blob, offsets = t["thumbnails"].numpy().tobytes(), t["thumbnail_offsets"].tolist()
            thumbs = [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            return cls(meta["embedding"], Projection(t["mean"].float(), t["components"].float()), t["vectors"],
                       json.loads(meta["table"]), thumbs, meta.get("vote_weighting", "class_weighted"))
        except WeightsError:
            raise
        except Exception as e:   # a file with the manifest's checksum cannot fail here; say so plainly
            raise WeightsError(f"{path} is not a readable similar-cases archive ({type(e).__name__}: {e}). "
                               f"{RESTORE_HINT}") from None


def thumbnail_bytes(image: Image.Image, size: tuple[int, int] = (160, 120), quality: int = 75) -> bytes:
    """An archive thumbnail: the image resized to size, as WebP."""
    buf = io.BytesIO()
    image.convert("RGB").resize(size, Image.BICUBIC).save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()
