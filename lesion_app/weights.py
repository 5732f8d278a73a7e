"""The bundled weights: manifest, checksum verification and model loading.

Everything inference needs (architecture, input spec, class order, metadata vocabulary,
age scaling, temperatures) is read from weights/manifest.json, never restated.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .metadata import AgeScaler
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
    if tuple(manifest.get("class_order", ())) != CLASSES \
            or tuple(manifest["metadata"]["sites"]) != SITES \
            or tuple(manifest["metadata"]["sexes"]) != SEXES:
        raise WeightsError(f"{path} was made for another class order or metadata vocabulary "
                           f"than this code's. {RESTORE_HINT}")
    return manifest


def verify_file(weights_dir: Path, entry: dict) -> Path:
    """Checks that a model file exists and has the manifest's sha256."""
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise WeightsError(f"{path} is missing. {RESTORE_HINT}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} is corrupted or was replaced: its sha256 is {digest[:12]}…, "
                           f"the manifest expects {entry['sha256'][:12]}…. {RESTORE_HINT}")
    return path


def input_spec(manifest: dict) -> InputSpec:
    return InputSpec(**manifest["input"]["spec"])


def age_scaler(manifest: dict) -> AgeScaler:
    return AgeScaler(**manifest["metadata"]["age_scaler"])


def load_model(weights_dir: Path, manifest: dict, key: str) -> LesionClassifier:
    """Verifies and loads one bundled model (fp16 on disk, fp32 in memory), in eval mode."""
    entry = manifest["models"][key]
    path = verify_file(weights_dir, entry)
    model = LesionClassifier(entry["fusion"], arch=manifest["architecture"]["backbone"],
                             pretrained=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    model.load_state_dict(state)
    return model.eval()


def load_models(weights_dir: Path = WEIGHTS_DIR) -> tuple[dict, dict[str, LesionClassifier]]:
    manifest = load_manifest(weights_dir)
    return manifest, {k: load_model(weights_dir, manifest, k) for k in MODEL_KEYS}


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
