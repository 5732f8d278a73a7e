"""Augmentation of decoded images for whole-network fine-tuning (train.fitting.full).

A training view is drawn from one torch.Generator, so the same seed gives the same view in
any process:
  - one affine warp: a random resized crop (share of the 4:3 area and aspect jittered),
    a rotation by any angle and horizontal / vertical flips, sampled once with reflection
    at the borders (dermoscopy has no "up", and reflected skin beats black corners);
  - colour jitter (brightness, contrast, saturation, hue);
  - optionally Shades-of-Gray colour constancy first (Finlayson & Trezzi 2004; used by the
    ISIC 2019 winners), which divides out each image's estimate of the illuminant.
An evaluation view is the app's own preprocessing (lesion_app.classifier.preprocess.fit_to_aspect),
with Shades-of-Gray when the run uses it. Both return a normalised (3, height, width) float
tensor; pixels are in [0, 1] before normalisation.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from lesion_app.classifier.colour import shades_of_gray
from lesion_app.classifier.preprocess import InputSpec, fit_to_aspect, input_box, to_source_scale


@dataclass(frozen=True)
class Augment:
    """How far each augmentation goes; run.json records it."""
    min_area: float = 0.5        # random resized crop keeps 50-100% of the 4:3 area
    aspect_jitter: float = 0.2   # crop aspect within 4:3 * [1/1.2, 1.2]
    degrees: float = 180.0       # rotation uniform in [-degrees, degrees]
    brightness: float = 0.2      # factors uniform in [1 - x, 1 + x]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02            # hue shift uniform in [-x, x] (a fraction of the colour wheel)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Normalise:
    """Per-channel mean and std on [0, 1] pixels, from the backbone's timm pretrained_cfg
    (tf_efficientnet_lite*: 0.5 and 0.5, the app's InputSpec)."""
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]


def decode(path: Path, min_width: int, min_height: int) -> Image.Image:
    """The image as RGB, decoded no larger than needed: a JPEG is decoded at the smallest
    power-of-two reduction still at least min_width x min_height (ISIC images reach 6000 px)."""
    with Image.open(path) as im:
        im.draft("RGB", (min_width, min_height))
        return im.convert("RGB")


