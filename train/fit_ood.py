"""Fits the out-of-distribution check on the bundled image-only ensemble's features.

    python -m train.fit_ood [--weights weights] [--data DIR] [--percentile 97.5] [--fit-per-class 200]

Fitted (class means, tied covariance) on a class-stratified sample of images outside the
held-out slice; thresholds at a percentile of the held-out slice's scores and saturation,
images no member trained on. Reports the share flagged there and on ~40 synthetic
non-dermoscopic images. Writes weights/ood.safetensors, its manifest entry and the model
card's OOD section (overwrites them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lesion_app.data import DEFAULT_DATA, labels, load_image, load_metadata
from lesion_app.ood import OODDetector
from lesion_app.predictor import Predictor
from lesion_app.preprocess import unnormalise
from lesion_app.weights import WEIGHTS_DIR, sha256_file
from train.bundle import REPO, model_card

def ensemble_features(predictor: Predictor, images, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M * F) image-only ensemble features and (N, 3, H, W) RGB, as the app computes them."""
    feats, rgb = [], []
    for s in tqdm(range(0, len(images), batch), desc="ensemble features", mininterval=10, disable=None):
        x = torch.stack([predictor.image_tensor(im) for im in images[s:s + batch]])
        with predictor._lock:
            feats.append(OODDetector.features(predictor.pooled_features(x)["image_only"]))
        rgb.append(unnormalise(x, predictor.spec))
    return torch.cat(feats), torch.cat(rgb)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--percentile", type=float, default=97.5)
    p.add_argument("--colour-percentile", type=float, default=0.5)
    p.add_argument("--fit-per-class", type=int, default=200, help="images per class to fit on (at most)")
    a = p.parse_args(argv)
    from train.synthetic_images import non_dermoscopic_images
    predictor = Predictor(a.weights)
    manifest_path = a.weights / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    md = load_metadata(a.data)
    held_ids = set(pd.read_csv(REPO / manifest["heldout_file"], dtype=str)["image_id"])
    held = md[md["image_id"].isin(held_ids)].reset_index(drop=True)
    rest = md[~md["image_id"].isin(held_ids)]
    fit = pd.concat([g.sample(min(len(g), a.fit_per_class), random_state=0)
                     for _, g in rest.groupby("dx")]).reset_index(drop=True)
    f_fit, _ = ensemble_features(predictor, [load_image(a.data, i) for i in fit["image_id"]])
    f_held, rgb_held = ensemble_features(predictor, [load_image(a.data, i) for i in held["image_id"]])
    det = OODDetector.fit(f_fit.numpy(), labels(fit))
    det.threshold = float(np.percentile(det.score(f_held).numpy(), a.percentile))
    det.min_saturation = float(np.percentile(OODDetector.saturation(rgb_held).numpy(), a.colour_percentile))
    synth = non_dermoscopic_images()
    f_syn, rgb_syn = ensemble_features(predictor, list(synth.values()))
    synth_flags = det.flags(f_syn, rgb_syn).numpy()
    flagged_held = float(det.flags(f_held, rgb_held).numpy().mean())
    path = a.weights / "ood.safetensors"
    det.save(path)
    missed = [n for n, f in zip(synth, synth_flags) if not f]
    manifest["ood"] = {
        "file": path.name, "sha256": sha256_file(path), "threshold": det.threshold,
        "min_saturation": det.min_saturation,
        "method": "Mahalanobis distance to the nearest class mean (tied covariance, 128 PCA "
                  "dimensions) of the image-only ensemble's pooled features (each member's mean "
                  "over 4 flips, side by side); or mean HSV saturation below min_saturation",
        "fitted_on": f"{len(fit)} images outside the held-out slice, at most {a.fit_per_class} per class",
        "threshold_rule": f"{a.percentile}th percentile of the held-out slice's scores; colour: "
                          f"{a.colour_percentile}th percentile of its saturation",
        "flagged_share": {"heldout": flagged_held, "n_heldout": len(held),
                          "synthetic_non_dermoscopic": float(synth_flags.mean()), "synthetic_n": len(synth)},
        "synthetic_missed": missed,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))   # its OOD section
    print(f"threshold {det.threshold:.2f}; flagged: held-out slice {flagged_held:.1%} of {len(held)}, "
          f"synthetic {synth_flags.mean():.1%} of {len(synth)} (missed: {', '.join(missed) or 'none'})")


if __name__ == "__main__":
    main()
