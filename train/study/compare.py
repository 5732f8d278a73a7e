"""Which imbalance strategy and which fusion work best? A factorial study on cached features.

    python -m train.study.compare [--seeds 3] [--epochs 40] [--n-boot 1000] [--threads 1] [--out reports]

Every arm trains only a head, on the same frozen features: the whole backbone at its
ImageNet weights, pooled, 8 augmented views per image, cached once by train.data.features.
So a training takes seconds and arms differ only in what is studied:

  loss      ce | wce (class-weighted) | focal (class-weighted, gamma 2)      as in train.fitting.recipe
  sampling  none | balanced (inverse frequency) | curriculum (train.fitting.curriculum)
  fusion    image-only | concat | film | late (joint sum of logits)       the app's heads
            | mean | max of the image-only and a metadata-only model's probabilities

Every combination is trained with each seed on the committed split. Arms are ranked on
validation balanced accuracy (mean over seeds); validation and test figures come with
95% CIs from resampling whole lesions (of the seed-averaged metric). Writes
<out>/study.md and <out>/study.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from train.data.dataset import DEFAULT_DATA
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.vocab import CLASSES
from train.fitting.curriculum import BETA, FULL_AT, START
from train.data.features import DEFAULT_CACHE, N_VIEWS, TTA_VIEWS, build_pooled_imagenet
from train.data.splits import DEFAULT_SPLIT, SplitData
from train.fitting.objectives import LOSSES
from train.fitting.pooled_heads import Hyper, curriculum_rank, head_probs, train_head
from train.evaluation.stats import confusion_metrics, resample_counts

SAMPLINGS = ("none", "balanced", "curriculum")
FUSIONS = ("image_only", "concat", "film", "late", "mean", "max")
DECISION = ("mean", "max")     # combine two separately trained single-modality models
MEL = CLASSES.index("mel")
METRICS = ("balanced_accuracy", "macro_f1", "mel_recall")


@dataclass(frozen=True)
class Arm:
    loss: str
    sampling: str
    fusion: str

    @property
    def name(self) -> str:
        return f"{self.fusion} / {self.loss} / {self.sampling}"


def decision_fusion(p_image: np.ndarray, p_meta: np.ndarray, how: str) -> np.ndarray:
    """Mean, or renormalised element-wise max, of two models' class probabilities."""
    p = (p_image + p_meta) / 2 if how == "mean" else np.maximum(p_image, p_meta)
    return p / p.sum(1, keepdims=True)


def metric_table(y, probs_by_seed: list[np.ndarray], boot: np.ndarray) -> dict:
    """Seed-averaged metrics with lesion-bootstrap 95% CIs, and the spread over seeds."""
    plain = np.ones((1, len(y)))
    point, sampled = [], []
    for p in probs_by_seed:
        pred = p.argmax(1)
        point.append(confusion_metrics(y, pred, plain, len(CLASSES), MEL))
        sampled.append(confusion_metrics(y, pred, boot, len(CLASSES), MEL))
    out = {}
    for key, src in zip(METRICS, ("balanced_accuracy", "macro_f1", "recall")):
        per_seed = np.array([pt[src][0] for pt in point])
        dist = np.nanmean([s[src] for s in sampled], 0)
        out[key] = {"mean": float(per_seed.mean()), "seed_sd": float(per_seed.std()),
                    "ci": [float(np.nanquantile(dist, 0.025)), float(np.nanquantile(dist, 0.975))]}
    return out


def log(message: str) -> None:
    print(message, flush=True)


