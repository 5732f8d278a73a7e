"""The one inference path: image + metadata -> calibrated probabilities of both models.

The UI, the /report API and the evaluation CLI all go through `Predictor`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .metadata import encode_metadata
from .preprocess import flip_views, to_tensor
from .weights import MODEL_KEYS, WEIGHTS_DIR, age_scaler, input_spec, load_models, torch_device


class Predictor:
    """Loads the bundled models once; predicts with flip test-time augmentation."""

    def __init__(self, weights_dir: Path = WEIGHTS_DIR, device: torch.device | None = None):
        self.manifest, self.models = load_models(weights_dir)
        self.device = device or torch_device()
        for m in self.models.values():
            m.to(self.device)
        self.spec = input_spec(self.manifest)
        self.scaler = age_scaler(self.manifest)
        self.temperature = {k: float(self.manifest["models"][k]["temperature"]) for k in MODEL_KEYS}
        # Both models keep the ImageNet lower stages frozen, so those run once for both.
        a, b = (self.models[k] for k in MODEL_KEYS)
        self.shared_lower = all(torch.equal(p, q) for p, q in
                                zip(a.lower_parameters(), b.lower_parameters()))

    def encode(self, age, sex, site) -> torch.Tensor:
        """One encoded metadata row; raises MetadataError on invalid values."""
        return torch.from_numpy(encode_metadata(age, sex, site, self.scaler))

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image, self.spec)

    @torch.inference_mode()
    def pooled_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> per model (B, V, F) pooled features of the flip views."""
        views = flip_views(x.to(self.device))
        b, v = views.shape[:2]
        flat = views.flatten(0, 1)
        shared = self.models[MODEL_KEYS[0]].lower(flat) if self.shared_lower else None
        out = {}
        for k, m in self.models.items():
            low = shared if shared is not None else m.lower(flat)
            out[k] = m.upper(low).view(b, v, -1)
        return out

    @torch.inference_mode()
    def head_probabilities(self, key: str, pooled: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from pooled view features (B, V, F) and meta (B, M).

        Cheap (the head only), so explanations can call it once per metadata coalition.
        """
        b, v, f = pooled.shape
        m = meta.to(self.device).repeat_interleave(v, 0)
        logits = self.models[key].head(pooled.reshape(b * v, f), m).view(b, v, -1).mean(1)
        return torch.softmax(logits / self.temperature[key], dim=1)

    def probabilities(self, images: list[Image.Image], metadata: list[tuple]) -> dict[str, np.ndarray]:
        """Batch prediction: per model an (N, 7) array of calibrated probabilities."""
        x = torch.stack([self.image_tensor(im) for im in images])
        meta = torch.stack([self.encode(*m) for m in metadata])
        pooled = self.pooled_features(x)
        return {k: self.head_probabilities(k, pooled[k], meta).cpu().numpy() for k in MODEL_KEYS}
