"""Real, non-dermoscopic photographs that Python packages ship inside their wheels (offline).

For measuring the out-of-distribution check on real photos, not only on synthetic ones.
Only files inside the installed wheels are used; nothing is downloaded (scikit-image's
pooch-fetched images, e.g. `skin`, `eagle`, `kidney`, are left out on purpose).

Every source photo belongs to one kind and to one set: TUNING photos may guide choices
(which cues, which percentile); EVALUATION photos only measure. The split is by source
photo, so no photo or crop of it is in both sets. Kinds with a single colour photo
(colour microscopy, astronomy, retinal fundus, flower) are in the evaluation set only:
nothing was tuned on them. Each photo is used whole and as crops (a user may upload a
close-up), see `crops`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

TUNING, EVALUATION = "tuning", "evaluation"


@dataclass(frozen=True)
class Source:
    name: str
    kind: str        # scene, animal, person, object, microscopy, astronomy, fundus, plant, texture, document
    package: str     # the installed package whose wheel ships the file
    path: str        # inside that package
    set: str         # TUNING or EVALUATION


SOURCES = (
    # animals
    Source("cheetah_running", "animal", "gradio", "media_assets/images/cheetah.jpg", TUNING),
    Source("cheetah_face", "animal", "gradio", "media_assets/images/cheetah1.jpg", TUNING),
    Source("cheetah_cub", "animal", "gradio", "test_data/cheetah2.jpg", TUNING),
    Source("cat_chelsea", "animal", "skimage", "data/chelsea.png", EVALUATION),
    Source("lion", "animal", "gradio", "media_assets/images/lion.jpg", EVALUATION),
    # people
    Source("astronaut", "person", "skimage", "data/astronaut.png", TUNING),
    Source("grace_hopper", "person", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", EVALUATION),
    Source("cameraman", "person", "skimage", "data/camera.png", EVALUATION),
    # scenes
    Source("rocket_launch", "scene", "skimage", "data/rocket.jpg", TUNING),
    Source("china_palace", "scene", "sklearn", "datasets/images/china.jpg", EVALUATION),
    Source("eiffel_tower", "scene", "gradio", "media_assets/images/tower.jpg", EVALUATION),
    # objects
    Source("motorcycle", "object", "skimage", "data/motorcycle_left.png", TUNING),
    Source("coins", "object", "skimage", "data/coins.png", TUNING),
    Source("coffee", "object", "skimage", "data/coffee.png", EVALUATION),
    Source("groot_figure", "object", "gradio", "media_assets/images/groot.jpeg", EVALUATION),
    # textures and documents (greyscale)
    Source("brick", "texture", "skimage", "data/brick.png", TUNING),
    Source("grass", "texture", "skimage", "data/grass.png", EVALUATION),
    Source("gravel", "texture", "skimage", "data/gravel.png", EVALUATION),
    Source("text", "document", "skimage", "data/text.png", TUNING),
    Source("page", "document", "skimage", "data/page.png", EVALUATION),
    # single-photo kinds: evaluation only (greyscale microscopy / astronomy photos tune)
    Source("cells_greyscale", "microscopy", "skimage", "data/cell.png", TUNING),
    Source("immunohistochemistry", "microscopy", "skimage", "data/ihc.png", EVALUATION),
    Source("moon", "astronomy", "skimage", "data/moon.png", TUNING),
    Source("hubble_deep_field", "astronomy", "skimage", "data/hubble_deep_field.jpg", EVALUATION),
    Source("retina_fundus", "fundus", "skimage", "data/retina.jpg", EVALUATION),
    Source("dahlia", "plant", "sklearn", "datasets/images/flower.jpg", EVALUATION),
)

# (left, top, width, height) as fractions of the photo: whole, a centre crop, a close-up,
# and the four quadrants.
CROPS = {"whole": (0.0, 0.0, 1.0, 1.0), "centre": (0.15, 0.15, 0.7, 0.7), "closeup": (0.32, 0.32, 0.36, 0.36),
         "top_left": (0.0, 0.0, 0.5, 0.5), "top_right": (0.5, 0.0, 0.5, 0.5),
         "bottom_left": (0.0, 0.5, 0.5, 0.5), "bottom_right": (0.5, 0.5, 0.5, 0.5)}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def available(sources=SOURCES) -> list[Source]:
    """The sources whose package is installed and whose file its wheel ships."""
    out = []
    for s in sources:
        root = _package_dir(s.package)
        if root is not None and (root / s.path).is_file():
            out.append(s)
    return out


def load(source: Source) -> Image.Image:
    """The photo as RGB (greyscale photos as three equal channels, transparency on white)."""
    im = Image.open(_package_dir(source.package) / source.path)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def crops(image: Image.Image, which=tuple(CROPS)) -> dict[str, Image.Image]:
    """Named crops of one photo (see CROPS)."""
    w, h = image.size
    out = {}
    for name in which:
        left, top, cw, ch = CROPS[name]
        out[name] = image.crop((round(left * w), round(top * h), round((left + cw) * w), round((top + ch) * h)))
    return out


def real_photos(which_set: str | None = None, with_crops: bool = True) -> dict[str, tuple[Source, Image.Image]]:
    """{"<source>/<crop>": (source, image)} for the installed sources of one set (or all)."""
    out = {}
    for s in available():
        if which_set is not None and s.set != which_set:
            continue
        photo = load(s)
        for crop, im in (crops(photo) if with_crops else {"whole": photo}).items():
            out[f"{s.name}/{crop}"] = (s, im)
    return out
