"""Is the model looking at the lesion? Out-of-fold evidence for the page's attention warning.

    python -m train.evaluation.attention --run runs/seg [--per-fold 300] [--out reports/attention.md]

Reads top to bottom: for each fold k, a class-stratified sample of its images (not held out),
each seen by member k alone (the member that never trained on it) of each ensemble -> that
member's top class and its Grad-CAM map for it (the app's default heatmap) -> the share of the
map's mass inside the image's out-of-fold outline (train.fitting.segmentation's oof_masks.npz)
-> for each candidate threshold, how often "most of the evidence lies outside the lesion" fires
and the member's accuracy when it fires and when it does not -> the threshold, by a rule fixed
before the run: the highest of THRESHOLDS that fires on at most MAX_FIRE_RATE of the images for
both models (a warning that fires often stops being read) -> out.json and out.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.ensemble import Ensemble
from lesion_app.classifier.preprocess import to_tensor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.evidence.gradcam import gradcam
from lesion_app.classifier.segmenter import largest_component
from lesion_app.evidence.lesion import attention_inside, attention_ratio, no_lesion_reason
from lesion_app.paths import REPO
from train.data.dataset import DEFAULT_DATA, load_image, load_metadata
from train.data.splits import DEFAULT_FOLDS, load_folds, load_heldout
from train.evaluation.lesion_measures import at_input, oof_outlines

THRESHOLDS = (0.5, 0.45, 0.4, 0.35, 0.3)   # "most of the evidence outside" means under 0.5 inside
MAX_FIRE_RATE = 0.10
# The second rule, fixed after the first chose nothing (the share inside grows with the lesion's
# size, since an 8x6 map's blob is larger than a small lesion): most of the mass outside AND a map
# denser outside the outline than inside (inside/outside ratio under RATIO_UNDER).
RATIO_UNDER = (1.0, 0.75, 0.5)


def sample(frame, per_fold: int, seed: int = 0):
    """Up to per_fold images of each fold, every class as evenly as its count allows."""
    rng = np.random.default_rng(seed)
    picks = []
    for _, g in frame.groupby("fold"):
        per_class = max(1, per_fold // len(CLASSES))
        for _, c in g.groupby("dx"):
            picks += list(rng.choice(c.index, min(len(c), per_class), replace=False))
    return frame.loc[sorted(picks)]


@torch.no_grad()
def _top(member, low, meta) -> int:
    return int(member.head(member.upper(low), meta if member.uses_metadata else None).argmax())


def attention_rows(predictor: Predictor, data: Path, frame, outlines: dict) -> list[dict]:
    spec = predictor.spec
    rows = []
    for fold, g in frame.groupby("fold"):
        for kind in ("fusion", "image_only"):
            member = predictor.models[kind].members[int(fold)]
            alone = Ensemble([member])
            for r in g.itertuples():
                mask = largest_component(at_input(outlines[r.image_id], spec))
                if no_lesion_reason(mask):
                    continue
                x = to_tensor(load_image(data, r.image_id), spec)[None].to(predictor.device)
                meta = predictor.encode(None if r.age != r.age else r.age, r.sex, r.localization)[None]
                with torch.inference_mode():
                    low = predictor.trunk.lower(x.contiguous(memory_format=torch.channels_last))
                low = low.clone()
                top = _top(member, low, meta)
                heat, empty = gradcam(alone, low, meta if alone.uses_metadata else None, top,
                                      (spec.height, spec.width))
                rows.append({"image_id": r.image_id, "fold": int(fold), "kind": kind, "dx": r.dx,
                             "top": CLASSES[top], "correct": CLASSES[top] == r.dx, "area": float(mask.mean()),
                             "inside": None if empty else attention_inside(heat, mask),
                             "ratio": None if empty else attention_ratio(heat, mask)})
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {"by_threshold": {}, "share_inside": {}}
    for kind in ("fusion", "image_only"):
        r = [x for x in rows if x["kind"] == kind and x["inside"] is not None]
        inside = np.array([x["inside"] for x in r])
        correct = np.array([x["correct"] for x in r])
        out["share_inside"][kind] = {"n": len(r), "median": float(np.median(inside)),
                                     "quartiles": [float(q) for q in np.quantile(inside, [0.25, 0.75])],
                                     "accuracy": float(correct.mean())}
        for t in THRESHOLDS:
            fires = inside < t
            out["by_threshold"].setdefault(str(t), {})[kind] = {
                "fire_rate": float(fires.mean()), "n_fired": int(fires.sum()),
                "accuracy_when_fired": float(correct[fires].mean()) if fires.any() else None,
                "accuracy_otherwise": float(correct[~fires].mean()) if (~fires).any() else None}
    ok = [t for t in THRESHOLDS if all(out["by_threshold"][str(t)][k]["fire_rate"] <= MAX_FIRE_RATE
                                       for k in ("fusion", "image_only"))]
    out["threshold"] = ok[0] if ok else None
    out["rule"] = (f"the highest of {list(THRESHOLDS)} at which the warning fires on at most "
                   f"{MAX_FIRE_RATE:.0%} of out-of-fold images for both models")
    for q in RATIO_UNDER:
        for kind in ("fusion", "image_only"):
            r = [x for x in rows if x["kind"] == kind and x["inside"] is not None and x["ratio"] is not None]
            fires = np.array([x["inside"] < 0.5 and x["ratio"] < q for x in r])
            correct = np.array([x["correct"] for x in r])
            out.setdefault("by_ratio", {}).setdefault(str(q), {})[kind] = {
                "fire_rate": float(fires.mean()), "n_fired": int(fires.sum()),
                "accuracy_when_fired": float(correct[fires].mean()) if fires.any() else None,
                "accuracy_otherwise": float(correct[~fires].mean()) if (~fires).any() else None}
    area = np.array([x["area"] for x in rows if x["inside"] is not None])
    inside = np.array([x["inside"] for x in rows if x["inside"] is not None])
    out["share_inside_vs_area_correlation"] = float(np.corrcoef(area, inside)[0, 1])
    if out["threshold"] is None:
        ok = [q for q in RATIO_UNDER if all(out["by_ratio"][str(q)][k]["fire_rate"] <= MAX_FIRE_RATE
                                            for k in ("fusion", "image_only"))]
        out["ratio_under"] = ok[0] if ok else None
        out["threshold"] = 0.5 if ok else None
        out["rule"] += (f"; none did, so the second rule: share inside under 0.5 and the map's mean inside "
                        f"over its mean outside under the highest of {list(RATIO_UNDER)} that fires on at most "
                        f"{MAX_FIRE_RATE:.0%} for both models")
    return out


def render(r: dict) -> str:
    lines = ["# Is the model looking at the lesion? (out-of-fold)", "",
             f"Generated by `{r['command']}`. {r['n_images']} images of the 5 folds (class-stratified sample, "
             "held-out slice excluded), each seen by the one member of each ensemble that never trained on it; "
             "the map is that member's Grad-CAM for its own top class, the outline the image's out-of-fold "
             "outline.", "", "| model | images | median share inside [quartiles] | accuracy |", "|---|---|---|---|"]
    for k, s in r["share_inside"].items():
        lines.append(f"| {k} | {s['n']} | {s['median']:.2f} [{s['quartiles'][0]:.2f}–{s['quartiles'][1]:.2f}] | "
                     f"{s['accuracy']:.3f} |")
    lines += ["", "| threshold (share inside under) | model | fires on | accuracy when it fires | otherwise |",
              "|---|---|---|---|---|"]
    for t, kinds in r["by_threshold"].items():
        for k, s in kinds.items():
            fired = "–" if s["accuracy_when_fired"] is None else f"{s['accuracy_when_fired']:.3f}"
            lines.append(f"| {t} | {k} | {s['fire_rate']:.1%} ({s['n_fired']}) | {fired} | "
                         f"{s['accuracy_otherwise']:.3f} |")
    lines += ["", f"The share inside grows with the lesion's size (correlation with the outline's area share "
                  f"{r['share_inside_vs_area_correlation']:.2f}): a blob on an 8x6 grid is larger than a small lesion.",
              "", "| share inside under 0.5 and inside/outside ratio under | model | fires on | accuracy when it fires "
              "| otherwise |", "|---|---|---|---|---|"]
    for q, kinds in r.get("by_ratio", {}).items():
        for k, s in kinds.items():
            fired = "–" if s["accuracy_when_fired"] is None else f"{s['accuracy_when_fired']:.3f}"
            lines.append(f"| {q} | {k} | {s['fire_rate']:.1%} ({s['n_fired']}) | {fired} | "
                         f"{s['accuracy_otherwise']:.3f} |")
    chosen = (f"share inside under {r['threshold']}" + (f" and ratio under {r['ratio_under']}"
                                                          if r.get("ratio_under") else "")
              if r["threshold"] is not None else "none")
    lines += ["", f"Rule: {r['rule']}. Chosen: **{chosen}**."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a train.fitting.segmentation output folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--per-fold", type=int, default=300)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "attention.md")
    a = p.parse_args(argv)
    t0 = time.time()
    md = load_metadata(a.data).merge(load_folds(a.folds)[["image_id", "fold"]], on="image_id")
    md = md[~md["image_id"].isin(set(load_heldout(a.folds)["image_id"]))].reset_index(drop=True)
    frame = sample(md, a.per_fold)
    predictor = Predictor(with_ood=False)
    rows = attention_rows(predictor, a.data, frame, oof_outlines(a.run))
    result = {"command": f"python -m train.evaluation.attention --run {a.run} --per-fold {a.per_fold}",
              "n_images": int(len(frame)), **summarise(rows), "seconds": round(time.time() - t0, 1)}
    (a.run / "attention_rows.json").write_text(json.dumps(rows))   # per image, beside the run (not the tracked reports)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.out.write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
