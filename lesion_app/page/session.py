"""One browser session's memory of the page (gr.State, in memory only): its last analysed upload,
decoded, with its analysis, the uploads already read, the outline toggle, and the heatmaps already
drawn as inline images."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..analysis.analysis import Analysis
from .presentation import heatmap_html
from .uploads import extra_payloads, upload_key


class HeatmapCache:
    """One image's last few heatmaps as inline images, by the map's bytes: a metadata change
    that leaves a map as it was does not encode it again."""
    SIZE = 4

    def __init__(self):
        self.entries: dict[tuple[str, str], str] = {}

    def html(self, rgb: np.ndarray, cam: np.ndarray, alt: str, outline: np.ndarray | None = None) -> str:
        """heatmap_html(rgb, cam, alt, outline), drawn once per map and outline (one image's outline
        never changes); the oldest entry goes first."""
        key = (hashlib.blake2b(cam.tobytes(), digest_size=16).hexdigest(), alt, outline is not None)
        if key not in self.entries:
            while len(self.entries) >= self.SIZE:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = heatmap_html(rgb, cam, alt, outline)
        return self.entries[key]


@dataclass
class SessionState:
    """One browser session's last analysed upload, decoded in memory, and its analysis.

    Valid only for the upload named by `key`; any other image means start again.
    """
    key: str | tuple | None = None   # upload_key of the upload (and its further images)
    image: Image.Image | list[Image.Image] | None = None   # a list: several images of one lesion
    analysis: Analysis | None = None
    heatmaps: HeatmapCache = field(default_factory=HeatmapCache, compare=False, repr=False)
    outline: bool = True   # the lesion's outline drawn on the heatmaps (the page's toggle; kept across images)
    # The page's current uploads already read, decoded, by server path: each file is deleted once read,
    # so a further image added later, or a slip put right (a broken further image removed), must not
    # need the file again.
    uploads: dict = field(default_factory=dict, compare=False, repr=False)

    def holds(self, payload, extra=None) -> bool:
        return self.image is not None and payload is not None and self.key == upload_key(payload, extra)

    def follow(self, analysis: Analysis) -> "SessionState":
        """The same upload with a newer analysis (its heatmaps kept)."""
        return SessionState(self.key, self.image, analysis, self.heatmaps, self.outline, self.uploads)

    def uploads_among(self, payload, extra=None) -> dict:
        """The uploads read before that are still among these inputs."""
        keys = {upload_key(p) for p in (payload, *extra_payloads(extra))}
        return {k: im for k, im in self.uploads.items() if k in keys}
