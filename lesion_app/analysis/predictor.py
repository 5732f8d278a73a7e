"""The one inference path: image + metadata -> calibrated probabilities of both ensembles, with
their evidence.

The UI, the /report API and the evaluation CLI all go through `Predictor`: what it serves is built
once from the weights folder (lesion_app.analysis.loading.load_served), `analyze` and
`with_metadata` run the pipeline (lesion_app.analysis.pipeline), and the rest is the batch toolbox
that train/ uses (probabilities of many images or lesions, lesion masks, the passes' features and
heads: lesion_app.classifier.passes). It serves both kinds of member
(lesion_app.classifier.ensemble): members over one shared frozen trunk, and whole-network members,
each ensemble either kind.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..classifier.metadata import Metadata
from ..classifier.passes import ImageFeatures, combined
from ..classifier.weights import MODEL_KEYS, WEIGHTS_DIR, WeightsError
from ..evidence.archive import SimilarCases, SimilarQuery, image_embedding
from ..evidence.conformal import sets_by_level
from ..evidence.gradcam import DEFAULT_CAM_METHOD, FINE_STAGE_BLOCK
from ..evidence.heatmaps import check_heatmap
from . import pipeline
from .analysis import Analysis
from .loading import Served, load_served


class Predictor:
    """Both bundled ensembles and their evidence, loaded once; predicts with flip test-time augmentation.

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
    trunk = property(lambda self: self.passes.trunk, doc="the module whose `lower` trunk_features runs")
    has_shared_trunk = property(lambda self: self.passes.has_shared_trunk)

    # ------------------------------------------------------------------ one analysis

    def analyze(self, image: Image.Image | list[Image.Image], age=None, sex=None, site=None,
                cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
                similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """Both ensembles' probabilities, heatmaps and the exact Shapley values of the metadata.

        image: one image, or a list of 1 to pipeline.MAX_IMAGES images of the same lesion: each ensemble
        then averages its logits over all of them (and their flip views), so the probabilities,
        prediction sets, Shapley values, what-if and similar cases describe the lesion, while
        the heatmaps and the OOD check are per image.
        age, sex, site: as a form, the API or a CSV gives them; parsed here, once (Metadata.parse).
        cam_class: the class whose heatmaps (and Shapley values) to show; by default each
        heatmap shows its own model's top class and the Shapley values the fusion top class;
        TOP_TWO: each heatmap shows its own model's top class rather than its second (a
        contrastive map), the Shapley values the fusion top class.
        cam_method: a key of lesion_app.evidence.gradcam.CAM_METHODS (Grad-CAM by default).
        similar: how many similar archive cases to return, and their filters.
        The result keeps the image's features (in memory) for `with_metadata`.
        Raises MetadataError for invalid metadata.
        """
        images, repeated = pipeline.checked_images(image, cam_class, cam_method)
        return self._analyse(images, repeated, Metadata.parse(age, sex, site), cam_class, cam_method, similar)

    def analyze_parsed(self, image: Image.Image | list[Image.Image], metadata: Metadata,
                       cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
                       similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """analyze, with metadata the caller parsed already (the page parses them before it reads
        an upload)."""
        images, repeated = pipeline.checked_images(image, cam_class, cam_method)
        return self._analyse(images, repeated, metadata, cam_class, cam_method, similar)

    def _analyse(self, images, repeated, metadata, cam_class, cam_method, similar) -> Analysis:
        with self._lock:
            return pipeline.analyse(self.served, images, repeated, metadata, cam_class, cam_method, similar)

    def with_metadata(self, previous: Analysis, age=None, sex=None, site=None,
                      cam_class: str | None = None, cam_method: str = DEFAULT_CAM_METHOD,
                      similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """The same image's analysis for other metadata (or another heatmap class or method),
        without running the backbones again: only the fusion heads, and heatmaps not already
        kept from the kept trunk output (upper stages only). age, sex, site: raw, parsed here."""
        check_heatmap(cam_class, cam_method)
        return self._with_metadata(previous, Metadata.parse(age, sex, site), cam_class, cam_method, similar)

    def with_metadata_parsed(self, previous: Analysis, metadata: Metadata, cam_class: str | None = None,
                             cam_method: str = DEFAULT_CAM_METHOD,
                             similar: SimilarQuery = SimilarQuery()) -> Analysis:
        """with_metadata, with metadata the caller parsed already."""
        check_heatmap(cam_class, cam_method)
        return self._with_metadata(previous, metadata, cam_class, cam_method, similar)

    def _with_metadata(self, previous, metadata, cam_class, cam_method, similar) -> Analysis:
        with self._lock:
            return pipeline.with_metadata(self.served, previous, metadata, cam_class, cam_method, similar)

    def contrast_map(self, analysis: Analysis) -> tuple[np.ndarray, str, str] | None:
        """The fusion model's map of its top class rather than its second (pipeline.contrast_map)."""
        with self._lock:
            return pipeline.contrast_map(self.served, analysis)

    def similar_cases(self, features: ImageFeatures, query: SimilarQuery, sex: str, site: str) -> SimilarCases | None:
        """The archive's most similar lesions for an analysed image (None without an archive)."""
        return pipeline.similar_cases(self.served, features, query, sex, site)

    # ------------------------------------------------------------------ the toolbox: batches of images

    def encode(self, age, sex, site) -> torch.Tensor:
        """One encoded metadata row from raw values; raises MetadataError on invalid values."""
        return torch.from_numpy(Metadata.parse(age, sex, site).encode(self.scaler))

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        return self.passes.image_tensor(image)

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
        return sets_by_level(probs, self.set_thresholds)

    def embedding(self, low: torch.Tensor | None, pooled: dict[str, torch.Tensor], n_images: int) -> torch.Tensor:
        """The archive's raw embedding of n_images images (lesion_app.evidence.archive.image_embedding)."""
        return image_embedding(self.archive.embedding, low, pooled, n_images)

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

    def lesion_masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Each image's lesion outline as a bool mask at the image's own size (what `evaluate
        --masks-out` writes): the 4 flip views' maps averaged, as an analysis outlines a lesion.
        WeightsError when these weights have no segmenter."""
        if self.segmenter is None:
            raise WeightsError("these weights have no lesion segmenter (python -m train.release.segmenter)")
        with self._lock:
            return self.passes.lesion_masks(images)
