"""Fits the out-of-distribution check on the shared trunk's features of dermoscopic images.

    python -m train.release.fit_ood [--weights weights] [--data DIR] [--percentile 98] [--fit-per-class 200]
                                    [--other DIR --other-aspect 4:3 --other-fit-share 0.5]

Fitted (one Gaussian of the trunk's channel means) on a class-stratified sample of images
outside the held-out slice, each as given and once more recompressed, re-exposed or
downscaled (so that an ordinary upload of a dermoscopic image is not flagged); thresholds at
a percentile of the held-out slice's distances and saturation, images no member trained on
(the only use of that slice). Then measures the share flagged there; on other dermoscopic
images used for neither (the trunk is frozen ImageNet, so the detector has never seen them);
on ~40 synthetic non-dermoscopic images; and on real photographs that installed packages
ship (train/data/real_photos.py: tuning and evaluation sets, per kind).
With --other (another clinic's dermoscopy, such as ../shared/data/isic2017): a share of its images
(train.data.splits.draw_fit_half: the fit half of train/splits/isic2017_halves.csv for ISIC 2017, the
half train.fitting.cv --second-source trains on) joins the fit and the colour floor, so dermoscopy
from other devices, often less saturated, is not called "not dermoscopic"; the rest measures how many
such images are still flagged. The figures the app quotes about other clinics come from the shift
score (train.release.fit_shift), not from this fit.
Only the trunk runs (no member), so it takes a few minutes on a 2-core CPU.
Writes weights/ood.safetensors, its manifest entry and the model card's OOD section
(overwrites them).
"""
from __future__ import annotations

import argparse
import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance
from tqdm import tqdm

from train.data.dataset import DEFAULT_DATA, load_image, load_metadata
from train.data.splits import read_heldout
from lesion_app.evidence.ood import FEATURES, OODDetector
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.preprocess import unnormalise
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from train.release.model_card import model_card


def trunk_features(predictor: Predictor, images, batch: int = 16, views: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) trunk features and (N, 3, H, W) RGB in [0, 1], as the app computes them
    (views=True: averaged over the 4 flip views; False: the image as given only)."""
    feats, rgb = [], []
    for s in tqdm(range(0, len(images), batch), desc="trunk features", mininterval=10, disable=None):
        x = torch.stack([predictor.image_tensor(im) for im in images[s:s + batch]])
        with predictor._lock, torch.inference_mode():
            # The frozen ImageNet trunk's output, whatever the members' split (the shipped OOD file's features).
            low = (predictor.frozen_features(x) if views else predictor.frozen.run(
                x.to(predictor.device).contiguous(memory_format=torch.channels_last), reference=True)[1])
            feats.append(OODDetector.trunk_features(low, len(x)))
        rgb.append(unnormalise(x, predictor.spec))
    return torch.cat(feats), torch.cat(rgb)


def upload_variant(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image as an upload may differ from the dataset's: JPEG-recompressed (quality 20-90),
    brighter or darker (x0.7-1.35), lower resolution (30-70%) or lower/higher contrast."""
    image = image.convert("RGB")
    kind = int(rng.integers(4))
    if kind == 0:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(20, 90)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == 1:
        return ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.35))
    if kind == 2:
        s = rng.uniform(0.3, 0.7)
        w, h = image.size
        return image.resize((max(1, round(w * s)), max(1, round(h * s)))).resize((w, h))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))


def flagged_by_kind(names, sources, flags) -> dict:
    """{"n", "flagged", "by_kind": {kind: {"n", "flagged"}}, "missed": [names]} for one photo set."""
    by_kind = defaultdict(lambda: {"n": 0, "flagged": 0})
    for s, f in zip(sources, flags):
        by_kind[s.kind]["n"] += 1
        by_kind[s.kind]["flagged"] += int(f)
    return {"n": len(flags), "flagged": int(np.sum(flags)), "by_kind": dict(sorted(by_kind.items())),
            "missed": [n for n, f in zip(names, flags) if not f]}