def run_study(data: Path, split: Path, cache: Path, seeds: int, hp: Hyper, n_boot: int) -> dict:
    t0 = time.time()
    d = SplitData.load(data, split, ("train", "val", "test"))
    pooled = build_pooled_imagenet(data, d.image_ids, cache)
    x = {s: torch.from_numpy(pooled[d.rows[s]].astype(np.float32)) for s in d.frames}
    groups = {s: d.frames[s]["lesion_id"].to_numpy() for s in d.frames}
    boot = {s: resample_counts(d.y[s], groups[s], n_boot) for s in ("val", "test")}
    t_features = time.time() - t0
    log(f"features ready in {t_features:.0f} s: " + ", ".join(f"{s} {len(d.y[s])}" for s in d.frames))

    ranks, curriculum_info = {}, {}
    probs: dict[Arm, dict[str, list]] = {}
    t_train = time.time()
    for seed in range(seeds):
        ranks[seed], curriculum_info[seed] = curriculum_rank(
            x["train"], d.meta["train"], d.y["train"], groups["train"], d.unknown, hp, seed)
        for loss, sampling in itertools.product(LOSSES, SAMPLINGS):
            single = {}
            for kind in ("image_only", "metadata_only", "concat", "film", "late"):
                t = time.time()
                head = train_head(kind, x["train"], d.meta["train"], d.y["train"], d.unknown, loss,
                                  sampling, hp, seed, ranks[seed])
                single[kind] = {s: head_probs(head, x[s], d.meta[s]) for s in ("val", "test")}
                val = confusion_metrics(d.y["val"], single[kind]["val"].argmax(1),
                                        np.ones((1, len(d.y["val"]))), len(CLASSES), MEL)
                log(f"seed {seed} {kind:13s} {loss:5s} {sampling:10s} val bacc "
                    f"{val['balanced_accuracy'][0]:.3f}  {time.time() - t:.1f}s")
            for how in DECISION:
                single[how] = {s: decision_fusion(single["image_only"][s], single["metadata_only"][s], how)
                               for s in ("val", "test")}
            for fusion, p in single.items():
                arm = Arm(loss, sampling, fusion)
                for s in ("val", "test"):
                    probs.setdefault(arm, {"val": [], "test": []})[s].append(p[s])
    train_seconds = time.time() - t_train

    rows = []
    for arm, p in probs.items():
        rows.append({**asdict(arm), "name": arm.name,
                     **{s: metric_table(d.y[s], p[s], boot[s]) for s in ("val", "test")}})
    rows.sort(key=lambda r: -r["val"]["balanced_accuracy"]["mean"])
    best = next(r for r in rows if r["fusion"] not in ("image_only", "metadata_only"))
    best_arm = Arm(best["loss"], best["sampling"], best["fusion"])
    neighbours = [arm for arm in probs if arm != best_arm
                  and sum(getattr(arm, k) != getattr(best_arm, k) for k in ("loss", "sampling", "fusion")) == 1]
    paired = [{"other": arm.name, **{s: paired_difference(d.y[s], probs[arm][s], probs[best_arm][s], boot[s])
                                     for s in ("val", "test")}} for arm in neighbours]
    return {"rows": rows, "best_on_validation": asdict(best_arm), "paired_with_best": paired,
            "factors": factor_summary(rows), "curriculum": curriculum_info[0],
            "hyper": asdict(hp), "seeds": seeds, "n_boot": n_boot,
            "n": {s: len(d.y[s]) for s in d.frames},
            "features": "tf_efficientnet_lite0 at ImageNet weights (frozen), pooled, "
                        f"{N_VIEWS} train views, mean logits over {TTA_VIEWS} evaluation views",
            "seconds": {"features": t_features, "training": train_seconds,
                        "total": time.time() - t0}}


def paired_difference(y, probs_other: list, probs_best: list, boot: np.ndarray) -> dict:
    """Best minus other in seed-averaged balanced accuracy, on the same lesion resamples:
    the difference, its 95% CI and a two-sided bootstrap p-value."""
    def bacc(probs_by_seed, weights):
        return np.mean([confusion_metrics(y, p.argmax(1), weights, len(CLASSES), MEL)["balanced_accuracy"]
                        for p in probs_by_seed], 0)
    diff = bacc(probs_best, boot) - bacc(probs_other, boot)
    point = float(bacc(probs_best, np.ones((1, len(y))))[0] - bacc(probs_other, np.ones((1, len(y))))[0])
    p = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))
    return {"difference": point, "ci": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))],
            "p_value": float(p)}


def factor_summary(rows: list[dict]) -> dict:
    """Per factor level: mean validation balanced accuracy over the other factors, and its best arm."""
    out = {}
    for factor, levels in (("loss", LOSSES), ("sampling", SAMPLINGS),
                           ("fusion", FUSIONS + ("metadata_only",))):
        out[factor] = {}
        for level in levels:
            sel = [r for r in rows if r[factor] == level]
            out[factor][level] = {
                "mean_val_bacc": float(np.mean([r["val"]["balanced_accuracy"]["mean"] for r in sel])),
                "best_arm": sel[0]["name"], "best_val_bacc": sel[0]["val"]["balanced_accuracy"]["mean"]}
    return out


def _cell(m: dict) -> str:
    return f"{m['mean']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"