def to_unit(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def train_view(image: Image.Image, spec: InputSpec, aug: Augment, g: torch.Generator,
               normalise: Normalise = Normalise(), sog: float = 0.0) -> torch.Tensor:
    """One random training view of a decoded image: (3, spec.height, spec.width), normalised.
    sog > 0 applies Shades-of-Gray with that p first."""
    out_w, out_h = spec.width, spec.height
    # Shrink (antialiased) to about what the smallest crop needs, so the warp never decimates.
    w, h = image.size
    base_w = min(w, h * out_w / out_h)                 # the largest 4:3 box in the image
    keep = min(1.0, out_w / math.sqrt(aug.min_area) / base_w)
    if keep < 1.0:
        image = image.resize((max(1, round(w * keep)), max(1, round(h * keep))), Image.Resampling.BILINEAR)
    x = to_unit(image)
    if sog:
        x = shades_of_gray(x, sog)
    x = warp(x, out_w, out_h, aug, g)
    x = jitter(x, aug, g)
    return normalise(x.clamp(0, 1))


def warp(x: torch.Tensor, out_w: int, out_h: int, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Random resized crop + rotation + flips of x (3, H, W) as one affine resampling."""
    _, h, w = x.shape
    aspect = out_w / out_h
    base_w = min(w, h * aspect)
    base_h = base_w / aspect
    area = _uniform(g, aug.min_area, 1.0)
    ratio = math.exp(_uniform(g, -math.log1p(aug.aspect_jitter), math.log1p(aug.aspect_jitter)))
    crop_w, crop_h = base_w * math.sqrt(area * ratio), base_h * math.sqrt(area / ratio)
    # Crop centre (pixels from the image centre): anywhere the crop still fits.
    cx = _uniform(g, -1, 1) * max(0.0, (w - crop_w) / 2)
    cy = _uniform(g, -1, 1) * max(0.0, (h - crop_h) / 2)
    angle = math.radians(_uniform(g, -aug.degrees, aug.degrees))
    fx = -1.0 if float(torch.rand((), generator=g)) < 0.5 else 1.0
    fy = -1.0 if float(torch.rand((), generator=g)) < 0.5 else 1.0
    cos, sin = math.cos(angle), math.sin(angle)
    # Output coordinates in [-1, 1] -> input coordinates in [-1, 1]: scale to the crop (in
    # pixels), flip, rotate, shift to the crop centre, then back to the input's [-1, 1].
    theta = torch.tensor([[cos * fx * crop_w / w, -sin * fy * crop_h / w, 2 * cx / w],
                          [sin * fx * crop_w / h, cos * fy * crop_h / h, 2 * cy / h]], dtype=x.dtype)
    grid = F.affine_grid(theta[None], [1, 3, out_h, out_w], align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def jitter(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Colour jitter of x (3, H, W) in [0, 1]; stays in [0, 1]."""
    x = TF.adjust_brightness(x, _uniform(g, 1 - aug.brightness, 1 + aug.brightness))
    x = TF.adjust_contrast(x, _uniform(g, 1 - aug.contrast, 1 + aug.contrast))
    x = TF.adjust_saturation(x, _uniform(g, 1 - aug.saturation, 1 + aug.saturation))
    if aug.hue:
        x = TF.adjust_hue(x, _uniform(g, -aug.hue, aug.hue))
    return x.clamp(0, 1)


@dataclass(frozen=True)
class Carry:
    """What a "carry" training view adds to Augment, so the model meets other devices' looks
    (issue 37): a light of another colour, a round black field of view, lower resolution (softer
    texture), JPEG compression. run records keep it with Augment."""
    illuminant: float = 0.15     # each channel's gain uniform in [1 - x, 1 + x], before colour constancy
    vignette: float = 0.25       # chance of a round black field of view
    vignette_radius: tuple = (0.55, 0.8)   # its radius, a share of the image's half-diagonal
    resolution: tuple = (0.5, 1.0)         # the image is shrunk to this share of its size, then drawn at full size
    jpeg: float = 0.5            # chance of JPEG compression
    jpeg_quality: tuple = (40, 95)

    def to_dict(self) -> dict:
        return asdict(self)


CARRY_AUGMENT = Augment(min_area=0.4, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)


def vignette(image: Image.Image, radius: float) -> Image.Image:
    """The image outside a centred disc (radius: a share of the half-diagonal) set to black, with a
    soft edge of about 2% of the width, as a round dermatoscope's window leaves it."""
    w, h = image.size
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) / (np.hypot(w, h) / 2)
    edge = max(0.02, 1.0 / w)
    keep = np.clip((radius - r) / edge, 0.0, 1.0)[..., None]
    return Image.fromarray((np.asarray(image, np.float32) * keep).round().astype(np.uint8))


def degrade(image: Image.Image, carry: Carry, g: torch.Generator) -> Image.Image:
    """A random round field of view, lower resolution and JPEG compression, each as Carry says."""
    if float(torch.rand((), generator=g)) < carry.vignette:
        image = vignette(image, _uniform(g, *carry.vignette_radius))
    share = _uniform(g, *carry.resolution)
    w, h = image.size
    if share < 1.0:
        small = image.resize((max(8, round(w * share)), max(8, round(h * share))), Image.Resampling.BILINEAR)
        image = small.resize((w, h), Image.Resampling.BICUBIC)
    if float(torch.rand((), generator=g)) < carry.jpeg:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(round(_uniform(g, *carry.jpeg_quality))))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


def carry_view(image: Image.Image, spec: InputSpec, g: torch.Generator, aug: Augment = CARRY_AUGMENT,
               carry: Carry = Carry(), normalise: Normalise = Normalise()) -> torch.Tensor:
    """One random "carry" training view, (3, spec.height, spec.width) normalised: the part of the
    image the app would use (input_box: field of view, 4:3), degraded (degrade), lit by a random
    illuminant, then the spec's colour constancy, then train_view's warp and colour jitter."""
    image = image.convert("RGB")
    image = to_source_scale(image.crop(input_box(image, spec)), spec)
    x = to_unit(degrade(image, carry, g))
    gains = torch.tensor([_uniform(g, 1 - carry.illuminant, 1 + carry.illuminant) for _ in range(3)])
    x = (x * gains[:, None, None]).clamp(0, 1)
    if spec.colour_constancy:
        x = shades_of_gray(x, spec.colour_constancy)
    x = warp(x, spec.width, spec.height, aug, g)
    return normalise(jitter(x, aug, g))


def eval_view(image: Image.Image, spec: InputSpec, normalise: Normalise = Normalise(),
              sog: float = 0.0) -> torch.Tensor:
    """The evaluation view: the app's resize (fit_to_aspect), Shades-of-Gray if sog > 0,
    normalised; (3, spec.height, spec.width). With the default Normalise and no Shades-of-Gray
    this is exactly lesion_app.classifier.preprocess.to_tensor."""
    x = to_unit(fit_to_aspect(image, spec))
    if sog:
        x = shades_of_gray(x, sog)
    return normalise(x)
