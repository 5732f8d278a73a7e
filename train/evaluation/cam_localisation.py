"""How well each CAM method's heatmap falls on the lesion: energy inside the mask, the pointing
game and the inside/outside activation ratio, per method and ensemble, on images no member
trained on.

    python -m train.evaluation.cam_localisation [--weights weights] [--data DIR] [--limit N] [--methods Grad-CAM ...]

Each image's heatmaps are for its ensemble's predicted class (fusion with the image's own
age, sex and site), as the app shows them by default; the trunk and pooled features run once
per image (keeping the trunk stage that the fine method starts from, as the app does), then one
backward pass per method and ensemble. Prints a table; `localisation`
is what train.evaluation.report calls.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from train.data.dataset import DEFAULT_DATA, load_image, load_mask, load_metadata
from train.data.splits import read_heldout
from lesion_app.evidence.gradcam import CAM_METHODS, gradcam
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR
from lesion_app.evidence.lesion import attention_ratio
from train.evaluation.report_render import localisation_table
from train.evaluation.stats import energy_inside, pointing_game



def localisation(predictor: Predictor, data: Path, df: pd.DataFrame,
                 methods=tuple(CAM_METHODS)) -> dict:
    """{method: {kind: {n, empty_maps, energy_inside_mask_mean, pointing_game_hit_rate,
    attention_ratio_median}}} over df's images that have a mask (n counts them; an empty map
    counts in n and empty_maps and in no figure; the ratio, mean map value inside the mask over
    that outside (lesion_app.evidence.lesion.attention_ratio), is a median over the images where
    it is defined). The kind-level dicts have the keys of train.evaluation.report's localisation."""
    spec = predictor.spec
    size = (spec.height, spec.width)
    res = {m: {k: {"energy": [], "hits": [], "ratio": [], "empty": 0} for k in MODEL_KEYS} for m in methods}
    df = df.reset_index(drop=True)
    for i, image_id in enumerate(df["image_id"]):
        mask = load_mask(data, image_id)
        if mask is None:
            continue
        mask = np.asarray(Image.fromarray(mask).resize((spec.width, spec.height), Image.Resampling.NEAREST))
        x = predictor.image_tensor(load_image(data, image_id))[None]
        meta = predictor.encode(*df.loc[i, ["age", "sex", "localization"]])[None]
        with predictor._lock:
            low, _, stage = predictor.trunk_and_outlines(x)
            pooled = predictor.pooled_features(x, low)
            for k in MODEL_KEYS:
                m = meta.to(predictor.device) if k == "fusion" else None
                target = int(predictor.head_probabilities(k, pooled[k], meta)[0].argmax())
                for method in methods:
                    heat, empty = gradcam(predictor.models[k], low[:1].clone(), m, target, size, method=method,
                                          stage=stage.clone())
                    r = res[method][k]
                    if empty:
                        r["empty"] += 1
                        continue
                    r["energy"].append(energy_inside(heat, mask))
                    r["hits"].append(pointing_game(heat, mask))
                    ratio = attention_ratio(heat, mask)
                    if ratio is not None:
                        r["ratio"].append(ratio)
    return {method: {k: {"n": len(v["hits"]) + v["empty"], "empty_maps": v["empty"],
                         "energy_inside_mask_mean": float(np.mean(v["energy"])) if v["energy"] else None,
                         "pointing_game_hit_rate": float(np.mean(v["hits"])) if v["hits"] else None,
                         "attention_ratio_median": float(np.median(v["ratio"])) if v["ratio"] else None}
                     for k, v in by_kind.items()}
            for method, by_kind in res.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--methods", nargs="+", default=list(CAM_METHODS), choices=list(CAM_METHODS))
    p.add_argument("--limit", type=int, default=None, help="first N held-out images only (in file order)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    predictor = Predictor(a.weights)
    held_ids = read_heldout(predictor.manifest.heldout_path)["image_id"]
    md = load_metadata(a.data).set_index("image_id")
    df = md.loc[[i for i in held_ids if i in md.index]].reset_index()
    if a.limit:
        df = df.head(a.limit)
    t = time.perf_counter()
    result = localisation(predictor, a.data, df, a.methods)
    print(f"held-out slice: {len(df)} images, {time.perf_counter() - t:.0f} s\n")
    print(localisation_table(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
