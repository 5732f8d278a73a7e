"""Fits the out-of-distribution check on the bundled image-only model's features.

    python -m train.fit_ood [--weights weights] [--data DIR] [--percentile 97.5]

Fitted on the training split, threshold at a percentile of the validation split's scores,
colour threshold at a low percentile of validation images' mean saturation; reports the
share flagged on validation, on the test split and on ~40 synthetic non-dermoscopic images. Writes weights/ood.safetensors, its entry in the manifest and the model card's OOD section.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion_app.data import DEFAULT_DATA, labels, load_image, load_metadata
from lesion_app.ood import OODDetector
from lesion_app.predictor import Predictor
from lesion_app.preprocess import unnormalise
from lesion_app.weights import WEIGHTS_DIR, sha256_file
from train.bundle import model_card
from train.features import DEFAULT_CACHE, build_cache, cached_pooled
from train.synthetic_images import non_dermoscopic_images


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--percentile", type=float, default=97.5)
    p.add_argument("--colour-percentile", type=float, default=0.5)
    a = p.parse_args(argv)
    predictor = Predictor(a.weights)
    manifest_path = a.weights / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    md = load_metadata(a.data).set_index("image_id")
    cached = build_cache(a.data, md.index, a.cache)
    row_of = {i: k for k, i in enumerate(md.index)}
    split = pd.read_csv(Path(__file__).resolve().parent.parent / manifest["split_file"])
    feats, ys = {}, {}
    for name in ("train", "val", "test"):
        ids = split.loc[split["split"] == name, "image_id"]
        # Image-only pooled features, mean over the flip views, as the app computes them.
        feats[name] = cached_pooled(predictor.models["image_only"], cached[[row_of[i] for i in ids]]).mean(1)
        ys[name] = labels(md.loc[ids].reset_index())
    rgb = {name: unnormalise(torch.stack([predictor.image_tensor(load_image(a.data, i))
                                          for i in split.loc[split["split"] == name, "image_id"]]),
                             predictor.spec)
           for name in ("val", "test")}
    det = OODDetector.fit(feats["train"].numpy(), ys["train"])
    det.threshold = float(np.percentile(det.score(feats["val"]).numpy(), a.percentile))
    det.min_saturation = float(np.percentile(OODDetector.saturation(rgb["val"]).numpy(), a.colour_percentile))
    synth = non_dermoscopic_images()
    x = torch.stack([predictor.image_tensor(im) for im in synth.values()])
    synth_flags = det.flags(predictor.pooled_features(x)["image_only"].mean(1),
                            unnormalise(x, predictor.spec)).numpy()
    flagged = {name: float(det.flags(feats[name], rgb[name]).numpy().mean()) for name in ("val", "test")}
    path = a.weights / "ood.safetensors"
    det.save(path)
    missed = [n for n, f in zip(synth, synth_flags) if not f]
    manifest["ood"] = {
        "file": path.name, "sha256": sha256_file(path), "threshold": det.threshold,
        "min_saturation": det.min_saturation,
        "method": "Mahalanobis distance to the nearest class mean (tied covariance, 128 PCA "
                  "dimensions) of the image-only model's pooled features, mean of 4 flips; "
                  "or mean HSV saturation below min_saturation",
        "threshold_rule": f"{a.percentile}th percentile of validation scores; colour: "
                          f"{a.colour_percentile}th percentile of validation saturation",
        "flagged_share": {"val": flagged["val"], "test": flagged["test"],
                          "synthetic_non_dermoscopic": float(synth_flags.mean()),
                          "synthetic_n": len(synth)},
        "synthetic_missed": missed,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))   # its OOD section
    print(f"threshold {det.threshold:.2f}; flagged: val {flagged['val']:.1%}, test {flagged['test']:.1%}, "
          f"synthetic {manifest['ood']['flagged_share']['synthetic_non_dermoscopic']:.1%} of {len(synth)}"
          f" (missed: {', '.join(missed) or 'none'})")


if __name__ == "__main__":
    main()
