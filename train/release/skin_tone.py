"""The training images' skin tones, which the app's skin-tone note compares an image with.

    python -m train.release.skin_tone [--weights weights] [--data DIR]

Every HAM10000 image of the folder (the members trained on these images' look, so all of them
describe the training range), as the app prepares it (the manifest's input spec, before colour
constancy), its skin taken outside the folder's own lesion mask as the app takes it outside the
outline (lesion_app.evidence.skin_tone). Writes the 0th..100th percentiles of the angles into the
manifest's skin_tone entry, with the share of each band.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.preprocess import fit_to_aspect, input_box
from lesion_app.classifier.weights import WEIGHTS_DIR
from lesion_app.evidence.skin_tone import BANDS, band_of, skin_ita
from train.data.dataset import DEFAULT_DATA, load_image, load_mask, load_metadata


def image_ita(image: Image.Image, mask: np.ndarray | None, spec) -> float | None:
    """The ITA of one image as the app measures it, with its mask brought to the model input's geometry."""
    rgb = np.asarray(fit_to_aspect(image, spec))
    lesion = None
    if mask is not None:
        m = Image.fromarray(mask.astype(np.uint8) * 255).crop(input_box(image, spec))
        lesion = np.asarray(m.resize((spec.width, spec.height), Image.Resampling.NEAREST)) > 127
    return skin_ita(rgb, lesion)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    manifest = Manifest.load(a.weights)
    spec = manifest.input_spec
    md = load_metadata(a.data)
    angles = [image_ita(load_image(a.data, i), load_mask(a.data, i), spec)
              for i in tqdm(md["image_id"], desc="skin tones", mininterval=10, disable=None)]
    angles = np.array([v for v in angles if v is not None])
    bands = Counter(band_of(v) for v in angles)
    manifest = manifest.with_skin_tone({
        "method": "individual typology angle, arctan((L* - 50) / b*) in degrees, from the median CIELAB L* and b* of "
                  "the skin outside the lesion (and a 3% margin) and outside black frames, on the model's input before "
                  "colour constancy",
        "measured_on": f"{len(angles)} HAM10000 images of {a.data.name} with their own lesion masks "
                       f"({len(md) - len(angles)} with too little skin left out)",
        "percentiles": [round(float(v), 2) for v in np.percentile(angles, np.arange(101))],
        "band_share": {name: round(bands.get(name, 0) / len(angles), 4) for _, name in BANDS},
        "seconds": round(time.perf_counter() - t0, 1)})
    manifest.save(a.weights)
    q = manifest.skin_tone["percentiles"]
    print(f"{len(angles)} images: ITA 1st-99th percentile {q[1]:.1f}..{q[99]:.1f}, median {q[50]:.1f}; bands "
          + ", ".join(f"{k} {v:.1%}" for k, v in manifest.skin_tone["band_share"].items()))


if __name__ == "__main__":
    main()