def non_dermoscopic_features(predictor: Predictor) -> dict:
    """The trunk features of the synthetic and the real non-dermoscopic images, per set:
    {set: (names, sources or None, features, rgb)}, and "sources_missing"."""
    from train.data.real_photos import EVALUATION, SOURCES, TUNING, available, real_photos
    from train.data.synthetic_images import non_dermoscopic_images
    synth = non_dermoscopic_images()
    out = {"synthetic": (list(synth), None, *trunk_features(predictor, list(synth.values())))}
    for which in (TUNING, EVALUATION):
        photos = real_photos(which)
        out[which] = (list(photos), [s for s, _ in photos.values()],
                      *trunk_features(predictor, [im for _, im in photos.values()]))
    have = {s.name for s in available()}
    out["sources_missing"] = [f"{s.name} ({s.package})" for s in SOURCES if s.name not in have]
    return out


def measure(det: OODDetector, sets: dict) -> dict:
    """The detector's flags on the synthetic and the real non-dermoscopic images (non_dermoscopic_features)."""
    out = {"sources_missing": sets["sources_missing"]}
    for which, entry in sets.items():
        if which == "sources_missing":
            continue
        names, sources, f, rgb = entry
        flags = det.flags(f, rgb).numpy()
        out[which] = ({"n": len(names), "flagged": int(flags.sum()), "missed": [n for n, x in zip(names, flags) if not x]}
                      if sources is None else flagged_by_kind(names, sources, flags))
    return out


