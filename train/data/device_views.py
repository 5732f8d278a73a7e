"""Every image decoded once into one uint8 tensor, and every view training takes of it, computed
on that tensor's device in batches (train.fitting.gpu_cv: the GPU, or the CPU in its smoke run).

The tensor is (N, 2, 3, H, W): per image, the app's own preprocessing (fit_to_aspect, before
normalisation) and the same of its 85% centre zoom (train.data.features.zoom). From it:
  - eval_batch: the app's input (to_tensor, exactly: the same pixels, the same arithmetic);
  - cache_views: the 8 views of train.data.features.image_views (4 flips of each), which the
    curriculum's frozen ImageNet features are pooled over;
  - train_views: train.data.augment's training view of the first image, for a whole batch: one
    affine warp (random resized crop, any rotation, flips; reflection at the borders) and colour
    jitter (brightness, contrast, saturation, hue). Each image's draws come from its own seed in
    the order train_view draws them, so a view equals train_view(fit_to_aspect(image), seed)
    (tests/test_gpu_cv.py checks it); only the resampling and the jitter run batched;
  - carry_views: train.data.augment's carry view (issue 37: other devices' looks) likewise, from the
    same draws, the field of view, resolution and JPEG applied to the input itself.
The spec's colour constancy applies in eval_batch and the carry view, as the app applies it.
"""
from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lesion_app.classifier.colour import shades_of_gray
from lesion_app.classifier.preprocess import InputSpec, fit_to_aspect, flip_views
from train.data.augment import CARRY_AUGMENT, Augment, Carry, Normalise
from train.data.features import zoom

GRAY = (0.2989, 0.587, 0.114)   # torchvision's luminance weights (adjust_contrast, adjust_saturation)


