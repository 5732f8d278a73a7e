"""The bundled weights: checksum verification and model loading.

weights/ holds one shared trunk (the frozen ImageNet lower stages) and, per kind, the
members of a cross-validated ensemble (each member's fine-tuned upper stages and head).
Everything inference needs (architecture, split point, input spec, class order, metadata
vocabulary, age scaling, temperatures, members and their sha256) is read from
weights/manifest.json (lesion_app.classifier.manifest.Manifest), never restated. Every file is checked
against its sha256 at load.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from .ensemble import Ensemble
from .manifest import MODEL_KEYS, RESTORE_HINT, WEIGHTS_DIR, Manifest, WeightsError
from .models import LesionClassifier

__all__ = ["MODEL_KEYS", "RESTORE_HINT", "WEIGHTS_DIR", "Manifest", "WeightsError", "load_manifest",
           "load_member", "load_models", "sha256_file", "torch_device", "verify_file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict:
    """The manifest as plain JSON data, checked as Manifest.load checks it (code reads Manifest)."""
    return Manifest.load(weights_dir).to_dict()


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


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as fp32 tensors (fp16 on disk)."""
    try:
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    except Exception as e:   # a file with the right checksum cannot fail here, but say so plainly
        raise WeightsError(f"{path} cannot be read as safetensors ({type(e).__name__}). {RESTORE_HINT}") from None


def load_member(path: Path, trunk: dict[str, torch.Tensor], head: str, arch: str,
                split_block: int) -> LesionClassifier:
    """One member: the shared trunk's tensors plus the member's upper stages and head."""
    model = LesionClassifier(head, arch=arch, pretrained=False, split_block=split_block)
    try:
        model.load_state_dict({**trunk, **_load_state(path)}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise WeightsError(f"{path} does not fit a {arch} '{head}' model split at blocks[{split_block}] "
                           f"({first[:160]}). {RESTORE_HINT}") from None
    return model.eval()


def load_models(weights_dir: Path = WEIGHTS_DIR) -> tuple[Manifest, dict[str, Ensemble]]:
    """The checked manifest and, per kind, its verified ensemble. Raises WeightsError naming
    the file (or manifest key) at fault and the fix."""
    manifest = Manifest.load(weights_dir)
    trunk = _load_state(verify_file(weights_dir, manifest.trunk))
    models = {}
    try:
        for k in MODEL_KEYS:
            members = [load_member(verify_file(weights_dir, m), trunk, manifest.head(k), manifest.backbone,
                                   manifest.split_block) for m in manifest.members(k)]
            models[k] = Ensemble(members).eval()
    except (KeyError, TypeError, ValueError) as e:   # e.g. a fusion name no model has
        raise WeightsError(f"{Path(weights_dir) / 'manifest.json'} lacks or mangles an entry "
                           f"({type(e).__name__}: {e}). {RESTORE_HINT}") from None
    return manifest, models


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
