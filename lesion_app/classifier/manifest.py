"""weights/manifest.json as one checked type: the only code that parses or writes it.

The manifest describes everything inference needs (architecture, what each ensemble's member
files hold: the upper stages over the shared trunk from its split block, or whole networks, input
spec, class order, metadata vocabulary, age scaling, temperatures, every file and its sha256) and
what the release stage adds (the OOD check, the prediction sets). `Manifest.load` checks it
against this code's class order and vocabulary and checks every entry inference reads, so
a bad file fails at once with a WeightsError naming it. A Manifest is never edited in place:
`with_ood` / `with_prediction_sets` / `with_heldout` return a new one, and `save` writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..paths import REPO, repo_path
from .metadata import AgeScaler
from .models import WHOLE_NETWORK, head_name
from .preprocess import InputSpec
from .vocab import CLASSES, SEXES, SITES

WEIGHTS_DIR = REPO / "weights"
MANIFEST = "manifest.json"
MODEL_KEYS = ("fusion", "image_only")
RESTORE_HINT = ("Restore the bundled files with `git checkout -- weights/`, or retrain them "
                "with the commands in weights/MODEL_CARD.md.")


class WeightsError(RuntimeError):
    """A weights file is missing, corrupted or does not match the manifest."""


class ManifestNotJSON(WeightsError):
    """manifest.json is not JSON; `cause` is the decoder's error."""

    def __init__(self, message: str, cause: Exception):
        super().__init__(message)
        self.cause = cause


