"""One analysis as a pipeline: image(s) + metadata -> the passes -> the features an analysis keeps ->
each piece of evidence -> an Analysis. `analyse` shows the order; each step is a call into the room
that owns it (the passes in lesion_app.classifier, each piece of evidence in lesion_app.evidence).

It reads what lesion_app.analysis.loading built (a Served) and loads nothing; the metadata arrive
parsed (lesion_app.classifier.metadata.Metadata) and are not parsed again. The passes run once per
image; the evidence that depends on the metadata (`metadata_side`) runs again, on the kept features,
when only the metadata or the heatmap choice change (`with_metadata`). The caller holds the lock over
the models (lesion_app.analysis.predictor.Predictor does).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..classifier.metadata import Metadata
from ..classifier.passes import ImageFeatures, combined
from ..classifier.preprocess import fit_to_aspect, unnormalise
from ..classifier.vocab import CLASSES
from ..evidence.archive import SimilarCases, SimilarQuery, image_embedding
from ..evidence.conformal import set_classes, sets_by_level
from ..evidence.gradcam import DEFAULT_CAM_METHOD, FINE_STAGE_BLOCK, TOP_TWO
from ..evidence.heatmaps import check_heatmap, heatmap_target, model_heatmaps
from ..evidence.lesion import lesion_findings
from ..evidence.ood import OODDetector
from ..evidence.shapley import coalition_rows, shapley_result, shapley_values
from ..evidence.shift import ShiftReading
from ..evidence.skin_tone import SkinTone, skin_tone
from ..evidence.what_if import sweep_rows, what_if
from .analysis import Analysis, ModelResult, probabilities_dict
from .loading import Served

MAX_IMAGES = 4   # images of one lesion that one analysis combines


def analyse(s: Served, images: list[Image.Image], repeated: list[int], metadata: Metadata,
            cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
            similar: SimilarQuery = SimilarQuery()) -> Analysis:
    """images (1 to MAX_IMAGES distinct images of one lesion: checked_images) + metadata -> Analysis:
    1. the classifier's passes over the images, once, and the features an analysis keeps;
    2. the evidence from the images alone: the image-only model and its heatmaps, the OOD check,
       how unlike the training images, the skin tone;
    3. the evidence with the metadata: the fusion model over every Shapley coalition and what-if
       row, its heatmaps, the prediction sets, the lesion's outline measures, the similar cases.
    repeated: how often each image given more than once was given (distinct_images)."""
    x = torch.stack([s.passes.image_tensor(im) for im in images])
    meta = torch.from_numpy(metadata.encode(s.scaler))
    features, reference = run_passes(s, x)
    side = image_side(s, features, reference, x, images[0], meta, cam_class, cam_method)
    return metadata_side(s, features, side, metadata, cam_class, cam_method, similar, repeated)


def with_metadata(s: Served, previous: Analysis, metadata: Metadata, cam_class: str | None = None,
                  cam_method: str = DEFAULT_CAM_METHOD, similar: SimilarQuery = SimilarQuery()) -> Analysis:
    """The same image's analysis for other metadata (or another heatmap class or method), without
    running the backbones again: step 3 of `analyse` on the kept features, with the image-only
    heatmaps drawn again only when their target or method changed."""
    f, image_only = previous.features, previous.image_only
    target = heatmap_target(cam_class, image_only.probabilities)
    if (*target, cam_method) != (image_only.cam_class, image_only.cam_versus, image_only.cam_method):
        image_only = ModelResult(image_only.probabilities, *heatmaps(s, f, "image_only", target, None, cam_method))
    side = ImageSide(previous.images, image_only,
                     [w for w in previous.warnings   # the lesion's own warnings are recomputed
                      if previous.lesion is None or w not in previous.lesion.warnings],
                     previous.dermoscopic, previous.shift, previous.skin_tone)
    return metadata_side(s, f, side, metadata, cam_class, cam_method, similar, previous.repeated)


# ----------------------------------------------------------------------------- 1. the passes

def run_passes(s: Served, x: torch.Tensor) -> tuple[ImageFeatures, torch.Tensor | None]:
    """(what an analysis keeps of the passes over images x (B, 3, H, W), the frozen ImageNet trunk's
    output for every flip view when the OOD check, the shift score or the archive read it). One pass
    of the frozen stages (the shared trunk, each image's outline, the fine heatmaps' stage), then the
    members' upper stages with their last block kept; the similar-cases query from the same passes."""
    n = len(x)
    fp = s.passes.frozen_pass(x, outlines=True, fine_block=FINE_STAGE_BLOCK,
                              reference=s.ood is not None or s.shift is not None or s.archive_reads_trunk)
    per_image, kept = s.passes.upper_pass(x, fp.low, fp.views, keep=True)
    low = fp.low
    unflipped = None if low is None else low.view(n, len(low) // n, *low.shape[1:])[:, 0].clone()
    embedding = (image_embedding(s.archive.embedding, fp.reference, per_image, n).mean(0, keepdim=True)
                 if s.archive is not None else None)
    whole = any(m.whole_network for m in s.models.values())
    features = ImageFeatures(unflipped, {k: combined(p) for k, p in per_image.items()}, kept=kept,
                             embedding=embedding,
                             outlines=fp.outlines, stage=None if fp.stage is None else fp.stage.clone(),
                             images=x.to(s.device).contiguous(memory_format=torch.channels_last)
                             if whole else None)
    return features, fp.reference


# ----------------------------------------------------------------------------- 2. the images alone

@dataclass
class ImageSide:
    """What an analysis finds from its image(s) alone, whatever the metadata: each image as the
    models saw it, the image-only model's answer and heatmaps, the OOD check's warnings, and the
    first image's likeness to the training images and skin tone."""
    images: list[np.ndarray]          # (H, W, 3) uint8 each
    image_only: ModelResult
    warnings: list[str]
    dermoscopic: bool = True          # False when the OOD check flagged the first image
    shift: ShiftReading | None = None
    skin_tone: SkinTone | None = None


def image_side(s: Served, f: ImageFeatures, reference: torch.Tensor | None, x: torch.Tensor,
               first: Image.Image, meta: torch.Tensor, cam_class: str | None, cam_method: str) -> ImageSide:
    n = len(x)
    image_only = s.passes.head_probabilities("image_only", f.pooled["image_only"], meta[None])[0].cpu().numpy()
    rgb = unnormalise(x, s.spec)  # what the models saw, for the colour check and display
    warnings, flagged = s.ood.image_warnings(reference, rgb, n) if s.ood is not None else ([], False)
    shift = s.shift.reading(OODDetector.trunk_features(reference, n)[0]) if s.shift is not None else None
    tone = None
    if s.manifest.skin_tone:   # on the input before colour constancy, outside the outline
        tone = skin_tone(np.asarray(fit_to_aspect(first, s.spec)), f.outlines[0] if f.outlines else None,
                         s.manifest.skin_tone)
    p = probabilities_dict(image_only)
    result = ModelResult(p, *heatmaps(s, f, "image_only", heatmap_target(cam_class, p), None, cam_method))
    shown = (rgb.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return ImageSide(list(shown), result, warnings, not flagged, shift, tone)


# ----------------------------------------------------------------------------- 3. with the metadata

def metadata_side(s: Served, f: ImageFeatures, side: ImageSide, metadata: Metadata, cam_class: str | None,
                  cam_method: str, similar: SimilarQuery, repeated: list[int]) -> Analysis:
    """The fusion model's probabilities, Shapley values, heatmaps and what-if for one metadata row,
    the prediction sets, the lesion's findings and the similar cases (filtered by the entered sex
    and site), with the image side, as one Analysis."""
    meta = torch.from_numpy(metadata.encode(s.scaler))
    # The 8 coalitions (the last has everything entered) and the what-if rows, one head pass.
    rows = coalition_rows(meta, s.absent_row)
    sweeps = sweep_rows(metadata, s.scaler)
    probs = s.passes.head_probabilities("fusion", f.pooled["fusion"].expand(-1, len(rows) + len(sweeps), -1, -1),
                                        torch.cat([rows, sweeps])).cpu().numpy()
    by_coalition, swept = probs[:len(rows)], probs[len(rows):]
    fusion = by_coalition[-1]
    phi = shapley_values(by_coalition)
    top = CLASSES[int(fusion.argmax())]
    shap = shapley_result(by_coalition, phi, top if cam_class in (None, TOP_TWO) else cam_class)
    fusion_p = probabilities_dict(fusion)
    fusion_result = ModelResult(fusion_p, *heatmaps(s, f, "fusion", heatmap_target(cam_class, fusion_p), meta[None],
                                                    cam_method))
    image_only_p = np.array([side.image_only.probabilities[c] for c in CLASSES])
    sets = sets_by_level({"fusion": fusion[None], "image_only": image_only_p[None]}, s.set_thresholds)
    lesion = None if f.outlines is None else lesion_findings(
        f.outlines[0], side.images[0], {"fusion": fusion_result.cam, "image_only": side.image_only.cam},
        s.manifest.segmentation, not side.dermoscopic, measured=f.measured)
    return Analysis(
        lesion=lesion, image=side.images[0], extra_images=list(side.images[1:]), repeated=list(repeated),
        warnings=list(side.warnings) + (lesion.warnings if lesion is not None else []), fusion=fusion_result,
        image_only=side.image_only, shap=shap,
        top_shap=shapley_result(by_coalition, phi, top) if shap.cls != top else None,
        no_metadata_top=CLASSES[int(by_coalition[0].argmax())],
        metadata=metadata._asdict(),
        similar_cases=similar_cases(s, f, similar, metadata.sex, metadata.site),
        what_if=what_if(swept), model_info=s.model_info, features=f, shift=side.shift,
        skin_tone=side.skin_tone, dermoscopic=side.dermoscopic, prediction_sets=set_classes(sets))


# ----------------------------------------------------------------------------- steps others call too

def heatmaps(s: Served, f: ImageFeatures, key: str, target: tuple[str, str | None], meta: torch.Tensor | None,
             method: str):
    """One ensemble's heatmaps for target from the kept features (lesion_app.evidence.heatmaps)."""
    return model_heatmaps(s.models[key], key, f, target, meta, method, (s.spec.height, s.spec.width), s.device)


def similar_cases(s: Served, f: ImageFeatures, query: SimilarQuery, sex: str, site: str) -> SimilarCases | None:
    """The archive's most similar lesions for an analysed image (None without an archive)."""
    if s.archive is None:
        return None
    return s.archive.similar(f.embedding, query, sex=sex, site=site)


def contrast_map(s: Served, analysis: Analysis) -> tuple[np.ndarray, str, str] | None:
    """The fusion model's contrastive heatmap of the first image for its own top two classes a
    and b (what raised a's score over b's), with the analysis's heatmap method, from its kept
    features (heads and upper stages only): (map in [0, 1] of size (H, W), a, b). The analysis's
    own fusion map when it is that one already. None when the analysis kept no features or
    the map is empty (no region raised a's score over b's)."""
    r = analysis.fusion
    a, b = heatmap_target(TOP_TWO, r.probabilities)
    if (r.cam_class, r.cam_versus) == (a, b):
        return None if r.cam_empty else (r.cam, a, b)
    if analysis.features is None:
        return None
    md = analysis.metadata   # parsed again, as any Analysis a caller built may hold raw values
    meta = torch.from_numpy(Metadata.parse(md.get("age"), md.get("sex"), md.get("site")).encode(s.scaler))
    heat, _, empty, *_ = heatmaps(s, analysis.features, "fusion", (a, b), meta[None], r.cam_method)
    return None if empty else (heat, a, b)


def checked_images(image: Image.Image | list[Image.Image], cam_class: str | None,
                   cam_method: str) -> tuple[list[Image.Image], list[int]]:
    """An analysis's images, one or a list of 1 to MAX_IMAGES of one lesion, with pixel-identical
    repeats dropped (distinct_images); ValueError for another number of images, an unknown heatmap
    class or method (lesion_app.evidence.heatmaps.check_heatmap)."""
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if not 1 <= len(images) <= MAX_IMAGES:
        raise ValueError(f"analyze takes 1 to {MAX_IMAGES} images of one lesion, not {len(images)}")
    images, repeated = distinct_images(images)
    check_heatmap(cam_class, cam_method)
    return images, repeated


def distinct_images(images: list[Image.Image]) -> tuple[list[Image.Image], list[int]]:
    """The images with pixel-identical repeats dropped (the first of each kept, in order),
    whatever their file name or path, and how often each repeated image was given."""
    first: dict[bytes, int] = {}
    distinct, given = [], []
    for im in images:
        key = hashlib.blake2b(f"{im.mode} {im.size}".encode() + im.tobytes(), digest_size=32).digest()
        if key in first:
            given[first[key]] += 1
        else:
            first[key] = len(distinct)
            distinct.append(im)
            given.append(1)
    return distinct, [g for g in given if g > 1]
