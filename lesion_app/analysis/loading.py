"""Everything the app serves, built once from a weights folder and its manifest, and checked:
`load_served` reads both ensembles (their passes: lesion_app.classifier.passes), the lesion
segmenter, the OOD check, the shift score and the similar-cases archive, checks each file against
its sha256 and against what the members give, and returns them as one `Served`; or it raises
WeightsError naming the file at fault and the fix. An analysis loads nothing
(lesion_app.analysis.pipeline): it reads a Served.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..classifier.frozen import FrozenStages, reference_channels
from ..classifier.manifest import Manifest
from ..classifier.metadata import AgeScaler, unknown_row
from ..classifier.models import ARCH
from ..classifier.passes import Passes
from ..classifier.preprocess import InputSpec
from ..classifier.segmenter import LesionSegmenter
from ..classifier.weights import MODEL_KEYS, WEIGHTS_DIR, WeightsError, load_models, torch_device, verify_file
from ..evidence.archive import Archive
from ..evidence.ood import OODDetector
from ..evidence.shift import ShiftScore


@dataclass
class Served:
    """What an analysis serves: the checked manifest and what is read from it once (input spec, age
    scaling, the members' version and sha256, the prediction sets' thresholds), both ensembles'
    passes (with the shared trunk, the frozen stages and the segmenter), the width of the frozen
    ImageNet trunk that the OOD check, the shift score and a trunk-feature archive read, and each of
    those when the weights have it (and it was asked for)."""
    weights_dir: Path
    manifest: Manifest
    passes: Passes
    scaler: AgeScaler
    absent_row: torch.Tensor          # the 'nothing entered' metadata row: the Shapley values' baseline
    model_info: dict                  # the version and every member's sha256, as an analysis reports them
    set_thresholds: dict              # level -> kind -> the prediction sets' class thresholds ({}: none)
    reference_channels: int
    ood: OODDetector | None = None
    shift: ShiftScore | None = None
    archive: Archive | None = None

    @property
    def models(self) -> dict:
        return self.passes.models

    @property
    def spec(self) -> InputSpec:
        return self.passes.spec

    @property
    def device(self) -> torch.device:
        return self.passes.device

    @property
    def segmenter(self) -> LesionSegmenter | None:
        return self.passes.segmenter

    @property
    def archive_reads_trunk(self) -> bool:
        return self.archive is not None and self.archive.embedding == "trunk_mean"


def load_served(weights_dir: Path = WEIGHTS_DIR, device: torch.device | None = None,
                with_ood: bool = True) -> Served:
    """Everything an analysis serves from weights_dir, on device (default: CUDA when there is one).
    with_ood=False leaves out the OOD check and the shift score (train.release.fit_ood and fit_shift,
    which refit them). The frozen ImageNet trunk is loaded here when an analysis will need it."""
    weights_dir = Path(weights_dir)
    manifest, models = load_models(weights_dir)
    device = device or torch_device()
    for m in models.values():
        # Inference only (Grad-CAM needs activation grads, not weight grads); channels-last
        # convolutions run about twice as fast on CPU here.
        m.to(device, memory_format=torch.channels_last).requires_grad_(False)
    spec, scaler = manifest.input_spec, manifest.age_scaler
    temperature = {k: manifest.temperature(k) for k in MODEL_KEYS}
    shared = [m for m in models.values() if not m.whole_network]
    frozen = FrozenStages(shared[0].members[0] if shared else None, device)
    absent_row = torch.from_numpy(unknown_row(scaler))
    model_info, set_thresholds = manifest.model_info, manifest.set_thresholds
    # The reference trunk's width, from a member of its backbone (else from the ImageNet network itself).
    same = [m.members[0] for m in models.values() if m.members[0].arch == ARCH]
    channels = reference_channels(same[0] if same else frozen.load_imagenet())
    ood = load_ood(weights_dir, manifest, channels) if manifest.ood and with_ood else None
    archive = load_archive(weights_dir, manifest, models, channels) if manifest.archive else None
    segmenter = load_segmenter(weights_dir, manifest, device) if manifest.segmentation else None
    shift = load_shift(weights_dir, manifest, channels) if manifest.shift and with_ood else None
    passes = Passes(models, frozen, segmenter, spec, temperature, device)
    served = Served(weights_dir, manifest, passes, scaler, absent_row, model_info, set_thresholds, channels,
                    ood, shift, archive)
    if frozen.needs_imagenet and (ood or shift or segmenter or served.archive_reads_trunk):
        frozen.load_imagenet()   # at start rather than in the first analysis
    return served


def load_ood(weights_dir: Path, manifest: Manifest, channels: int) -> OODDetector:
    return _load_on_trunk(OODDetector, weights_dir, manifest.ood, channels, " (conv_stem..blocks[4], whatever the "
                          "members)", "restore the shipped one (it serves any members), or refit it on those features")


def load_shift(weights_dir: Path, manifest: Manifest, channels: int) -> ShiftScore:
    return _load_on_trunk(ShiftScore, weights_dir, manifest.shift, channels, "",
                          "refit it with python -m train.release.fit_shift")


def _load_on_trunk(kind, weights_dir: Path, entry: dict, channels: int, trunk: str, fix: str):
    """A Gaussian fitted on the frozen ImageNet trunk's features (the OOD check, the shift score),
    checked against the trunk's width; WeightsError naming the fix otherwise."""
    path = verify_file(weights_dir, entry)
    fitted = kind.load(path)
    if fitted.mean.shape[0] != channels:
        raise WeightsError(f"{path} was fitted on {fitted.mean.shape[0]} features, but the frozen ImageNet trunk it "
                           f"reads{trunk} gives {channels}: {fix}")
    return fitted


def load_archive(weights_dir: Path, manifest: Manifest, models: dict, channels: int) -> Archive:
    entry = manifest.archive
    path = verify_file(weights_dir, entry)
    archive = Archive.load(path)
    if archive.embedding != entry.get("embedding") or archive.vectors.shape[1] != entry.get("dims"):
        raise WeightsError(f"{path} holds {archive.embedding} vectors of {archive.vectors.shape[1]} values, "
                           f"the manifest says {entry.get('embedding')} of {entry.get('dims')}: rebuild it "
                           "with python -m train.release.archive")
    ens = models.get(archive.embedding)   # an ensemble's: its members' pooled features side by side
    raw = len(ens.members) * ens.members[0].backbone.num_features if ens is not None else channels
    if archive.projection.mean.shape[0] != raw:
        raise WeightsError(f"{path} embeds {archive.projection.mean.shape[0]} values of {archive.embedding} "
                           f"features, but these weights give {raw}: it was built for other members; rebuild it "
                           "with python -m train.release.archive")
    return archive


def load_segmenter(weights_dir: Path, manifest: Manifest, device: torch.device) -> LesionSegmenter:
    path = verify_file(weights_dir, manifest.segmentation)
    try:
        return LesionSegmenter.load(path).to(device).requires_grad_(False)
    except (SafetensorError, RuntimeError, ValueError, KeyError) as e:   # not one, or another shape
        raise WeightsError(f"{path} is not a lesion segmenter this code can run ({type(e).__name__}): "
                           "restore it, or retrain it with python -m train.fitting.segmentation and ship it "
                           "with python -m train.release.segmenter") from None
