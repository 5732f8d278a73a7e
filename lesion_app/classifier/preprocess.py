"""Image preprocessing: the one place that turns a PIL image into the model's input.

The input spec (size, normalisation) is stored in the weights manifest and read back
from it, so training, evaluation and the app cannot drift apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from PIL import Image

from .colour import shades_of_gray
from .field_of_view import field_of_view_box


# The names the manifest may use for the resize filter.
INTERPOLATIONS = {name.lower(): Image.Resampling[name] for name in
                  ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS")}


@dataclass(frozen=True)
class InputSpec:
    """How a PIL image becomes the model's input; stored in the weights manifest.

    Raises ValueError at construction for an interpolation name not in INTERPOLATIONS, or a
    source_width that is not a positive number of pixels.
    """
    width: int = 256
    height: int = 192
    mean: float = 0.5   # tf_efficientnet_lite* use mean = std = 0.5 on [0, 1] pixels
    std: float = 0.5
    interpolation: str = "bicubic"  # a PIL resampling filter, by name (INTERPOLATIONS)
    # The training images' width (HAM10000's copy: 200 px). An input at least SOURCE_SCALE_FROM times
    # as wide is first brought down to it with an antialiased filter, so a large, sharp image from
    # another device reaches the model at the scale and softness the model learnt; None: resized
    # straight to width x height.
    source_width: int | None = None
    # Crop a dermatoscope's black frame (round vignette, black borders) before the aspect crop
    # (lesion_app.classifier.field_of_view).
    field_of_view: bool = False
    # Shades-of-Gray colour constancy's p (lesion_app.classifier.colour) on the resized image; 0: off.
    colour_constancy: float = 0.0

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r} in the input spec; "
                             f"use one of {', '.join(INTERPOLATIONS)}")
        if self.source_width is not None and not (isinstance(self.source_width, int) and self.source_width > 0):
            raise ValueError(f"source_width must be a positive number of pixels or None, not {self.source_width!r}")

    @property
    def resample(self) -> Image.Resampling:
        """The PIL filter that fit_to_aspect resizes with."""
        return INTERPOLATIONS[self.interpolation]

    def to_dict(self) -> dict:
        """The spec as the manifest stores it. Fields added after the first release (LATER_FIELDS)
        are written only when set, so a spec written before them reads back, compares and keys
        caches as it did."""
        d = asdict(self)
        for name in LATER_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d


# Measured with Model v3 (reports/transfer/serving_steps_isic2017.md): ISIC 2017's 256 px images lost balanced
# accuracy when brought down to 200 px (-0.019), while an atlas's 768 px images gained (0.447 -> 0.615,
# issue 36); so only images at least twice the training width are brought down.
SOURCE_SCALE_FROM = 2.0
LATER_FIELDS = ("source_width", "field_of_view", "colour_constancy")
_DEFAULTS = {f.name: f.default for f in fields(InputSpec)}


# Flip views used both as training augmentation (cached) and as test-time augmentation.
VIEWS = ("identity", "hflip", "vflip", "hvflip")


def aspect_crop_box(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """The centre crop (left, top, right, bottom) of a width x height image to the spec's aspect
    ratio (the whole image when it already has it)."""
    w, h, target = width, height, spec.width / spec.height
    if abs(w / h - target) <= 1e-3:
        return 0, 0, w, h
    if w / h > target:
        nw = round(h * target)
        return (w - nw) // 2, 0, (w - nw) // 2 + nw, h
    nh = round(w / target)
    return 0, (h - nh) // 2, w, (h - nh) // 2 + nh


def input_box(image: Image.Image, spec: InputSpec) -> tuple[int, int, int, int]:
    """The part of the image (left, top, right, bottom) that the model sees: with the spec's
    field_of_view, the lit box inside a black frame, then its centre crop to the spec's aspect."""
    box = (field_of_view_box(image) if spec.field_of_view else None) or (0, 0, *image.size)
    left, top, right, bottom = box
    a_left, a_top, a_right, a_bottom = aspect_crop_box(right - left, bottom - top, spec)
    return left + a_left, top + a_top, left + a_right, top + a_bottom


def fit_to_aspect(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Crops to input_box (the field of view when the spec asks, then the centre at the spec's
    aspect ratio, 4:3 as HAM10000), brings a much wider crop down to the spec's source_width
    (to_source_scale), and resizes to the input size with the spec's interpolation."""
    image = image.convert("RGB")
    box = input_box(image, spec)
    if box != (0, 0, *image.size):
        image = image.crop(box)
    return to_source_scale(image, spec).resize((spec.width, spec.height), spec.resample)


def to_source_scale(image: Image.Image, spec: InputSpec) -> Image.Image:
    """With the spec's source_width, an image at least SOURCE_SCALE_FROM times as wide brought down to
    it (antialiased, the aspect kept); any other image as it is."""
    if spec.source_width is None or image.width < SOURCE_SCALE_FROM * spec.source_width:
        return image
    scaled = (spec.source_width, max(1, round(image.height * spec.source_width / image.width)))
    return image.resize(scaled, Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """PIL image -> normalised float tensor of shape (3, height, width)."""
    a = np.asarray(fit_to_aspect(image, spec), dtype=np.float32) / 255.0
    x = torch.from_numpy(a).permute(2, 0, 1)
    if spec.colour_constancy:
        x = shades_of_gray(x, spec.colour_constancy)
    return ((x - spec.mean) / spec.std).contiguous()


def unnormalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """The inverse of to_tensor's normalisation: RGB in [0, 1], same shape."""
    return x * spec.std + spec.mean


def flip_views(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, len(VIEWS), 3, H, W), in VIEWS order."""
    return torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], dim=1)


def mean_over_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B * views, ...) with each image's views adjacent -> (B, ...): test-time averaging."""
    return x.reshape(-1, views, *x.shape[1:]).mean(1)