def choose_percentile(det: OODDetector, held_scores: np.ndarray, sets: dict, candidates, margin: float,
                      tuning: str = "tuning") -> tuple[float, list[dict]]:
    """The highest candidate percentile (of the held-out slice's distances) at which every synthetic
    image and every tuning photo is still flagged with the distance threshold `margin` times higher
    (reports/transfer/criterion.md); the lowest candidate if none passes. Returns it and one row per
    candidate (its threshold, whether it passed, the held-out share its distance alone flags)."""
    rows, chosen = [], None
    base = det.threshold
    for pct in sorted(candidates):
        t = float(np.percentile(held_scores, pct))
        det.threshold = t * margin
        m = measure(det, sets)
        passed = all(m[k]["flagged"] == m[k]["n"] for k in ("synthetic", tuning))
        det.threshold = t
        rows.append({"percentile": pct, "threshold": t, "passes_with_margin": passed,
                     "heldout_flagged_by_distance": float((held_scores > t).mean())})
        if passed:
            chosen = pct
    det.threshold = base
    return (chosen if chosen is not None else min(candidates)), rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--percentile", type=float, nargs="+", default=[98.0],
                   help="of the held-out slice's distances; several are candidates, the highest kept at which every "
                        "synthetic image and tuning photo is still flagged with the threshold --margin times higher")
    p.add_argument("--margin", type=float, default=1.25)
    p.add_argument("--colour-percentile", type=float, default=0.5)
    p.add_argument("--fit-per-class", type=int, default=200, help="images per class to fit on (at most)")
    p.add_argument("--other", type=Path, default=None,
                   help="another clinic's dermoscopy (HAM10000 layout): a share joins the fit, the rest is measured")
    p.add_argument("--other-aspect", default=None, metavar="W:H", help="un-squash its images first (isic2017: 4:3)")
    p.add_argument("--other-fit-share", type=float, default=0.5)
    p.add_argument("--check", type=int, default=2000,
                   help="dermoscopic images, neither fitted on nor thresholded on, to measure the flag rate on")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    predictor = Predictor(a.weights, with_ood=False)   # the file it replaces may be stale
    manifest = predictor.manifest
    md = load_metadata(a.data)
    held_ids = set(read_heldout(manifest.heldout_path)["image_id"])
    held = md[md["image_id"].isin(held_ids)].reset_index(drop=True)
    rest = md[~md["image_id"].isin(held_ids)]
    fit = pd.concat([g.sample(min(len(g), a.fit_per_class), random_state=0)
                     for _, g in rest.groupby("dx")]).reset_index(drop=True)
    # Fitting uses one view per image (4x cheaper; the Gaussian's spread covers the difference);
    # the threshold uses the served features (4 flip views).
    rng = np.random.default_rng(0)
    fit_images = [load_image(a.data, i) for i in fit["image_id"]]
    fit_images += [upload_variant(im, rng) for im in fit_images]
    other_fit = other_check = other_saturation = None
    if a.other is not None:
        from train.data.dataset import folder_image, parse_aspect
        from train.data.splits import SECOND_SOURCE_HALVES, draw_fit_half, load_halves
        aspect = parse_aspect(a.other_aspect)
        other = load_metadata(a.other)
        other_fit = draw_fit_half(other, a.other_fit_share)   # as make_halves draws what cv --second-source trains on
        halves = load_halves(SECOND_SOURCE_HALVES) if SECOND_SOURCE_HALVES.is_file() else None
        if halves is not None and set(halves["image_id"]) == set(other["image_id"]) and \
                set(halves.loc[halves["half"] == "fit", "image_id"]) != set(other_fit["image_id"]):
            p.error(f"--other-fit-share {a.other_fit_share} draws another half of {a.other} than "
                    f"{SECOND_SOURCE_HALVES.name}'s fit half, which the classifier may train on; keep the two the same")
        other_check = other[~other["image_id"].isin(set(other_fit["image_id"]))]
        extra = [folder_image(a.other, i, aspect) for i in other_fit["image_id"]]
        fit_images += extra + [upload_variant(im, rng) for im in extra]
        other_saturation = OODDetector.saturation(torch.stack(
            [unnormalise(predictor.image_tensor(im), predictor.spec) for im in extra])).numpy()
    f_fit, _ = trunk_features(predictor, fit_images, views=False)
    f_held, rgb_held = trunk_features(predictor, [load_image(a.data, i) for i in held["image_id"]])
    det = OODDetector.fit(f_fit.numpy())
    held_scores = det.score(f_held).numpy()
    # The colour floor: over all the dermoscopy fitted or thresholded on (other devices' is less saturated).
    saturation = OODDetector.saturation(rgb_held).numpy()
    if other_saturation is not None:
        saturation = np.concatenate([saturation, other_saturation])
    det.min_saturation = float(np.percentile(saturation, a.colour_percentile))
    sets = non_dermoscopic_features(predictor)
    percentile, candidates = a.percentile[0], None
    if len(a.percentile) > 1:
        percentile, candidates = choose_percentile(det, held_scores, sets, a.percentile, a.margin)
    det.threshold = float(np.percentile(held_scores, percentile))
    flagged_held = float(det.flags(f_held, rgb_held).numpy().mean())
    # The trunk is frozen ImageNet, so every image outside the fit sample and the slice is
    # unseen by the detector: an independent false-alarm rate on dermoscopy.
    unused = rest[~rest["image_id"].isin(set(fit["image_id"]))]
    check = unused.sample(min(len(unused), a.check), random_state=1)
    f_chk, rgb_chk = trunk_features(predictor, [load_image(a.data, i) for i in check["image_id"]])
    chk_flags = det.flags(f_chk, rgb_chk).numpy()
    flagged_check = float(chk_flags.mean())
    by_class = {dx: float(chk_flags[(check["dx"] == dx).to_numpy()].mean()) for dx in sorted(check["dx"].unique())}
    other_flagged = None
    if other_check is not None:
        f_o, rgb_o = trunk_features(predictor, [folder_image(a.other, i, aspect) for i in other_check["image_id"]])
        other_flagged = float(det.flags(f_o, rgb_o).numpy().mean())
    m = measure(det, sets)
    path = a.weights / "ood.safetensors"
    det.save(path)
    syn, tun, ev = m["synthetic"], m["tuning"], m["evaluation"]
    manifest = manifest.with_ood({
        "file": path.name, "sha256": sha256_file(path), "features": FEATURES, "threshold": det.threshold,
        "min_saturation": det.min_saturation,
        "method": "Mahalanobis distance of the shared frozen trunk's output (ImageNet lower stages; each "
                  "channel's mean over positions and the 4 flip views) to a Gaussian of dermoscopic "
                  "training images; or mean HSV saturation below min_saturation",
        "fitted_on": f"{len(fit)} images outside the held-out slice, at most {a.fit_per_class} per class"
                     + (f", and {len(other_fit)} images of {a.other.name} (another clinic's dermoscopy, "
                        f"{a.other_fit_share:.0%} of each class)" if other_fit is not None else "")
                     + ", each as given and once as an upload variant (JPEG quality 20-90, brightness x0.7-1.35, "
                     "30-70% resolution or contrast x0.7-1.3); one view each",
        "threshold_rule": f"{percentile}th percentile of the held-out slice's distances; colour: "
                          f"{a.colour_percentile}th percentile of its saturation"
                          + (f" and of the {len(other_fit)} {a.other.name} images fitted on" if other_fit is not None else "")
                          + (f"; the highest of the candidates {', '.join(f'{c:g}' for c in a.percentile)} at which every "
                             f"synthetic image and tuning photo is still flagged with the threshold x{a.margin:g} "
                             "(reports/transfer/criterion.md)" if candidates else ""),
        **({"threshold_candidates": candidates} if candidates else {}),
        "flagged_share": {"heldout": flagged_held, "n_heldout": len(held),
                          "dermoscopic_unused": flagged_check, "dermoscopic_unused_n": len(check),
                          "dermoscopic_unused_by_class": by_class,
                          **({"other_clinic": a.other.name, "other_clinic_unused": other_flagged,
                              "other_clinic_unused_n": len(other_check)} if other_check is not None else {}),
                          "synthetic_non_dermoscopic": syn["flagged"] / syn["n"], "synthetic_n": syn["n"],
                          "real_photos_tuning": tun["flagged"] / max(tun["n"], 1), "real_photos_tuning_n": tun["n"],
                          "real_photos_evaluation": ev["flagged"] / max(ev["n"], 1),
                          "real_photos_evaluation_n": ev["n"]},
        "synthetic_missed": syn["missed"],
        "real_photos": {"tuning": tun, "evaluation": ev, "sources_missing": m["sources_missing"],
                        "about": "photos that scikit-image, scikit-learn, gradio and matplotlib ship in "
                                 "their wheels, whole and as 6 crops each; split by source photo "
                                 "(train/data/real_photos.py)"},
        "fit_seconds": round(time.perf_counter() - t0, 1),
    })
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))   # its OOD section
    for c in candidates or []:
        print(f"candidate {c['percentile']:g}th percentile: threshold {c['threshold']:.2f}, held-out flagged by distance "
              f"{c['heldout_flagged_by_distance']:.1%}, every synthetic image and tuning photo flagged at x{a.margin:g}: "
              f"{'yes' if c['passes_with_margin'] else 'no'}")
    print(f"percentile {percentile:g}: threshold {det.threshold:.2f}, min saturation {det.min_saturation:.3f}; flagged: held-out slice "
          f"{flagged_held:.1%} of {len(held)} (threshold set there), other dermoscopic images {flagged_check:.1%} "
          f"of {len(check)} (by class: {', '.join(f'{k} {v:.1%}' for k, v in by_class.items())}), synthetic {syn['flagged']}/{syn['n']} "
          f"(missed: {', '.join(syn['missed']) or 'none'})"
          + (f"; {a.other.name} images not fitted on: {other_flagged:.1%} of {len(other_check)}" if other_check is not None else ""))
    for which, r in (("tuning", tun), ("evaluation", ev)):
        kinds = ", ".join(f"{k} {v['flagged']}/{v['n']}" for k, v in r["by_kind"].items())
        print(f"real photos, {which}: {r['flagged']}/{r['n']} ({kinds}); missed: {', '.join(r['missed']) or 'none'}")
    if m["sources_missing"]:
        print("not installed, so not measured:", ", ".join(m["sources_missing"]))
    print(f"{manifest.ood['fit_seconds']:.0f} s")


if __name__ == "__main__":
    main()
