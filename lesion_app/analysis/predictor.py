"""The one inference path: image + metadata -> calibrated probabilities of both ensembles.

The UI, the /report API and the evaluation CLI all go through `Predictor`. It serves both kinds
of member (lesion_app.classifier.ensemble): members over one shared frozen trunk, and
whole-network members, each ensemble either kind.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..classifier.metadata import encode_metadata, parse_age, parse_choice
from ..classifier.passes import ImageFeatures, combined
from ..classifier.preprocess import fit_to_aspect, unnormalise
from ..classifier.vocab import CLASSES, SEXES, SITES
from ..classifier.weights import MODEL_KEYS, WEIGHTS_DIR, WeightsError
from ..evidence.archive import SimilarCases, SimilarQuery, raw_embedding
from ..evidence.conformal import prediction_sets as conformal_sets
from ..evidence.gradcam import CAM_METHODS, DEFAULT_CAM_METHOD, FINE_STAGE_BLOCK, TOP_TWO, gradcam, gradcam_from_kept
from ..evidence.lesion import lesion_findings
from ..evidence.ood import OODDetector
from ..evidence.shapley import PLAYERS, ShapleyResult, coalition_rows, shapley_values
from ..evidence.skin_tone import skin_tone
from .analysis import Analysis, ModelResult, probabilities_dict
from .loading import Served, load_served


AGE_SWEEP = tuple(range(0, 91, 5))   # the what-if's ages, years
MAX_IMAGES = 4   # images of one lesion that one analysis combines
ADDITIVE_HEADS = ("image_only", "concat", "late")   # class-score gradients do not depend on the metadata


class Predictor:
    """Serves the bundled ensembles, loaded once (lesion_app.analysis.loading); predicts with flip
    test-time augmentation.

    The frozen trunk runs once per image for all members over it (both ensembles, as shipped);
    each member then runs only its upper stages and head. Whole-network members run their whole
    network on the flip views, and their heatmaps run it once more on the unflipped view. The
    segmenter, the OOD check and a trunk-feature archive read the frozen ImageNet stages they were
    fitted on (lesion_app.classifier.frozen): from the shared trunk's pass when it covers them (as
    shipped, at no cost), else one extra pass of the frozen stages per analysis, at most a trunk
    pass (about 0.05-0.06 s on the 2-core CPU). Thread-safe by construction: one lock covers
    every use of the shared modules (Grad-CAM's hooks record every pass through them).
    """

    def __init__(self, weights_dir: Path = WEIGHTS_DIR, device: torch.device | None = None,
                 with_ood: bool = True, served: Served | None = None):
        """Serves `served`, or what load_served builds from weights_dir; with_ood=False skips the
        bundled OOD check and shift score (train.release.fit_ood and fit_shift, which refit them)."""
        self.served = served or load_served(weights_dir, device, with_ood)
        self.passes = self.served.passes
        self._lock = threading.RLock()

    # What the toolbox's users read (train/, the page, the tests): the served pieces.
    weights_dir = property(lambda self: self.served.weights_dir)
    manifest = property(lambda self: self.served.manifest)
    models = property(lambda self: self.served.models)
    device = property(lambda self: self.served.device)
    spec = property(lambda self: self.served.spec)
    scaler = property(lambda self: self.served.scaler)
    temperature = property(lambda self: self.passes.temperature)
    frozen = property(lambda self: self.passes.frozen)
    absent_row = property(lambda self: self.served.absent_row)
    model_info = property(lambda self: self.served.model_info)
    set_thresholds = property(lambda self: self.served.set_thresholds)
    reference_channels = property(lambda self: self.served.reference_channels)
    ood = property(lambda self: self.served.ood)
    shift = property(lambda self: self.served.shift)
    archive = property(lambda self: self.served.archive)
    segmenter = property(lambda self: self.served.segmenter)

    @property
    def trunk(self) -> torch.nn.Module:
        """What trunk_features runs, as a module whose `lower` runs it (lesion_app.classifier.passes)."""
        return self.passes.trunk

    def encode(self, age, sex, site) -> torch.Tensor:
        """One encoded metadata row; raises MetadataError on invalid values."""
        return torch.from_numpy(encode_metadata(age, sex, site, self.scaler))

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        return self.passes.image_tensor(image)

    @property
    def has_shared_trunk(self) -> bool:
        """Whether some member runs on the shared trunk (else every member holds its whole network)."""
        return self.passes.has_shared_trunk

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> every flip view, (B * V, 3, H, W), channels-last on the device."""
        return self.passes.views(x)

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk's output for every flip view (lesion_app.classifier.passes)."""
        return self.passes.trunk_features(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen ImageNet trunk's output for every flip view (lesion_app.classifier.passes)."""
        return self.passes.frozen_features(x)

    def trunk_and_outlines(self, x: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray] | None, torch.Tensor | None]:
        """trunk_features(x); with a segmenter, each image's lesion outline (bool (H, W) at the
        input size; the largest region, holes filled); and each image's unflipped view's trunk stage
        FINE_STAGE_BLOCK (B, C, 2h, 2w), for the fine heatmaps (None when the shared trunk stops
        before it, or there is none): all from the same trunk pass."""
        p = self.passes.frozen_pass(x, outlines=True, reference=not self.has_shared_trunk, fine_block=FINE_STAGE_BLOCK)
        return (p.low if p.low is not None else p.reference), p.outlines, p.stage

    def pooled_features(self, x: torch.Tensor, low: torch.Tensor | None = None,
                        views: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per kind (M, B, V, F): each member's pooled features of the flip views (lesion_app.classifier.passes)."""
        return self.passes.pooled_features(x, low, views)

    def head_probabilities(self, key: str, pooled: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from pooled member features and metadata rows (lesion_app.classifier.passes)."""
        return self.passes.head_probabilities(key, pooled, meta)

    def prediction_sets(self, probs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Per level and kind, (N, classes) bool class-conditional conformal sets of calibrated
        probabilities (N, classes); empty when the manifest has no thresholds."""
        return {level: {k: conformal_sets(probs[k], q[k]) for k in probs if k in q}
                for level, q in self.set_thresholds.items()}

    def probabilities(self, images: list[Image.Image], metadata: list[tuple],
                      knn: bool = False) -> dict[str, np.ndarray]:
        """Batch prediction: per kind an (N, 7) array of calibrated probabilities; knn=True adds
        "knn", the archive's vote over each image's DEFAULT_K most similar lesions (no filters),
        when these weights have an archive."""
        x = torch.stack([self.image_tensor(im) for im in images])
        meta = torch.stack([self.encode(*m) for m in metadata])
        with self._lock:
            f = self.passes.frozen_pass(x, reference=knn and self.served.archive_reads_trunk)
            pooled = self.pooled_features(x, f.low, f.views)
            out = {k: self.head_probabilities(k, pooled[k], meta).cpu().numpy() for k in MODEL_KEYS}
            if knn and self.archive is not None:
                raw = self.embedding(f.reference, pooled, len(x))
                rows, _ = self.archive.search(self.archive.project(raw), SimilarQuery().k)
                out["knn"] = self.archive.vote_of(rows)
            return out

    def lesion_masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Each image's lesion outline as a bool mask at the image's own size (what `evaluate
        --masks-out` writes): the 4 flip views' maps averaged, as an analysis outlines a lesion.
        WeightsError when these weights have no segmenter."""
        if self.segmenter is None:
            raise WeightsError("these weights have no lesion segmenter (python -m train.release.segmenter)")
        with self._lock:
            return self.passes.lesion_masks(images)

    def lesion_probabilities(self, lesions: list[list[Image.Image]], metadata: list[tuple],
                             knn: bool = False) -> dict[str, np.ndarray]:
        """Like `probabilities`, one row per lesion: each ensemble averages its logits over all of
        a lesion's images and flip views (then divides by its temperature and applies softmax);
        "knn" votes with the lesion's mean embedding."""
        flat = [im for images in lesions for im in images]
        x = torch.stack([self.image_tensor(im) for im in flat])
        meta = torch.stack([self.encode(*m) for m in metadata])
        starts = np.cumsum([0] + [len(images) for images in lesions])
        with self._lock:
            f = self.passes.frozen_pass(x, reference=knn and self.served.archive_reads_trunk)
            pooled = self.pooled_features(x, f.low, f.views)
            out = {k: [] for k in MODEL_KEYS}
            for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
                for k in MODEL_KEYS:
                    out[k].append(self.head_probabilities(k, combined(pooled[k][:, a:b]), meta[i:i + 1]))
            out = {k: torch.cat(v).cpu().numpy() for k, v in out.items()}
            if knn and self.archive is not None:
                raw = self.embedding(f.reference, pooled, len(x))
                lesion_raw = torch.cat([raw[a:b].mean(0, keepdim=True) for a, b in zip(starts[:-1], starts[1:])])
                rows, _ = self.archive.search(self.archive.project(lesion_raw), SimilarQuery().k)
                out["knn"] = self.archive.vote_of(rows)
            return out

    def embedding(self, low: torch.Tensor | None, pooled: dict[str, torch.Tensor], n_images: int) -> torch.Tensor:
        """The archive's raw embedding of n_images images from their frozen trunk output (all flip
        views: frozen_features; None will do unless the archive embeds trunk features) and pooled
        member features: no network pass of its own."""
        trunk = None if low is None else OODDetector.trunk_features(low, n_images)
        return raw_embedding(self.archive.embedding, trunk, {k: v.cpu() for k, v in pooled.items()})

    def similar_cases(self, features: ImageFeatures, query: SimilarQuery, sex: str, site: str) -> SimilarCases | None:
        """The archive's most similar lesions for an analysed image (None without an archive)."""
        if self.archive is None:
            return None
        return self.archive.similar(features.embedding, query, sex=sex, site=site)

    def analyze(self, image: Image.Image | list[Image.Image], age=None, sex=None, site=None,
                cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
                similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """Both ensembles' probabilities, heatmaps and the exact Shapley values of the metadata.

        image: one image, or a list of 1 to MAX_IMAGES images of the same lesion: each ensemble
        then averages its logits over all of them (and their flip views), so the probabilities,
        prediction sets, Shapley values, what-if and similar cases describe the lesion, while
        the heatmaps and the OOD check are per image.
        cam_class: the class whose heatmaps (and Shapley values) to show; by default each
        heatmap shows its own model's top class and the Shapley values the fusion top class;
        TOP_TWO: each heatmap shows its own model's top class rather than its second (a
        contrastive map), the Shapley values the fusion top class.
        cam_method: a key of lesion_app.evidence.gradcam.CAM_METHODS (Grad-CAM by default).
        similar: how many similar archive cases to return, and their filters.
        The result keeps the image's features (in memory) for `with_metadata`.
        Raises MetadataError for invalid metadata.
        """
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not 1 <= len(images) <= MAX_IMAGES:
            raise ValueError(f"analyze takes 1 to {MAX_IMAGES} images of one lesion, not {len(images)}")
        images, repeated = distinct_images(images)
        self._check_cam(cam_class, cam_method)
        meta = self.encode(age, sex, site)
        x = torch.stack([self.image_tensor(im) for im in images])
        n = len(x)
        with self._lock:
            # The frozen stages' only run for these images (the shared trunk, and what the segmenter,
            # the OOD check and the archive read).
            fp = self.passes.frozen_pass(x, outlines=True, fine_block=FINE_STAGE_BLOCK,
                                        reference=self.ood is not None or self.shift is not None or self.served.archive_reads_trunk)
            per_image, kept = self.passes.upper_pass(x, fp.low, fp.views, keep=True)
            low = fp.low
            unflipped = None if low is None else low.view(n, len(low) // n, *low.shape[1:])[:, 0].clone()
            embedding = (self.embedding(fp.reference, per_image, n).mean(0, keepdim=True)
                         if self.archive is not None else None)
            whole = any(m.whole_network for m in self.models.values())
            features = ImageFeatures(unflipped, {k: combined(p) for k, p in per_image.items()}, kept=kept,
                                     embedding=embedding,
                                     outlines=fp.outlines, stage=None if fp.stage is None else fp.stage.clone(),
                                     images=x.to(self.device).contiguous(memory_format=torch.channels_last)
                                     if whole else None)
            image_only = self.head_probabilities("image_only", features.pooled["image_only"], meta[None])[0]
            image_only = image_only.cpu().numpy()
            rgb = unnormalise(x, self.spec)  # what the models saw, for the colour check and display
            warnings = []
            if self.ood is not None:
                trunk = OODDetector.trunk_features(fp.reference, n)
                for i in range(n):
                    w = self.ood.warning(trunk[i], rgb[i:i + 1])
                    warnings += [w if n == 1 else f"Image {i + 1} of {n}: {w}"] if w else []
                    features.unlike_dermoscopy |= i == 0 and w is not None
            if self.shift is not None:
                features.shift = self.shift.reading(OODDetector.trunk_features(fp.reference, n)[0])
            if self.manifest.skin_tone:   # on the input before colour constancy, outside the outline
                features.skin_tone = skin_tone(np.asarray(fit_to_aspect(images[0], self.spec)),
                                               fp.outlines[0] if fp.outlines else None, self.manifest.skin_tone)
            image_only_p = probabilities_dict(image_only)
            image_only_result = ModelResult(image_only_p, *self._cam(
                features, "image_only", heatmap_target(cam_class, image_only_p), None, cam_method))
            shown = (rgb.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            return self._fusion_side(features, list(shown), image_only_result, warnings, meta,
                                     (age, sex, site), cam_class, cam_method, similar, repeated)

    def with_metadata(self, previous: Analysis, age=None, sex=None, site=None,
                      cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
                      similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """The same image's analysis for other metadata (or another heatmap class or method),
        without running the backbones again: only the fusion heads, and heatmaps not already
        kept from the kept trunk output (upper stages only)."""
        self._check_cam(cam_class, cam_method)
        meta = self.encode(age, sex, site)
        f = previous.features
        with self._lock:
            image_only = previous.image_only
            target = heatmap_target(cam_class, image_only.probabilities)
            if (*target, cam_method) != (image_only.cam_class, image_only.cam_versus, image_only.cam_method):
                image_only = ModelResult(image_only.probabilities,
                                         *self._cam(f, "image_only", target, None, cam_method))
            image_warnings = [w for w in previous.warnings   # the lesion's own warnings are recomputed
                              if previous.lesion is None or w not in previous.lesion.warnings]
            return self._fusion_side(f, previous.images, image_only, image_warnings, meta,
                                     (age, sex, site), cam_class, cam_method, similar, previous.repeated)

    def contrast_map(self, analysis: Analysis) -> tuple[np.ndarray, str, str] | None:
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
        md = analysis.metadata
        meta = self.encode(md.get("age"), md.get("sex"), md.get("site"))
        with self._lock:
            heat, _, empty, *_ = self._cam(analysis.features, "fusion", (a, b), meta[None], r.cam_method)
        return None if empty else (heat, a, b)

    def _check_cam(self, cam_class, cam_method):
        if cam_class is not None and cam_class not in (*CLASSES, TOP_TWO):
            raise ValueError(f"cam_class must be one of {CLASSES} or {TOP_TWO!r}")
        if cam_method not in CAM_METHODS:
            raise ValueError(f"cam_method must be one of {list(CAM_METHODS)}")

    def _cam(self, f: ImageFeatures, key: str, target: tuple[str, str | None], meta, method: str) -> tuple:
        """(heatmap of the first image, class, empty, method, [(heatmap, empty) of each further
        image], versus) for target (class, the class it is contrasted with or None). Methods that
        target only the members' last activation start from their last block outputs kept from the
        prediction (conv_head, pooling and heads only); the fine methods from the kept trunk output and stage (the members' upper
        stages once more), or for whole-network members from the kept image. Maps of heads
        whose gradients do not depend on the metadata (image-only, and additive fusion) are reused
        per target and method."""
        ens = self.models[key]
        cls, versus = target
        cache_key = (key, cls, versus, method)
        reusable = ens.head_kind in ADDITIVE_HEADS
        if reusable and cache_key in f.cams:
            maps = f.cams[cache_key]
        else:
            args = (None if meta is None else meta.to(self.device), CLASSES.index(cls),
                    (self.spec.height, self.spec.width), method, None if versus is None else CLASSES.index(versus))
            if f.kept is not None and not CAM_METHODS[method].trunk_stages:
                # The members' last block outputs were kept from the prediction: no block runs again.
                kept = f.kept[key]
                maps = [gradcam_from_kept(ens, kept[:, i:i + 1], *args) for i in range(kept.shape[1])]
            else:
                start = f.images if ens.whole_network else f.low
                stage = None if ens.whole_network else f.stage
                maps = [gradcam(ens, start[i:i + 1], *args, stage=None if stage is None else stage[i:i + 1])
                        for i in range(len(start))]
            if reusable:
                f.cams[cache_key] = maps
        (heat, empty), rest = maps[0], maps[1:]
        return heat, cls, empty, method, list(rest), versus

    def _fusion_side(self, f: ImageFeatures, images_rgb: list, image_only: ModelResult, warnings, meta,
                     entered: tuple, cam_class, cam_method, similar: SimilarQuery,
                     repeated: list[int]) -> Analysis:
        """Fusion probabilities, Shapley values, heatmap and what-if sweeps for one metadata row,
        and the similar cases (whose filters use the entered sex and site); `repeated` says how
        often each image given more than once was given (distinct_images)."""
        age, sex, site = entered
        # The 8 coalitions (the last has everything entered) and the what-if rows, one head pass.
        rows = coalition_rows(meta, self.absent_row)
        sweeps = self._sweep_rows(age, sex, site)
        probs = self.head_probabilities("fusion", f.pooled["fusion"].expand(-1, len(rows) + len(sweeps), -1, -1),
                                        torch.cat([rows, sweeps])).cpu().numpy()
        by_coalition, swept = probs[:len(rows)], probs[len(rows):]
        fusion = by_coalition[-1]
        phi = shapley_values(by_coalition)

        def shapley_for(cls: str) -> ShapleyResult:
            k = CLASSES.index(cls)
            return ShapleyResult(cls=cls, base=float(by_coalition[0, k]),
                                 contributions={p: float(phi[i, k]) for i, p in enumerate(PLAYERS)},
                                 value=float(fusion[k]))
        top = CLASSES[int(fusion.argmax())]
        shap = shapley_for(top if cam_class in (None, TOP_TWO) else cam_class)
        fusion_p = probabilities_dict(fusion)
        fusion_result = ModelResult(fusion_p, *self._cam(f, "fusion", heatmap_target(cam_class, fusion_p),
                                                         meta[None], cam_method))
        image_only_p = np.array([image_only.probabilities[c] for c in CLASSES])
        sets = self.prediction_sets({"fusion": fusion[None], "image_only": image_only_p[None]})
        parsed = {"age": parse_age(age), "sex": parse_choice(sex, SEXES, "sex"), "site": parse_choice(site, SITES, "site")}
        lesion = None if f.outlines is None else lesion_findings(
            f.outlines[0], images_rgb[0], {"fusion": fusion_result.cam, "image_only": image_only.cam},
            self.manifest.segmentation, f.unlike_dermoscopy, measured=f.measured)
        return Analysis(
            lesion=lesion, image=images_rgb[0], extra_images=list(images_rgb[1:]), repeated=list(repeated),
            warnings=list(warnings) + (lesion.warnings if lesion is not None else []), fusion=fusion_result,
            image_only=image_only, shap=shap,
            top_shap=shapley_for(top) if shap.cls != top else None,
            no_metadata_top=CLASSES[int(by_coalition[0].argmax())],
            metadata=parsed,
            similar_cases=self.similar_cases(f, similar, parsed["sex"], parsed["site"]),
            what_if=self._what_if(swept), model_info=self.model_info, features=f, shift=f.shift,
            skin_tone=f.skin_tone, dermoscopic=not f.unlike_dermoscopy,
            prediction_sets={level: {k: [c for c, inside in zip(CLASSES, m[0]) if inside] for k, m in kinds.items()}
                             for level, kinds in sets.items()})

    def _sweep_rows(self, age, sex, site) -> torch.Tensor:
        """Metadata rows varying one field at a time, the other two as entered."""
        rows = ([self.encode(a, sex, site) for a in AGE_SWEEP] + [self.encode(age, s, site) for s in SEXES]
                + [self.encode(age, sex, s) for s in SITES])
        return torch.stack(rows)

    @staticmethod
    def _what_if(swept: np.ndarray) -> dict:
        """The /report what_if contract from the sweep rows' calibrated probabilities."""
        out, start = {}, 0
        for name, values in (("age", list(AGE_SWEEP)), ("sex", list(SEXES)), ("site", list(SITES))):
            block = swept[start:start + len(values)]
            start += len(values)
            out[name] = {"values": values,
                         "probabilities": {c: [float(v) for v in block[:, k]] for k, c in enumerate(CLASSES)}}
        return out


def heatmap_target(cam_class: str | None, probabilities: dict[str, float]) -> tuple[str, str | None]:
    """A heatmap's (class, the class it is contrasted with or None) for one model's probabilities:
    cam_class itself; by default (None) the model's top class; TOP_TWO its top class rather than
    its second."""
    ranked = sorted(probabilities, key=probabilities.get, reverse=True)   # stable: ties as ModelResult.top
    if cam_class == TOP_TWO:
        return ranked[0], ranked[1]
    return cam_class or ranked[0], None


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
