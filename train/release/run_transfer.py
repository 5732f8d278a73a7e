"""One cross-validation run's ensemble scored on another clinic's folder before it is bundled, paired
with the shipped ensemble's predictions on the same images (issue 37: compare recipes on transfer). It
is part of the release decision, so it lives in train.release, which may read a run's members
(train.fitting); train.evaluation may not.

    python -m train.release.run_transfer --cv RUN [--kind fusion] [--other ../shared/data/isic2017]
                                         [--aspect 4:3] [--heldout-half train/splits/isic2017_halves.csv]
                                         --against P.csv --out OUT
    (P.csv: python -m train.evaluation.evaluate --data ../shared/data/isic2017 --aspect 4:3 --out m.json
     --predictions P.csv, with the weights to compare against)

RUN is a train.fitting.cv folder whose --kind members are finished (the other kind may still be
training; cv.json must hold this kind's temperature). Each image goes through the run's own input spec
(cv.json's input_spec) and the app's 4 flips; each member is its fp16 file on the ImageNet lower
stages, exactly what the bundle would serve; the ensemble is the members' mean logit at the run's
temperature. P.csv is train.evaluation.evaluate's --predictions of the same folder with the weights to
compare against (its rows for --kind). Writes OUT.json and OUT.csv (this run's probabilities), and
prints the transfer figures of both and their paired differences (95% CIs from 1,000 image
resamples; the folder has no lesion ids), as reports/transfer/criterion.md asks.

--heldout-half FILE scores only that halves file's held-out half (train.data.make_halves). A run that
trained on a second source (cv.json's second_source) is always scored on its held-out half only, never
on images it trained on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from lesion_app.classifier.metadata import AgeScaler, encode_frame
from lesion_app.classifier.models import ARCH, LesionClassifier
from lesion_app.classifier.preprocess import InputSpec, flip_views, to_tensor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.paths import REPO
from train.data.dataset import labels, load_metadata
from train.data.splits import load_halves, not_trained_on
from train.data.dataset import folder_image, parse_aspect
from train.evaluation.metrics import balanced_accuracy, mel_auc, mel_vs_nv_auc, softmax, transfer_figures
from train.evaluation.stats import paired_bootstrap
from train.fitting.recipe import Config, tta_logits
from train.fitting.members import member_dir

OTHER = REPO.parent / "shared" / "data" / "isic2017"
PAIRED = {"balanced_accuracy": balanced_accuracy, "mel_auc": mel_auc, "mel_vs_nv_auc": mel_vs_nv_auc}


@torch.inference_mode()
def lower_features(images, spec: InputSpec, split_block: int, arch: str, batch: int = 8) -> torch.Tensor:
    """(N, 4, C, h, w) fp32: the frozen ImageNet lower stages over the app's 4 flips of each image."""
    model = LesionClassifier("image_only", arch=arch, split_block=split_block).eval()
    out = []
    for s in tqdm(range(0, len(images), batch), desc="lower stages", mininterval=10, disable=None):
        x = flip_views(torch.stack([to_tensor(im, spec) for im in images[s:s + batch]]))
        f = model.lower(x.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        out.append(f.view(*x.shape[:2], *f.shape[1:]))
    return torch.cat(out)


def member_logits(run: Path, kind: str, feats: torch.Tensor, meta: torch.Tensor, split_block: int,
                  arch: str) -> np.ndarray:
    """(members, N, classes): each finished member of kind, from its fp16 file, over the 4 flips."""
    out, fold = [], 0
    while (member_dir(run, kind, fold) / "member.safetensors").is_file():
        d = member_dir(run, kind, fold)
        cfg = Config(**json.loads((d / "member.json").read_text())["config"])
        model = LesionClassifier(cfg.head, arch=arch, split_block=split_block)
        state = {k: v.float() for k, v in load_file(d / "member.safetensors").items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not model.is_lower_key(k) for k in missing):
            raise ValueError(f"{d / 'member.safetensors'} does not fit the {cfg.head} model split at {split_block}")
        with torch.inference_mode():
            out.append(tta_logits(model.eval(), feats, meta if model.uses_metadata else None))
        fold += 1
    if not out:
        raise ValueError(f"{run} has no finished {kind} member (no {kind}_fold0/member.safetensors)")
    return np.stack(out)


def paired(metric, y, probs_a, probs_b) -> dict | None:
    """metric(b) - metric(a) with its 95% CI over 1,000 image resamples (stats.paired_bootstrap); None
    where the folder lacks the classes the metric needs; a CI of None where resamples may lack them."""
    if metric(y, probs_a) is None or metric(y, probs_b) is None:
        return None
    defined = lambda yy, pp: np.nan if (v := metric(yy, pp)) is None else v   # noqa: E731
    r = paired_bootstrap(defined, y, probs_a, probs_b, np.arange(len(y)))
    return r if np.isfinite(r["ci"]).all() else {**r, "ci": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cv", type=Path, required=True, help="a train.fitting.cv run folder")
    p.add_argument("--kind", default="fusion", choices=("fusion", "image_only"))
    p.add_argument("--other", type=Path, default=OTHER)
    p.add_argument("--aspect", default=None, metavar="W:H",
                   help="un-squash the folder's images to W:H first (isic2017: 4:3)")
    p.add_argument("--heldout-half", type=Path, default=None, metavar="HALVES.csv",
                   help="score only this halves file's held-out half (automatic for a run trained on a second source)")
    p.add_argument("--against", type=Path, required=True, help="evaluate's --predictions CSV of the same folder")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.csv")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    cv_file = a.cv / "cv.json"
    if not cv_file.is_file():
        p.error(f"{cv_file} not found: cv writes it when a --kinds invocation finishes")
    cv = json.loads(cv_file.read_text())
    if a.kind not in cv.get("out_of_fold", {}):
        p.error(f"{cv_file} holds no {a.kind} temperature; run train.fitting.cv --kinds {a.kind} to its end first")
    try:
        aspect = parse_aspect(a.aspect)
    except ValueError as e:
        p.error(str(e))
    spec = InputSpec(**cv.get("input_spec", {}))
    split_block, arch = int(cv["split_block"]), cv.get("arch", ARCH)
    md = load_metadata(a.other)
    against = pd.read_csv(a.against)
    against = against[against["model"] == a.kind].set_index("image_id")
    if set(against.index) != set(md["image_id"]):
        p.error(f"{a.against} does not score the same images of {a.other} as {a.kind}")
    try:   # never the images the run trained on (a second source's fit half)
        md, which = not_trained_on(md, cv.get("second_source"))
    except ValueError as e:
        p.error(f"{a.cv}: {e}")
    if a.heldout_half is not None:
        if which != "all":
            p.error(f"{a.cv} trained on a fit half of {a.other.name}; it is scored on that file's held-out half "
                    "(leave --heldout-half out)")
        try:
            halves = load_halves(a.heldout_half)
        except (OSError, ValueError) as e:
            p.error(str(e))
        if set(halves["image_id"]) != set(md["image_id"]):
            p.error(f"{a.heldout_half} does not list exactly the images of {a.other}")
        md = md[md["image_id"].isin(set(halves.loc[halves["half"] == "heldout", "image_id"]))].reset_index(drop=True)
        which = f"the held-out half of {a.heldout_half}"
    y = labels(md)
    meta = torch.from_numpy(encode_frame(md, AgeScaler(**cv["age_scaler"])))
    feats = lower_features([folder_image(a.other, i, aspect) for i in md["image_id"]], spec, split_block, arch)
    logits = member_logits(a.cv, a.kind, feats, meta, split_block, arch)
    probs = softmax(logits.mean(0), cv["out_of_fold"][a.kind]["temperature"])
    base = against.loc[md["image_id"], list(CLASSES)].to_numpy()
    result = {"run": str(a.cv), "kind": a.kind, "members": len(logits), "input_spec": spec.to_dict(),
              "folder": str(a.other), "aspect": a.aspect, "n": len(md), "against": str(a.against),
              "images": which,
              "run_figures": transfer_figures(y, probs), "against_figures": transfer_figures(y, base),
              "balanced_accuracy": {"run": balanced_accuracy(y, probs), "against": balanced_accuracy(y, base)},
              "paired_difference": {k: paired(m, y, base, probs) for k, m in PAIRED.items()},
              "seconds": round(time.time() - t0, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    pd.DataFrame(probs, columns=list(CLASSES)).assign(image_id=md["image_id"].to_numpy(), model=a.kind)[
        ["image_id", "model", *CLASSES]].to_csv(a.out.with_suffix(".csv"), index=False)
    for k, d in result["paired_difference"].items():
        if d is None:
            print(f"{k}: not defined on this folder")
            continue
        ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
        print(f"{k}: against {PAIRED[k](y, base):.4f}, run {PAIRED[k](y, probs):.4f}, difference "
              f"{d['difference']:+.4f}{ci}")
    print(f"{len(logits)} {a.kind} members of {a.cv} on {len(md)} images of {a.other.name} "
          f"({result['images']}) in {result['seconds']:.0f} s; "
          f"wrote {a.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
