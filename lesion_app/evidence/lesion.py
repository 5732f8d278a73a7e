"""Measurements of the lesion's outline, and how much of each heatmap lies inside it.

They describe the outline the segmenter drew on the image the models saw; they are not the
ABCD rule's scores and not a diagnosis. The images carry no scale, so no diameter is measured.
Every measure is one entry of MEASURES (a function of the mask and the RGB image), so a new
measure is one more function, not a branch elsewhere.

- area share: the lesion's share of the image;
- asymmetry: for each of the outline's two principal axes, the share of the lesion that its
  mirror image about that axis does not cover; the mean of the two (0: symmetric about both);
- border irregularity: perimeter^2 / (4 pi area), the perimeter counted along pixel edges and
  scaled by pi/4 (so a disc scores about 1; ragged or lobed outlines score higher);
- border sharpness: the luminance step across a thin band at the border as a share of the
  step from the lesion's core to the skin around it (1: the whole step happens at the border);
- colours: the six dermoscopic colours (COLOURS, the reference values of Kasmi and Mokrani,
  IET Image Processing 2016), each lesion pixel assigned to the nearest in CIELAB (the CIE 1976
  colour difference, closer to what an eye sees than RGB distance); a colour is present when it
  covers at least COLOUR_MIN_SHARE of the lesion. CIELAB was chosen out-of-fold over RGB: on
  1,500 out-of-fold outlines the colour count separates melanoma from nevus better (AUC 0.78 vs
  0.72), and fewer nevi read as mostly red (58% vs 85%: HAM10000's pink cast pulls brown towards
  the red reference in RGB). The references are not calibrated to these images, so the colours
  are a rough reading, not a dermoscopist's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage


# Reference RGB values of the dermoscopic colours (Kasmi & Mokrani 2016, as used for ABCD colour counts).
COLOURS = {
    "white": (255, 255, 255),
    "red": (204, 51, 51),
    "light brown": (153, 102, 0),
    "dark brown": (51, 0, 0),
    "blue-grey": (51, 153, 153),
    "black": (0, 0, 0),
}
COLOUR_MIN_SHARE = 0.05   # a colour counts when at least 5% of the lesion's pixels are nearest to it
MIN_AREA_SHARE = 0.005    # smaller outlines are no lesion (a speck)
MAX_BORDER_SHARE = 0.6    # an outline touching this share of the image border or more ...
MAX_AREA_SHARE = 0.85     # ... and covering this share of the image or more is no lesion found


@dataclass
class LesionFindings:
    """The lesion as the segmentation outlines it in the first image the models saw, measured from
    the outline: measurements of the outline, not the ABCD rule's scores and not a diagnosis.
    Measures are None when no lesion was found."""
    mask: np.ndarray                 # (H, W) bool, the size of Analysis.image: True inside the outline
    found: bool                      # False: no lesion, or one covering nearly the whole image
    area_share: float | None = None  # lesion pixels / image pixels, 0..1
    asymmetry: float | None = None   # 0 (mirror-symmetric about both principal axes) .. 1
    border: dict = field(default_factory=dict)   # {"irregularity": float >= 0, "sharpness": float 0..1}
    colours: dict = field(default_factory=dict)  # dermoscopic colour -> share of the lesion (those present)
    attention_inside: dict = field(default_factory=dict)  # kind -> share of its heatmap's mass inside, 0..1
    attention_ratio: dict = field(default_factory=dict)   # kind -> mean map value inside / outside
    reference: dict = field(default_factory=dict)  # measure -> class -> [q1, median, q3] in the archive
    warnings: list = field(default_factory=list)   # plain sentences (no lesion found, evidence off it)

    def to_report(self) -> dict:
        """/report's `lesion`: found, the measures, and each heatmap's share inside the outline."""
        if not self.found:
            return {"found": False, "warnings": list(self.warnings)}
        return {"found": True, "area_share": self.area_share, "asymmetry": self.asymmetry,
                "border": dict(self.border), "colours": dict(self.colours),
                "attention_inside": dict(self.attention_inside), "attention_ratio": dict(self.attention_ratio),
                "warnings": list(self.warnings)}


def no_lesion_reason(mask: np.ndarray) -> str | None:
    """Why no lesion was found (a plain sentence), or None when the outline is one."""
    if float(mask.mean()) < MIN_AREA_SHARE:
        return ("No lesion was outlined in this image: check that it shows a lesion, centred and in focus; "
                "the measures and the attention check are not available.")
    return None


def whole_image_warning(mask: np.ndarray) -> str | None:
    """A warning when the outline covers nearly the whole image and most of its border: the lesion
    runs off the image, or none could be told apart from the skin (None otherwise)."""
    share = float(mask.mean())
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() >= MAX_BORDER_SHARE and share >= MAX_AREA_SHARE:
        return (f"The outline covers {share:.0%} of the image and most of its border: either the lesion runs off "
                "the image (take one with skin around it) or no lesion could be told apart from the skin. The "
                "measures describe the outline as drawn, and shape measures mean little here.")
    return None


def area_share(mask: np.ndarray, rgb: np.ndarray) -> float:
    return float(mask.mean())


def _mirror_overlap(mask: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> float:
    """The share of the lesion's pixels whose mirror image about the line through centre along
    axis is also lesion."""
    ys, xs = np.nonzero(mask)
    p = np.stack([ys, xs], 1) - centre
    mirrored = np.rint(2 * (p @ axis)[:, None] * axis - p + centre).astype(int)
    h, w = mask.shape
    inside = (mirrored[:, 0] >= 0) & (mirrored[:, 0] < h) & (mirrored[:, 1] >= 0) & (mirrored[:, 1] < w)
    hit = np.zeros(len(p), bool)
    hit[inside] = mask[mirrored[inside, 0], mirrored[inside, 1]]
    return float(hit.mean())


def asymmetry(mask: np.ndarray, rgb: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    pts = np.stack([ys, xs], 1).astype(float)
    centre = pts.mean(0)
    _, vectors = np.linalg.eigh(np.cov((pts - centre).T))
    return float(np.mean([1 - _mirror_overlap(mask, centre, vectors[:, k]) for k in range(2)]))


def border_irregularity(mask: np.ndarray, rgb: np.ndarray) -> float:
    m = np.pad(mask, 1).astype(np.int8)
    edges = np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()
    perimeter = edges * np.pi / 4   # pixel edges overcount a smooth curve by 4/pi on average
    return float(perimeter ** 2 / (4 * np.pi * mask.sum()))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])


def border_sharpness(mask: np.ndarray, rgb: np.ndarray, band: int = 2, far: int = 8) -> float:
    """|L(just outside) - L(just inside)| / |L(skin) - L(core)|, clipped to 0..1; the band is
    `band` pixels either side of the outline, the core and the skin lie `far` pixels away."""
    lum = _luminance(rgb)
    step = lambda m, n: ndimage.binary_erosion(m, iterations=n) if n > 0 else ndimage.binary_dilation(m, iterations=-n)  # noqa: E731
    inner = mask & ~step(mask, band)
    outer = step(mask, -band) & ~mask
    core = step(mask, far)
    skin = step(mask, -(far + band)) & ~step(mask, -far)
    if not (inner.any() and outer.any() and core.any() and skin.any()):
        return float("nan")
    full = abs(lum[skin].mean() - lum[core].mean())
    if full < 1e-6:
        return 0.0
    return float(np.clip(abs(lum[outer].mean() - lum[inner].mean()) / full, 0, 1))


def _cielab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB values 0..255 -> (N, 3) CIELAB (D65; L 0..100)."""
    x = (np.asarray(rgb, np.float32) / 255).reshape(-1, 1, 3)
    return cv2.cvtColor(x, cv2.COLOR_RGB2Lab).reshape(-1, 3)