def markdown(study: dict, shipped: dict | None) -> str:
    best = study["best_on_validation"]
    hp = study["hyper"]
    lines = [
        "## Imbalance and fusion study (`python -m train.study.compare`)", "",
        f"Every arm trains a head on the same frozen features ({study['features']}), "
        f"{hp['epochs']} epochs, {study['seeds']} seeds, on the committed lesion-grouped split "
        f"(train {study['n']['train']}, validation {study['n']['val']}, test {study['n']['test']} images). "
        "Arms are ranked on **validation** balanced accuracy (mean over seeds); the test columns are "
        f"reported, not used to choose. 95% CIs resample whole lesions ({study['n_boot']} resamples) "
        "of the seed-averaged metric; ± is the spread over seeds. Fusion `late` sums image and "
        "metadata logits in one jointly trained head; `mean` and `max` combine the probabilities of "
        "separately trained image-only and metadata-only models (the max renormalised).", "",
        f"**Best on validation:** fusion `{best['fusion']}`, loss `{best['loss']}`, sampling "
        f"`{best['sampling']}`.",
    ]
    if shipped is not None:
        same = all(shipped.get(k) == best[k] for k in best)
        lines.append(f"**Shipped fusion model:** fusion `{shipped['fusion']}`, loss `{shipped['loss']}`, "
                     f"sampling `{shipped['sampling']}`: "
                     + ("the study's best on validation." if same else
                        "**not** the study's best on validation."))
    lines += ["", "### By factor (mean validation balanced accuracy over the other factors)", "",
              "| factor | level | mean val bal. acc. | its best arm | best arm's val bal. acc. |",
              "|---|---|---|---|---|"]
    for factor, levels in study["factors"].items():
        for level, f in levels.items():
            lines.append(f"| {factor} | {level} | {f['mean_val_bacc']:.3f} | {f['best_arm']} | "
                         f"{f['best_val_bacc']:.3f} |")
    lines += ["", "### The best arm against the arms that differ from it in one factor", "",
              "Difference in balanced accuracy (best minus other), paired on the same lesion resamples. "
              f"{sum(c['val']['ci'][0] <= 0 for c in study['paired_with_best'])} of these "
              f"{len(study['paired_with_best'])} arms are not distinguishable from the best on validation "
              "(the CI includes 0)"
              + (": the ranking at the top is within noise." if any(c["val"]["ci"][0] <= 0 for c in
                                                                 study["paired_with_best"]) else "."), "",
              "| other arm | val difference [95% CI] | p | test difference [95% CI] | p |",
              "|---|---|---|---|---|"]
    for c in sorted(study["paired_with_best"], key=lambda c: c["val"]["difference"]):
        v, t = c["val"], c["test"]
        lines.append(f"| {c['other']} | {v['difference']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | "
                     f"{v['p_value']:.2f} | {t['difference']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}] | "
                     f"{t['p_value']:.2f} |")
    lines += ["", "### All arms (fusion / loss / sampling), best validation first", "",
              "| arm | val bal. acc. | val macro-F1 | val mel recall | test bal. acc. | test macro-F1 | "
              "test mel recall |", "|---|---|---|---|---|---|---|"]
    for r in study["rows"]:
        v, t = r["val"], r["test"]
        mark = " **(best)**" if all(r[k] == best[k] for k in best) else ""
        lines.append(f"| {r['name']}{mark} | {_cell(v['balanced_accuracy'])} ± {v['balanced_accuracy']['seed_sd']:.3f} "
                     f"| {_cell(v['macro_f1'])} | {_cell(v['mel_recall'])} | {_cell(t['balanced_accuracy'])} "
                     f"| {_cell(t['macro_f1'])} | {_cell(t['mel_recall'])} |")
    c = study["curriculum"]
    lines += ["", "### Curriculum", "",
              "Difficulty = 1 − mean true-class confidence of the image-only and metadata-only models "
              f"(scored out-of-fold on the training split) + {BETA} × their difference; ranked within "
              "each class. The class distribution moves from balanced (first epoch) to the training "
              f"frequencies (last epoch); each class's easiest {START:.0%} are eligible at first, all of "
              f"them from {FULL_AT:.0%} of training on. Mean difficulty by class (seed 0): "
              + ", ".join(f"{k} {v:.2f}" for k, v in c["difficulty_by_class"].items()) + ".", "",
              f"Wall time on this machine: features {study['seconds']['features']:.0f} s (read from the "
              "cache; building it is a one-off), "
              f"training {study['seconds']['training'] / 60:.1f} min, total "
              f"{study['seconds']['total'] / 60:.1f} min.",
              "", "Limits: these are heads on frozen ImageNet features, not fine-tuned backbones, so "
              "absolute figures are below the shipped models'; the study ranks recipes, and the shipped "
              "models are fine-tuned with the winning recipe (`python -m train.fitting.cv`)."]
    return "\n".join(lines) + "\n"


def shipped_recipe(weights: Path) -> dict | None:
    if not (weights / "manifest.json").is_file():
        return None
    cfg = Manifest.load(weights).config("fusion")
    return {"fusion": cfg["fusion"], "loss": cfg["loss"], "sampling": cfg["sampler"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=Hyper.epochs)
    p.add_argument("--folds", type=int, default=Hyper.folds)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1,
                   help="the published study ran with 1: another count changes float rounding, "
                        "which can reorder arms that are tied within noise")
    p.add_argument("--render", action="store_true",
                   help="only rewrite study.md from an existing study.json (e.g. after new weights)")
    a = p.parse_args(argv)
    if a.render:
        if not (a.out / "study.json").is_file():
            p.error(f"--render needs {a.out / 'study.json'}; run the study first")
        study = json.loads((a.out / "study.json").read_text())
        (a.out / "study.md").write_text(markdown(study, shipped_recipe(a.weights)))
        print(f"rewrote {a.out / 'study.md'}")
        return
    if not (a.data / "metadata.csv").is_file():
        p.error(f"no HAM10000 folder at {a.data} (expected metadata.csv there); pass --data")
    torch.set_num_threads(a.threads)
    study = run_study(a.data, a.split, a.cache, a.seeds, Hyper(epochs=a.epochs, folds=a.folds), a.n_boot)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "study.json").write_text(json.dumps(study, indent=1))
    (a.out / "study.md").write_text(markdown(study, shipped_recipe(a.weights)))
    print(f"best on validation: {study['best_on_validation']}; wrote {a.out}/study.md and study.json "
          f"in {study['seconds']['total'] / 60:.1f} min")


if __name__ == "__main__":
    main()
