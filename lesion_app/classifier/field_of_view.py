"""Finds a dermatoscope's dark field of view (a round black vignette, or black borders) so the
model sees only the lit skin inside it.

Many dermatoscopes image through a round window: the picture is a disc of skin on black, or a
frame with black corners. HAM10000 has some such images, other clinics many more. The box found
here is the largest axis-aligned box of lit skin that the black frame leaves: its sides are moved
inward, the darkest edge first, until no edge crosses more than a sliver of black.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DARK = 40            # luminance (0-255) below which a pixel counts as the black frame
WORK_SIDE = 96       # the search runs on a copy this large on its longer side
CORNER = 0.08        # a corner patch's side, as a share of the image's side
DARK_CORNERS = 2     # a frame is present when at least this many corner patches are mostly dark
EDGE_TOLERANCE = 0.03  # a box edge may cross this share of dark pixels
MIN_KEEP = 0.45      # a box narrower or shorter than this share of the image is not trusted


def _dark_map(image: Image.Image) -> np.ndarray:
    small = image.convert("L").copy()
    small.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    return np.asarray(small) < DARK


def has_frame(dark: np.ndarray) -> bool:
    """Whether at least DARK_CORNERS of the four corner patches are mostly dark."""
    h, w = dark.shape
    ph, pw = max(1, round(h * CORNER)), max(1, round(w * CORNER))
    corners = [dark[:ph, :pw], dark[:ph, -pw:], dark[-ph:, :pw], dark[-ph:, -pw:]]
    return sum(c.mean() > 0.5 for c in corners) >= DARK_CORNERS


def lit_box(dark: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) in dark's pixels: the box left when each edge has been moved
    inward, the darkest first, until every edge crosses at most EDGE_TOLERANCE dark pixels; None
    when that box keeps less than MIN_KEEP of a side (a dark lesion, not a frame)."""
    h, w = dark.shape
    left, top, right, bottom = 0, 0, w, h
    while right - left >= MIN_KEEP * w and bottom - top >= MIN_KEEP * h:
        inner = dark[top:bottom, left:right]
        edges = {"left": inner[:, 0].mean(), "right": inner[:, -1].mean(),
                 "top": inner[0, :].mean(), "bottom": inner[-1, :].mean()}
        side = max(edges, key=edges.get)
        if edges[side] <= EDGE_TOLERANCE:
            return left, top, right, bottom
        if side == "left":
            left += 1
        elif side == "right":
            right -= 1
        elif side == "top":
            top += 1
        else:
            bottom -= 1
    return None


def field_of_view_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom, in image pixels) of lit skin inside a black frame, or
    None when the image has no frame (or the dark corners are not a frame one can crop away)."""
    dark = _dark_map(image)
    if not has_frame(dark):
        return None
    box = lit_box(dark)
    if box is None:
        return None
    sx, sy = image.width / dark.shape[1], image.height / dark.shape[0]
    left, top, right, bottom = box
    return (int(np.ceil(left * sx)), int(np.ceil(top * sy)),
            int(np.floor(right * sx)), int(np.floor(bottom * sy)))


def crop_field_of_view(image: Image.Image) -> Image.Image:
    """The image cropped to its field of view's lit box (the image itself when it has no frame)."""
    box = field_of_view_box(image)
    return image if box is None else image.crop(box)