_COLOURS_LAB = _cielab(np.array(list(COLOURS.values())))


def colour_shares(mask: np.ndarray, rgb: np.ndarray) -> dict[str, float]:
    """Each dermoscopic colour's share of the lesion's pixels (every colour, present or not):
    each pixel goes to the nearest reference colour in CIELAB."""
    pixels = _cielab(rgb[mask][:, :3])
    nearest = np.argmin(((pixels[:, None, :] - _COLOURS_LAB[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(COLOURS)) / max(len(pixels), 1)
    return {name: float(c) for name, c in zip(COLOURS, counts)}


def colours_present(mask: np.ndarray, rgb: np.ndarray) -> dict[str, float]:
    return {k: v for k, v in colour_shares(mask, rgb).items() if v >= COLOUR_MIN_SHARE}


# name -> measure(mask, rgb); the names are the keys of /report's `lesion` and of the reference.
MEASURES = {
    "area_share": area_share,
    "asymmetry": asymmetry,
    "border_irregularity": border_irregularity,
    "border_sharpness": border_sharpness,
    "colours": colours_present,
}
SCALAR_MEASURES = ("area_share", "asymmetry", "border_irregularity", "border_sharpness", "colour_count")


def measure(mask: np.ndarray, rgb: np.ndarray) -> dict:
    """Every measure of one lesion (mask: a found lesion's outline, bool (H, W); rgb (H, W, 3)),
    with colour_count, the number of colours present."""
    out = {name: fn(mask, rgb) for name, fn in MEASURES.items()}
    out["colour_count"] = len(out["colours"])
    return out


def attention_inside(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of a heatmap's mass inside the outline (None for an empty map)."""
    total = float(cam.sum())
    return None if total <= 0 else float(cam[mask].sum() / total)


def attention_ratio(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean map value inside the outline / mean value outside (None if either side is empty
    or the outside holds no activation)."""
    if not mask.any() or mask.all():
        return None
    outside = float(cam[~mask].mean())
    return None if outside <= 0 else float(cam[mask].mean() / outside)


def attention_warning(kind: str, share: float) -> str:
    name = "fusion" if kind == "fusion" else "image-only"
    return (f"Only {share:.0%} of the {name} model's heatmap lies inside the lesion's outline: its evidence is "
            "mostly elsewhere. Check the image for a ruler, ink marks, hair, a dark vignette or damaged skin "
            "around the lesion before relying on this answer.")


# Said with the measures when the OOD check flags the image: a segmenter outlines something in any picture.
OUTLINE_CAVEAT = ("The image does not look like dermoscopy (see the warning above), so this outline may not be a "
                  "lesion at all: its measures describe whatever region the segmenter marked.")


def lesion_findings(outline: np.ndarray, rgb: np.ndarray, cams: dict[str, np.ndarray],
                    entry: dict | None, unlike_dermoscopy: bool = False,
                    measured: dict | None = None) -> LesionFindings:
    """The outline of one image (bool (H, W), rgb the image the models saw), its measures and how
    much of each model's heatmap (cams: kind -> (H, W) map) lies inside it. entry: the manifest's
    segmentation entry, whose `reference` holds the archive's quartiles of each measure by class
    and `attention` the warning's rule: the share inside under `threshold` and, when given, the
    map's mean inside over its mean outside under `ratio_under` (train.evaluation.attention).
    unlike_dermoscopy: the OOD check flagged the image; a found outline's warnings then start with
    OUTLINE_CAVEAT. measured: this outline's measures (`measure`) when already taken, or an empty
    dict that receives them: they depend on the outline and the image only, so a metadata change
    takes only the heatmaps' share again."""
    entry = entry or {}
    reason = no_lesion_reason(outline)
    if reason:
        return LesionFindings(mask=outline, found=False, warnings=[reason])
    m = measured or measure(outline, rgb)
    if measured is not None and not measured:
        measured.update(m)
    inside = {k: attention_inside(c, outline) for k, c in cams.items()}
    ratio = {k: attention_ratio(c, outline) for k, c in cams.items()}
    rule = entry.get("attention") or {}
    threshold, ratio_under = rule.get("threshold"), rule.get("ratio_under")
    warnings = [OUTLINE_CAVEAT] * unlike_dermoscopy + [w for w in (whole_image_warning(outline),) if w] + [
        attention_warning(k, v) for k, v in inside.items()
                if threshold is not None and v is not None and v < threshold
                and (ratio_under is None or (ratio[k] is not None and ratio[k] < ratio_under))]
    return LesionFindings(
        mask=outline, found=True, area_share=m["area_share"], asymmetry=m["asymmetry"],
        border={"irregularity": m["border_irregularity"], "sharpness": m["border_sharpness"]},
        colours=m["colours"], attention_inside=inside,
        attention_ratio=ratio,
        reference=entry.get("reference", {}), warnings=warnings)


def outline_pixels(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The outline's own pixels: the mask minus its erosion (width pixels thick)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def with_outline(rgb: np.ndarray, mask: np.ndarray | None, colour=(0, 255, 255), width: int = 2) -> np.ndarray:
    """A copy of the RGB image with the outline drawn in `colour` (the image itself for None)."""
    if mask is None or not mask.any():
        return rgb
    out = np.array(rgb, copy=True)
    out[outline_pixels(mask, width)] = colour
    return out
