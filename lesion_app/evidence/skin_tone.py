"""The skin around the lesion, as an individual typology angle (ITA), beside the training images'.

ITA = arctan((L* - 50) / b*) in degrees, on CIELAB pixels of the skin (the image outside the
lesion's outline and outside any black frame), from the median L* and b*. Bands (Chardon et al.
1991, as dermatology uses them): > 55 very light, 41-55 light, 28-41 intermediate, 10-28 tan,
-30-10 brown, < -30 dark. HAM10000 is almost all light skin, and a HAM10000-trained model's AUC fell
from 0.72 on Fitzpatrick I-II to 0.57 on V-VI (Daneshjou et al., Sci Adv 2022). Under a
dermatoscope's light the angle is an estimate, not a Fitzpatrick type: it is compared with the
training images' own angles, measured the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANDS = ((55.0, "very light"), (41.0, "light"), (28.0, "intermediate"), (10.0, "tan"), (-30.0, "brown"),
         (-np.inf, "dark"))
MIN_SKIN = 0.05      # a share of the image: with less skin than this, no angle is given
FRAME = 20.0         # L* below this is a black frame or shadow, not skin


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = c @ np.array([[0.4124564, 0.2126729, 0.0193339],
                        [0.3575761, 0.7151522, 0.1191920],
                        [0.1804375, 0.0721750, 0.9503041]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def ita_of(lab: np.ndarray) -> float:
    """The ITA (degrees) of CIELAB pixels (N, 3), from their median L* and b*."""
    L, b = float(np.median(lab[:, 0])), float(np.median(lab[:, 2]))
    return float(np.degrees(np.arctan2(L - 50.0, b)))


def band_of(ita: float) -> str:
    return next(name for lo, name in BANDS if ita > lo)


def skin_ita(rgb: np.ndarray, lesion: np.ndarray | None) -> float | None:
    """The ITA of the skin in an image (H, W, 3 uint8): outside the lesion mask (bool (H, W), or None
    for none) and its surrounding margin, outside black frames; None with too little skin."""
    lab = srgb_to_lab(rgb)
    skin = lab[..., 0] >= FRAME
    if lesion is not None and lesion.any():
        from scipy import ndimage
        skin &= ~ndimage.binary_dilation(lesion, iterations=max(1, round(0.03 * lesion.shape[1])))
    if skin.mean() < MIN_SKIN:
        return None
    return ita_of(lab[skin])


@dataclass
class SkinTone:
    ita: float
    band: str
    training_range: tuple      # (low, high): the training images' central 98% of angles
    training_percentile: float  # share (0-100) of training images with a lower angle (darker skin)

    @property
    def inside(self) -> bool:
        return self.training_range[0] <= self.ita <= self.training_range[1]

    def sentence(self) -> str:
        where = (f"{self.training_percentile:.0f}% of the training images' skin has a lower angle (is darker)")
        line = f"Skin around the lesion: ITA {self.ita:.0f}° ({self.band}); {where}."
        if self.inside:
            return line
        if self.ita < self.training_range[0]:
            return (f"{line} It is darker than 99 in 100 training images: HAM10000 is almost all light skin, and "
                    "on darker skin such models do worse (AUC 0.72 on Fitzpatrick I-II fell to 0.57 on V-VI in one "
                    "study): read both models with more caution.")
        return (f"{line} Its colour is outside 99 in 100 training images' (often a bluish cast of another "
                "dermatoscope's light rather than the skin itself): read both models with more caution.")

    def to_report(self) -> dict:
        return {"ita": round(self.ita, 1), "band": self.band, "inside_training_range": self.inside,
                "training_range": [round(v, 1) for v in self.training_range],
                "training_percentile": round(self.training_percentile, 1), "note": self.sentence()}


def skin_tone(rgb: np.ndarray, lesion: np.ndarray | None, reference: dict) -> SkinTone | None:
    """The skin tone of an image against the training images' angles (reference: the manifest's
    skin_tone entry, {"percentiles": 101 values, the 0th..100th percentile of the training angles})."""
    ita = skin_ita(rgb, lesion)
    if ita is None:
        return None
    q = np.asarray(reference["percentiles"], float)
    return SkinTone(ita, band_of(ita), (float(q[1]), float(q[99])),
                    float(np.interp(ita, q, np.linspace(0, 100, len(q)))))
