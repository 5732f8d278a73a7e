"""The bundled weights: checksum verification and model loading.

weights/ holds, per kind, the members of a cross-validated ensemble: either each member's
fine-tuned upper stages and head over one shared trunk (the frozen ImageNet lower stages,
trunk.safetensors), or each member's whole network (no trunk file is needed when every member
is one). Everything inference needs (architecture, what each ensemble's files hold, input spec,
class order, metadata vocabulary, age scaling, temperatures, members and their sha256) is read
from weights/manifest.json (lesion_app.classifier.manifest.Manifest), never restated. Every file
is checked against its sha256 at load, and against the manifest's description of it (held_split).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from .ensemble import Ensemble
from .manifest import MODEL_KEYS, RESTORE_HINT, WEIGHTS_DIR, Manifest, WeightsError
from .models import WHOLE_NETWORK, LesionClassifier

__all__ = ["MODEL_KEYS", "RESTORE_HINT", "WEIGHTS_DIR", "Manifest", "WeightsError", "held_split", "load_manifest",
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


def held_split(state: dict[str, torch.Tensor]) -> int | str | None:
    """What a member's state dict holds, read from its keys: WHOLE_NETWORK when it has its own
    stem (conv_stem), else the first backbone block it holds (its upper stages start there: 0 means
    everything but the stem), None when it holds no block (nothing to tell from the keys)."""
    if any(k.startswith("backbone.conv_stem.") for k in state):
        return WHOLE_NETWORK
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("backbone.blocks.")}
    return min(blocks) if blocks else None


def _describe(split: int | str) -> str:
    return ("a whole network (its own conv_stem..conv_head, no shared trunk)" if split == WHOLE_NETWORK
            else f"the upper stages from blocks[{split}] and the head (over the shared trunk)")


def load_member(path: Path, trunk: dict[str, torch.Tensor] | None, head: str, arch: str,
                split_block: int | str, kind: str = "") -> LesionClassifier:
    """One member: the shared trunk's tensors plus the member's upper stages and head, or (split_block
    WHOLE_NETWORK, trunk None) the member's whole network. WeightsError naming the file when it holds
    something else than the manifest says (models.<kind>.split_block) or does not fit the model."""
    state = _load_state(path)
    held = held_split(state)
    if held is not None and held != split_block:
        where = f"models.{kind}.split_block" if kind else "its ensemble's split_block"
        bundle = "rebundle the run with python -m train.release.bundle"
        fix = (f"describe its ensemble as {WHOLE_NETWORK!r} ({where}; no trunk needed), or {bundle}"
               if held == WHOLE_NETWORK else
               f"describe its ensemble by split_block {held} ({where}) with a trunk of that split, or {bundle}"
               if held else f"{bundle}, which ships members trained from blocks[0] as whole networks "
                            "(the frozen stem folded in)")
        raise WeightsError(f"{path} holds {_describe(held)}, but the manifest describes it as "
                           f"{_describe(split_block)}: {fix}. {RESTORE_HINT}")
    model = LesionClassifier(head, arch=arch, pretrained=False, split_block=split_block)
    try:
        model.load_state_dict(state if split_block == WHOLE_NETWORK else {**trunk, **state}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        shape = "whole network" if split_block == WHOLE_NETWORK else f"model split at blocks[{split_block}]"
        raise WeightsError(f"{path} does not fit a {arch} '{head}' {shape} "
                           f"({first[:160]}). {RESTORE_HINT}") from None
    return model.eval()


def load_models(weights_dir: Path = WEIGHTS_DIR) -> tuple[Manifest, dict[str, Ensemble]]:
    """The checked manifest and, per kind, its verified ensemble. Raises WeightsError naming
    the file (or manifest key) at fault and the fix. The trunk file is read only when some
    member runs on it."""
    manifest = Manifest.load(weights_dir)
    trunk = _load_state(verify_file(weights_dir, manifest.trunk)) if manifest.needs_trunk else None
    models = {}
    try:
        for k in MODEL_KEYS:
            split = manifest.member_split(k)
            members = [load_member(verify_file(weights_dir, m), trunk, manifest.head(k), manifest.backbone,
                                   split, k) for m in manifest.members(k)]
            models[k] = Ensemble(members).eval()
    except (KeyError, TypeError, ValueError) as e:   # e.g. a fusion name no model has
        raise WeightsError(f"{Path(weights_dir) / 'manifest.json'} lacks or mangles an entry "
                           f"({type(e).__name__}: {e}). {RESTORE_HINT}") from None
    return manifest, models


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
