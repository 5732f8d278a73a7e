"""The bundled weights: manifest, checksum verification and model loading.

weights/ holds one shared trunk (the frozen ImageNet lower stages) and, per kind, the
members of a cross-validated ensemble (each member's fine-tuned upper stages and head).
Everything inference needs (architecture, split point, input spec, class order, metadata
vocabulary, age scaling, temperatures, members and their sha256) is read from
weights/manifest.json, never restated. Every file is checked against its sha256 at load.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .metadata import AgeScaler
from .ensemble import Ensemble
from .models import LesionClassifier
from .preprocess import InputSpec
from .vocab import CLASSES, SEXES, SITES

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MODEL_KEYS = ("fusion", "image_only")
RESTORE_HINT = ("Restore the bundled files with `git checkout -- weights/`, or retrain them "
                "with the commands in weights/MODEL_CARD.md.")


class WeightsError(RuntimeError):
    """A weights file is missing, corrupted or does not match the manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict:
    path = Path(weights_dir) / "manifest.json"
    if not path.is_file():
        raise WeightsError(f"{path} is missing. {RESTORE_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e}). {RESTORE_HINT}") from None
    meta = manifest.get("metadata") if isinstance(manifest, dict) else None
    if not isinstance(meta, dict) or tuple(manifest.get("class_order", ())) != CLASSES \
            or tuple(meta.get("sites", ())) != SITES or tuple(meta.get("sexes", ())) != SEXES:
        raise WeightsError(f"{path} was made for another class order or metadata vocabulary "
                           f"than this code's. {RESTORE_HINT}")
    return manifest


def verify_file(weights_dir: Path, entry: dict) -> Path:
    """Checks that a weights file exists and has the manifest's sha256."""
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{path} is missing. {RESTORE_HINT}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} is corrupted or was replaced: its sha256 is {digest[:12]}…, "
                           f"the manifest expects {entry['sha256'][:12]}…. {RESTORE_HINT}")
    return path


def input_spec(manifest: dict) -> InputSpec:
    try:
        return InputSpec(**manifest["input"]["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"the manifest's input spec is unusable ({type(e).__name__}: {e}). {RESTORE_HINT}") from None


def age_scaler(manifest: dict) -> AgeScaler:
    return AgeScaler(**manifest["metadata"]["age_scaler"])


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as fp32 tensors (fp16 on disk)."""
    try:
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    except Exception as e:   # a file with the right checksum cannot fail here, but say so plainly
        raise WeightsError(f"{path} cannot be read as safetensors ({type(e).__name__}). {RESTORE_HINT}") from None


def load_member(path: Path, trunk: dict[str, torch.Tensor], fusion: str, arch: str,
                split_block: int) -> LesionClassifier:
    """One member: the shared trunk's tensors plus the member's upper stages and head."""
    model = LesionClassifier(fusion, arch=arch, pretrained=False, split_block=split_block)
    try:
        model.load_state_dict({**trunk, **_load_state(path)}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise WeightsError(f"{path} does not fit a {arch} '{fusion}' model split at blocks[{split_block}] "
                           f"({first[:160]}). {RESTORE_HINT}") from None
    return model.eval()


def load_models(weights_dir: Path = WEIGHTS_DIR) -> tuple[dict, dict[str, Ensemble]]:
    """The manifest and, per kind, its verified ensemble. Raises WeightsError naming the file
    (or manifest key) at fault and the fix."""
    manifest = load_manifest(weights_dir)
    try:
        arch = manifest["architecture"]["backbone"]
        split_block = int(manifest["trunk"]["split_block"])
        trunk = _load_state(verify_file(weights_dir, manifest["trunk"]))
        models = {}
        for k in MODEL_KEYS:
            entry = manifest["models"][k]
            members = [load_member(verify_file(weights_dir, m), trunk, entry["fusion"], arch, split_block)
                       for m in entry["members"]]
            models[k] = Ensemble(members).eval()
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{Path(weights_dir) / 'manifest.json'} lacks or mangles an entry "
                           f"({type(e).__name__}: {e}). {RESTORE_HINT}") from None
    return manifest, models


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