# The keys inference cannot do without; the rest are records of how the weights were made
# ("trunk" too is required, but only when some member runs on the shared trunk: Manifest.check).
REQUIRED = ("version", "architecture", "input", "class_order", "metadata", "models")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The manifest's top-level keys, in the order train.release.bundle writes them. Nested
    parts are the JSON's own dicts; the methods below are how code reads into them."""
    version: str
    architecture: dict
    trunk: dict | None = None        # {"file", "sha256", "split_block", ...}; absent when every member
                                     # holds its whole network
    input: dict                      # {"spec": InputSpec fields, "tta_views", "crop"}
    class_order: list
    class_names: dict | None = None
    metadata: dict                   # {"layout", "sexes", "sites", "age_scaler", ...}
    models: dict                     # kind -> {"fusion", "split_block", "members", "temperature", metrics, ...}
    folds_file: str | None = None    # repo-relative (lesion_app.paths)
    folds_sha256: str | None = None
    heldout_file: str | None = None
    heldout_sha256: str | None = None
    selection: dict | None = None
    git_commit: str | None = None
    bundle_command: str | None = None
    training_wall_time_seconds: dict | None = None
    hardware: str | None = None
    second_source: dict | None = None  # train.fitting.cv --second-source: another clinic's fit half the members trained on
    heldout_seconds: float | None = None
    ood: dict | None = None          # train.release.fit_ood
    prediction_sets: dict | None = None   # train.release.prediction_sets
    archive: dict | None = None      # train.release.archive (similar confirmed cases)
    reader_cases: dict | None = None  # train.release.reader_cases (the held-out cases of 'Test yourself')
    segmentation: dict | None = None  # train.fitting.segmentation (the lesion's outline)
    shift: dict | None = None        # train.release.fit_shift (how unlike the training images, and what it did)
    skin_tone: dict | None = None    # train.release.skin_tone (the training images' skin-tone angles)
    other_clinics: dict | None = None  # train.release.other_clinics (the ensembles on other clinics' images)
    extra: dict = field(default_factory=dict)   # keys this code does not know, kept as read
    # The keys' order as read, so a rewrite keeps the file's own order (new keys go last).
    key_order: tuple = field(default=(), repr=False, compare=False)

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def load(cls, weights_dir: Path = WEIGHTS_DIR) -> "Manifest":
        """weights_dir/manifest.json, checked; a WeightsError naming the file and the fix otherwise."""
        path = Path(weights_dir) / MANIFEST
        if not path.is_file():
            raise WeightsError(f"{path} is missing. {RESTORE_HINT}")
        return cls.from_text(path.read_text(), path)

    @classmethod
    def from_text(cls, text: str, source: Path | str) -> "Manifest":
        """A manifest from its JSON text (source: the file it came from, for messages)."""
        try:
            manifest_json = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestNotJSON(f"{source} is not valid JSON ({e}). {RESTORE_HINT}", e) from None
        return cls.from_dict(manifest_json, source)

    @classmethod
    def from_dict(cls, data, source: Path | str) -> "Manifest":
        meta = data.get("metadata") if isinstance(data, dict) else None
        if not isinstance(meta, dict) or tuple(data.get("class_order", ())) != CLASSES \
                or tuple(meta.get("sites", ())) != SITES or tuple(meta.get("sexes", ())) != SEXES:
            raise WeightsError(f"{source} was made for another class order or metadata vocabulary "
                               f"than this code's. {RESTORE_HINT}")
        known = {f.name for f in fields(cls)} - {"extra", "key_order"}
        try:
            for key in REQUIRED:
                data[key]
            manifest = cls(**{k: v for k, v in data.items() if k in known},
                           extra={k: v for k, v in data.items() if k not in known}, key_order=tuple(data))
            manifest.check()
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{source} lacks or mangles an entry ({type(e).__name__}: {e}). "
                               f"{RESTORE_HINT}") from None
        return manifest

    def check(self) -> None:
        """Reads every entry inference needs: KeyError, TypeError or ValueError for one that is
        absent or malformed (WeightsError for an unusable input spec)."""
        self.backbone, self.age_scaler, self.input_spec
        for k in MODEL_KEYS:
            self.head(k), self.temperature(k), self.member_split(k)
        if self.trunk is not None or self.needs_trunk:
            self.split_block
        members = [m for k in MODEL_KEYS for m in self.members(k)]
        for entry in ([self.trunk] if self.trunk is not None else []) + members:
            entry["file"], entry["sha256"]

    def to_dict(self) -> dict:
        """The JSON object: keys in the order read, then any set since in field order."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "key_order")}
        data = {**{k: v for k, v in data.items() if v is not None or k in self.key_order}, **self.extra}
        order = [k for k in self.key_order if k in data] + [k for k in data if k not in self.key_order]
        return {k: data[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, weights_dir: Path) -> Path:
        path = Path(weights_dir) / MANIFEST
        path.write_text(self.to_json())
        return path

    # ------------------------------------------------------------------ extending

    def with_ood(self, entry: dict) -> "Manifest":
        """A copy with the out-of-distribution check's entry (train.release.fit_ood)."""
        return replace(self, ood=entry)

    def with_prediction_sets(self, entry: dict) -> "Manifest":
        """A copy with the prediction sets' thresholds and coverage (train.release.prediction_sets)."""
        return replace(self, prediction_sets=entry)

    def with_archive(self, entry: dict) -> "Manifest":
        """A copy with the similar-cases archive's entry (train.release.archive)."""
        return replace(self, archive=entry)

    def with_reader_cases(self, entry: dict) -> "Manifest":
        """A copy with the reader mode's held-out cases' entry (train.release.reader_cases)."""
        return replace(self, reader_cases=entry)

    def with_segmentation(self, entry: dict) -> "Manifest":
        """A copy with the lesion segmenter's entry (train.fitting.segmentation)."""
        return replace(self, segmentation=entry)

    def with_shift(self, entry: dict) -> "Manifest":
        """A copy with the graded shift score's entry (train.release.fit_shift)."""
        return replace(self, shift=entry)

    def with_skin_tone(self, entry: dict) -> "Manifest":
        """A copy with the training images' skin-tone angles (train.release.skin_tone)."""
        return replace(self, skin_tone=entry)

    def with_other_clinics(self, entry: dict) -> "Manifest":
        """A copy with the ensembles' figures on other clinics' images (train.release.other_clinics)."""
        return replace(self, other_clinics=entry)

    def with_heldout(self, metrics: dict, seconds: float) -> "Manifest":
        """A copy with each kind's held-out metrics (metrics[kind]) and the scoring time."""
        models = {k: {**v, "heldout_metrics": metrics[k]} if k in MODEL_KEYS else v
                  for k, v in self.models.items()}
        return replace(self, models=models, heldout_seconds=seconds)

    # ------------------------------------------------------------------ what the readers need

    @property
    def backbone(self) -> str:
        return self.architecture["backbone"]

    @property
    def split_block(self) -> int:
        """The shared trunk's split: the first block its members fine-tuned; the trunk is everything
        below it. KeyError when there is no trunk entry."""
        if self.trunk is None:
            raise KeyError("trunk")
        split = self.trunk["split_block"]
        if isinstance(split, bool) or not isinstance(split, int) or split < 1:
            raise ValueError(f"trunk.split_block must be a block index >= 1, not {split!r}")
        return split

    def member_split(self, kind: str) -> int | str:
        """What a kind's member files hold: the upper stages from this block over the shared trunk
        (an int, the trunk's split_block), or WHOLE_NETWORK (each file the whole network, no trunk).
        models[kind]["split_block"]; a manifest without it (bundled before whole-network members
        could ship) describes members over the shared trunk."""
        entry = self.models[kind]
        if "split_block" not in entry:
            return self.split_block
        split = entry["split_block"]
        if split == WHOLE_NETWORK:
            return split
        if isinstance(split, bool) or not isinstance(split, int) or split < 1:
            raise ValueError(f"models.{kind}.split_block must be a block index >= 1 (members over the shared "
                             f"trunk) or {WHOLE_NETWORK!r}, not {split!r}")
        if split != self.split_block:
            raise ValueError(f"models.{kind}.split_block is {split} but trunk.split_block is {self.split_block}: "
                             "one shared trunk serves every member that runs on it")
        return split

    @property
    def needs_trunk(self) -> bool:
        """Whether some member runs on the shared trunk (so the trunk entry and file are needed)."""
        return any(self.models[k].get("split_block") != WHOLE_NETWORK for k in MODEL_KEYS)

    def head(self, kind: str) -> str:
        """The head a kind's members use (lesion_app.classifier.models.HEADS); the manifest records its fusion."""
        return head_name(kind, self.models[kind]["fusion"])

    def members(self, kind: str) -> list[dict]:
        """A kind's members ({"file", "sha256", "fold", ...}), in ensemble order."""
        return self.models[kind]["members"]

    def temperature(self, kind: str) -> float:
        return float(self.models[kind]["temperature"])

    def config(self, kind: str) -> dict:
        """The training recipe of a kind's members (loss, sampler, epochs, ...)."""
        return self.models[kind]["config"]

    def out_of_fold_metrics(self, kind: str) -> dict:
        """A kind's metrics on its calibrated out-of-fold predictions (n, balanced_accuracy, ...)."""
        return self.models[kind]["out_of_fold_metrics"]

    @property
    def input_spec(self) -> InputSpec:
        try:
            return InputSpec(**self.input["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"the manifest's input spec is unusable ({type(e).__name__}: {e}). "
                               f"{RESTORE_HINT}") from None

    @property
    def age_scaler(self) -> AgeScaler:
        return AgeScaler(**self.metadata["age_scaler"])

    @property
    def set_thresholds(self) -> dict[str, dict[str, np.ndarray]]:
        """Per level and kind, the prediction sets' class thresholds; {} when none were fitted."""
        sets = (self.prediction_sets or {}).get("thresholds", {})
        return {level: {k: np.asarray(v) for k, v in kinds.items()} for level, kinds in sets.items()}

    def file_entries(self) -> list[dict]:
        """Every weights file the manifest names ({"file", "sha256", ...}: the trunk, each member
        of each ensemble, the OOD detector, the similar-cases archive, the lesion segmenter, the reader
        mode's cases, the shift score), in the manifest's order."""
        entries = {"trunk": [self.trunk] if self.trunk else [], "ood": [self.ood] if self.ood else [],
                   "archive": [self.archive] if self.archive else [],
                   "reader_cases": [self.reader_cases] if self.reader_cases else [],
                   "segmentation": [self.segmentation] if self.segmentation else [],
                   "shift": [self.shift] if self.shift else [],
                   "models": [m for v in self.models.values() for m in v.get("members", [])]}
        return [e for key in self.to_dict() for e in entries.get(key, ())]

    @property
    def folds_path(self) -> Path:
        """The folds file the members were trained on, as an absolute path."""
        if not self.folds_file:
            raise WeightsError(f"the manifest names no folds_file (version {self.version}). {RESTORE_HINT}")
        return repo_path(self.folds_file)

    @property
    def heldout_path(self) -> Path:
        """The held-out slice (no member trained on it), as an absolute path."""
        if not self.heldout_file:
            raise WeightsError(f"the manifest names no heldout_file (version {self.version}). {RESTORE_HINT}")
        return repo_path(self.heldout_file)

    @property
    def model_info(self) -> dict:
        """What an analysis reports about the weights: the version and each member's sha256."""
        return {"version": self.version,
                "sha256": {k: [m["sha256"] for m in self.members(k)] for k in MODEL_KEYS}}