def decode_images(image_of: Callable[[int], Image.Image], n: int, spec: InputSpec = InputSpec(),
                  workers: int = 1) -> torch.Tensor:
    """(n, 2, 3, spec.height, spec.width) uint8 on the CPU: each image_of(row) as the app
    preprocesses it, and its zoomed centre likewise; decoded in `workers` threads."""
    def both(row):
        image = image_of(row)
        return np.stack([np.asarray(fit_to_aspect(image, spec)), np.asarray(fit_to_aspect(zoom(image), spec))])
    out = torch.empty((n, 2, 3, spec.height, spec.width), dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for row, a in enumerate(pool.map(both, range(n))):
            out[row] = torch.from_numpy(a).permute(0, 3, 1, 2)
    return out


def to_unit(u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], as to_tensor and augment.to_unit compute it."""
    return u8.float() / 255.0


def eval_batch(u8: torch.Tensor, spec: InputSpec = InputSpec()) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> the app's normalised input (lesion_app.classifier.preprocess.to_tensor),
    with the spec's colour constancy."""
    x = to_unit(u8)
    if spec.colour_constancy:
        x = shades_of_gray(x, spec.colour_constancy)
    return (x - spec.mean) / spec.std


def cache_views(u8_pair: torch.Tensor, spec: InputSpec = InputSpec()) -> torch.Tensor:
    """(B, 2, 3, H, W) uint8 -> (B, 8, 3, H, W), in train.data.features.image_views' order."""
    b = len(u8_pair)
    return flip_views(eval_batch(u8_pair.flatten(0, 1), spec)).view(b, 8, *u8_pair.shape[2:])


# ----------------------------------------------------------------------------- the training view

def draws(seed: int, aug: Augment) -> list[float]:
    """The uniform draws train.data.augment.train_view makes from torch.Generator().manual_seed(seed),
    in its order: area, ratio, centre x, centre y, angle, flip x, flip y, brightness, contrast,
    saturation (and hue when aug.hue)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(11 if aug.hue else 10, generator=g).tolist()


def _lerp(lo: float, hi: float, u: float) -> float:
    return lo + (hi - lo) * u    # augment._uniform's arithmetic


def warp_theta(u: list[float], w: int, h: int, out_w: int, out_h: int, aug: Augment) -> list[list[float]]:
    """augment.warp's affine matrix from its draws u: output [-1, 1] -> input [-1, 1]."""
    aspect = out_w / out_h
    base_w = min(w, h * aspect)
    base_h = base_w / aspect
    area = _lerp(aug.min_area, 1.0, u[0])
    ratio = math.exp(_lerp(-math.log1p(aug.aspect_jitter), math.log1p(aug.aspect_jitter), u[1]))
    crop_w, crop_h = base_w * math.sqrt(area * ratio), base_h * math.sqrt(area / ratio)
    cx = _lerp(-1, 1, u[2]) * max(0.0, (w - crop_w) / 2)
    cy = _lerp(-1, 1, u[3]) * max(0.0, (h - crop_h) / 2)
    angle = math.radians(_lerp(-aug.degrees, aug.degrees, u[4]))
    fx = -1.0 if u[5] < 0.5 else 1.0
    fy = -1.0 if u[6] < 0.5 else 1.0
    cos, sin = math.cos(angle), math.sin(angle)
    return [[cos * fx * crop_w / w, -sin * fy * crop_h / w, 2 * cx / w],
            [sin * fx * crop_w / h, cos * fy * crop_h / h, 2 * cy / h]]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (x * ratio + other * (1 - ratio)).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (torchvision's adjust_hue conversion)."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    eq = maxc == minc
    span = maxc - minc
    s = span / torch.where(eq, torch.ones_like(maxc), maxc)
    d = torch.where(eq, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(eq, torch.zeros_like(h), h)
    return torch.stack(((h / 6.0 + 1.0).fmod(1.0), s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The inverse of rgb_to_hsv."""
    h, s, v = x.unbind(-3)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    p = ((1 - s) * v).clamp(0, 1)
    q = ((1 - s * f) * v).clamp(0, 1)
    t = ((1 - s + s * f) * v).clamp(0, 1)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    return vpqt.gather(-3, select[:, i].movedim(0, -3))


def jitter(x: torch.Tensor, factors: torch.Tensor, hue: torch.Tensor | None) -> torch.Tensor:
    """augment.jitter for a batch (B, 3, H, W) in [0, 1], with each image's brightness, contrast and
    saturation factors (B, 3) and hue shift (B,) or None."""
    f = factors[:, :, None, None, None]
    x = (x * f[:, 0]).clamp_(0, 1)
    x = _blend(x, _gray(x).mean((-3, -2, -1), keepdim=True), f[:, 1])
    x = _blend(x, _gray(x), f[:, 2])
    if hue is not None:
        hsv = rgb_to_hsv(x)
        hsv = torch.stack(((hsv[:, 0] + hue[:, None, None]).remainder(1.0), hsv[:, 1], hsv[:, 2]), dim=1)
        x = hsv_to_rgb(hsv)
    return x.clamp(0, 1)


def train_views(u8: torch.Tensor, seeds, aug: Augment = Augment(), normalise: Normalise = Normalise(),
                spec: InputSpec = InputSpec()) -> torch.Tensor:
    """(B, 3, h, w) uint8 -> (B, 3, spec.height, spec.width) normalised training views on u8's
    device, image i's drawn from seeds[i] as augment.train_view draws them (with the spec's colour
    constancy first, as train_view's sog)."""
    x = to_unit(u8)
    if spec.colour_constancy:
        x = shades_of_gray(x, spec.colour_constancy)
    return _warp_and_jitter(x, [draws(s, aug) for s in seeds], aug, normalise, spec)


def _warp_and_jitter(x: torch.Tensor, u: list[list[float]], aug: Augment, normalise: Normalise,
                     spec: InputSpec) -> torch.Tensor:
    """augment.warp then augment.jitter of a batch x (B, 3, h, w) in [0, 1], each image from its
    draws u[i] (area, ratio, centre x, centre y, angle, flip x, flip y, brightness, contrast,
    saturation, hue); normalised."""
    b, _, h, w = x.shape
    theta = torch.tensor([warp_theta(d, w, h, spec.width, spec.height, aug) for d in u], dtype=torch.float32)
    grid = F.affine_grid(theta.to(x.device), [b, 3, spec.height, spec.width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    col = torch.tensor([[_lerp(1 - aug.brightness, 1 + aug.brightness, d[7]),
                         _lerp(1 - aug.contrast, 1 + aug.contrast, d[8]),
                         _lerp(1 - aug.saturation, 1 + aug.saturation, d[9])] for d in u], device=x.device)
    hue = torch.tensor([_lerp(-aug.hue, aug.hue, d[10]) for d in u], device=x.device) if aug.hue else None
    x = jitter(x, col, hue)
    mean = torch.tensor(normalise.mean, device=x.device)[:, None, None]
    std = torch.tensor(normalise.std, device=x.device)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


# ----------------------------------------------------------------------------- the carry view

def carry_draws(seed: int, aug: Augment = CARRY_AUGMENT, carry: Carry = Carry()) -> dict:
    """The draws train.data.augment.carry_view makes from torch.Generator().manual_seed(seed), in
    its order: the field of view (and its radius when drawn), the resolution, JPEG (and its quality
    when drawn), the light's three channel gains, then the warp's and the jitter's draws."""
    g = torch.Generator().manual_seed(int(seed))
    rand = lambda: float(torch.rand((), generator=g))   # noqa: E731
    vignette = rand() < carry.vignette
    radius = _lerp(*carry.vignette_radius, rand()) if vignette else None
    share = _lerp(*carry.resolution, rand())
    jpeg = rand() < carry.jpeg
    quality = int(round(_lerp(*carry.jpeg_quality, rand()))) if jpeg else None
    gains = [_lerp(1 - carry.illuminant, 1 + carry.illuminant, rand()) for _ in range(3)]
    return {"radius": radius, "share": share, "quality": quality, "gains": gains,
            "view": [rand() for _ in range(11 if aug.hue else 10)]}


def vignette_mask(h: int, w: int, radius: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1]: augment.vignette's soft-edged disc per image (radius (B,), a share of
    the half-diagonal; inf keeps the whole image)."""
    yy = torch.arange(h, device=radius.device, dtype=torch.float32)[:, None]
    xx = torch.arange(w, device=radius.device, dtype=torch.float32)[None, :]
    r = torch.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) / (math.hypot(w, h) / 2)
    edge = max(0.02, 1.0 / w)
    return ((radius[:, None, None] - r) / edge).clamp(0, 1)[:, None]


def carry_views(u8: torch.Tensor, seeds, spec: InputSpec = InputSpec(), aug: Augment = CARRY_AUGMENT,
                carry: Carry = Carry(), normalise: Normalise = Normalise()) -> torch.Tensor:
    """(B, 3, h, w) uint8, the app's input before normalisation -> (B, 3, spec.height, spec.width)
    normalised "carry" training views on u8's device, image i's drawn from seeds[i] as
    augment.carry_view draws them: a round black field of view, lower resolution, JPEG (on the CPU,
    with PIL, one image at a time), another light, the spec's colour constancy, then the warp and
    the jitter. One difference from carry_view: the field of view, resolution and JPEG act on the
    256x192 input rather than on the image at its source size (the device holds only the input)."""
    b, _, h, w = u8.shape
    d = [carry_draws(s, aug, carry) for s in seeds]
    x = to_unit(u8)
    radius = torch.tensor([math.inf if k["radius"] is None else k["radius"] for k in d], device=x.device)
    x = x * vignette_mask(h, w, radius)
    out = []
    for i, k in enumerate(d):
        xi = x[i:i + 1]
        if k["share"] < 1.0:
            small = (max(8, round(h * k["share"])), max(8, round(w * k["share"])))
            xi = F.interpolate(F.interpolate(xi, size=small, mode="bilinear", antialias=True, align_corners=False),
                               size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        if k["quality"] is not None:     # on the CPU with PIL, as carry_view compresses
            buf = io.BytesIO()
            Image.fromarray((xi[0] * 255).round().byte().permute(1, 2, 0).cpu().numpy()).save(
                buf, "JPEG", quality=k["quality"])
            xi = to_unit(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)[None].to(x.device))
        out.append(xi)
    x = torch.cat(out) * torch.tensor([k["gains"] for k in d], device=x.device)[:, :, None, None]
    x = x.clamp(0, 1)
    if spec.colour_constancy:
        x = shades_of_gray(x, spec.colour_constancy)
    return _warp_and_jitter(x, [k["view"] for k in d], aug, normalise, spec)
