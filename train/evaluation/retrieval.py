"""Which embedding finds similar confirmed cases best: the fold-based retrieval study.

    python -m train.evaluation.retrieval [--data DIR] [--weights DIR] [--out reports/retrieval.json]

Candidates (lesion_app.evidence.archive.EMBEDDINGS), all computed from what an analysis already has:
  trunk_mean   the shared frozen trunk's channel means (ImageNet features, 112-d)
  image_only   the image-only members' pooled features before the head
  fusion       the fusion members' pooled image features before the head

Protocol. For fold k, the queries are fold k's images (not held out) and the archive is every
other fold's images (not held out): lesion-disjoint by construction. A member's features are
scored only on the fold it never trained on, so fold k uses member k alone (queries unseen,
archive seen: as in the app, where the archive is the training images). The projection is fit
on fold k's archive. Each query ranks the archive's lesions by their most similar image.

Selection criterion, fixed before the runs: the class-balanced mean average precision of the
diagnosis (the mean over the 7 classes of that class's queries' AP), so that nevi (67% of
queries) do not decide it alone. Reported beside it: precision@1/8/16, plain mAP, and the k-NN
vote's balanced accuracy, macro AUC and melanoma AUC (plain and class-weighted, k = 4/8/16),
next to the shipped classifiers' out-of-fold figures on the same images; lesion-bootstrap 95%
CIs for the chosen embedding's vote. The held-out slice (no member trained on it) is then
queried against the whole archive with the shipped ensembles' embeddings: the app's setting.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lesion_app.evidence.archive import (EMBEDDINGS, K_CHOICES, VOTES, Projection, lesion_groups, lesion_similarity,
    raw_embedding, vote)
from lesion_app.evidence.ood import OODDetector
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.preprocess import InputSpec
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR
from train.data.dataset import DEFAULT_DATA, labels, load_image, load_metadata
from train.data.logits import kind_logits, read_logits
from train.data.splits import load_folds, read_heldout
from train.evaluation.metrics import balanced_accuracy, class_aucs, macro_auc, softmax
from train.evaluation.stats import bootstrap_ci

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "reports" / "retrieval.json"
CACHE = REPO / ".cache" / "retrieval"
DIMS = 128            # the projection's dimensions (the archive stores d fp16 values per image)
PRECISION_AT = (1, 8, 16)
SELECTION = ("class-balanced mean average precision of the diagnosis (mean over the 7 classes of that "
             "class's queries' average precision), lesion-disjoint fold queries")
MEL = CLASSES.index("mel")


# ----------------------------------------------------------------------------- features

def image_features(predictor: Predictor, data: Path, ids, batch: int = 16) -> dict[str, np.ndarray]:
    """Every image's candidate inputs, as the Predictor computes them for an analysis:
    {"trunk_mean": (N, C), kind: (M, N, F) each member's view-averaged pooled features}."""
    trunk, pooled = [], {k: [] for k in MODEL_KEYS}
    with torch.inference_mode():
        for s in tqdm(range(0, len(ids), batch), desc="features", unit="batch", mininterval=10, disable=None):
            x = torch.stack([predictor.image_tensor(load_image(data, i)) for i in ids[s:s + batch]])
            # One pass: the shared trunk's output (for the members) and the frozen ImageNet trunk's
            # (what the served archive embeds as trunk_mean, whatever the members' split or backbone).
            views = predictor.views(x)
            low, reference, _ = predictor.frozen.run(views, reference=True)
            trunk.append(OODDetector.trunk_features(reference, len(x)).numpy())
            for k, p in predictor.pooled_features(x, low, views).items():
                pooled[k].append(p.mean(2).half().cpu().numpy())
    return {"trunk_mean": np.concatenate(trunk), **{k: np.concatenate(v, 1) for k, v in pooled.items()}}


def cached_features(predictor: Predictor, data: Path, ids, cache: Path = CACHE) -> dict[str, np.ndarray]:
    """image_features, kept in cache/ per weights version, member hashes, input spec and image list."""
    key = hashlib.sha256(json.dumps([predictor.model_info, list(ids)]
                                    + ([predictor.spec.to_dict()] if predictor.spec != InputSpec() else []))
                         .encode()).hexdigest()[:16]
    path = cache / f"features-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    feats = image_features(predictor, data, list(ids))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **feats)
    path.with_suffix(".tmp.npz").replace(path)
    return feats


def embed(name: str, feats: dict[str, np.ndarray], rows: np.ndarray, members=None) -> torch.Tensor:
    """Raw embeddings of the given rows; members: which members of the kind (default all)."""
    trunk = torch.from_numpy(feats["trunk_mean"][rows])
    pooled = {}
    if name != "trunk_mean":
        p = feats[name] if members is None else feats[name][list(members)]
        pooled[name] = torch.from_numpy(p[:, rows].astype(np.float32))[:, :, None, :]   # (M, B, V=1, F)
    return raw_embedding(name, trunk, pooled)


# ----------------------------------------------------------------------------- scoring one ranking

def ranking_scores(by_lesion: np.ndarray, query_dx: np.ndarray, lesion_dx: np.ndarray, prior: np.ndarray) -> dict:
    """From (Q, L) lesion similarities: per query AP and precision@k, and the votes per k."""
    order = np.argsort(-by_lesion, axis=1)
    hits = lesion_dx[order] == query_dx[:, None]                  # (Q, L) relevant, in rank order
    ranks = np.arange(1, hits.shape[1] + 1)
    n_rel = hits.sum(1)
    ap = np.where(n_rel > 0, (np.cumsum(hits, 1) / ranks * hits).sum(1) / np.maximum(n_rel, 1), 0.0)
    out = {"ap": ap, **{f"p@{k}": hits[:, :k].mean(1) for k in PRECISION_AT}}
    for k in K_CHOICES:
        codes = lesion_dx[order[:, :k]]
        for w in VOTES:
            out[f"vote_{w}_k{k}"] = vote(codes, prior, w)
    return out


def summarise(scores: dict, y: np.ndarray) -> dict:
    """Retrieval figures over all queries: precision@k, mAP, class-balanced mAP, vote metrics."""
    s = {"n_queries": int(len(y)), "mAP": float(scores["ap"].mean()),
         "class_balanced_mAP": float(np.mean([scores["ap"][y == c].mean() for c in np.unique(y)])),
         **{f"precision@{k}": float(scores[f"p@{k}"].mean()) for k in PRECISION_AT}, "votes": {}}
    for key, probs in scores.items():
        if key.startswith("vote_"):
            s["votes"][key[5:]] = vote_metrics(y, probs)
    return s


def vote_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    return {"balanced_accuracy": balanced_accuracy(y, probs), "macro_auc": macro_auc(y, probs),
            "mel_auc": class_aucs(y, probs)[MEL]}


# ----------------------------------------------------------------------------- the study

def fold_study(name: str, feats: dict, df: pd.DataFrame, y: np.ndarray) -> tuple[dict, dict]:
    """One candidate over the folds: its summary and the per-query scores (in df row order)."""
    n_folds = int(df["fold"].max()) + 1
    pooled = {}
    for fold in range(n_folds):
        base = ~df["heldout"].to_numpy()
        q = np.flatnonzero(base & (df["fold"] == fold).to_numpy())
        a = np.flatnonzero(base & (df["fold"] != fold).to_numpy())
        members = None if name == "trunk_mean" else [fold]
        xa, xq = embed(name, feats, a, members), embed(name, feats, q, members)
        proj = Projection.fit(xa, min(DIMS, xa.shape[1]))
        order, starts = lesion_groups(df["lesion_id"].to_numpy()[a])
        a = a[order]
        za, zq = proj(xa[torch.from_numpy(order)]), proj(xq)
        by_lesion = lesion_similarity((zq @ za.T).numpy().astype(np.float64), starts)
        lesion_dx = y[a][starts]
        prior = np.bincount(lesion_dx, minlength=len(CLASSES)) / len(lesion_dx)
        scores = ranking_scores(by_lesion, y[q], lesion_dx, prior)
        for key, v in scores.items():
            pooled.setdefault(key, np.zeros((len(df),) + v.shape[1:]))[q] = v
    rows = np.flatnonzero(~df["heldout"].to_numpy())
    per_query = {k: v[rows] for k, v in pooled.items()}
    return summarise(per_query, y[rows]), per_query


def heldout_study(name: str, feats: dict, df: pd.DataFrame, y: np.ndarray) -> dict:
    """The app's setting: held-out images against the whole archive, with every member's features."""
    held, a = np.flatnonzero(df["heldout"].to_numpy()), np.flatnonzero(~df["heldout"].to_numpy())
    xa, xq = embed(name, feats, a), embed(name, feats, held)
    proj = Projection.fit(xa, min(DIMS, xa.shape[1]))
    order, starts = lesion_groups(df["lesion_id"].to_numpy()[a])
    a = a[order]
    by_lesion = lesion_similarity((proj(xq) @ proj(xa[torch.from_numpy(order)]).T).numpy().astype(np.float64),
                                  starts)
    lesion_dx = y[a][starts]
    prior = np.bincount(lesion_dx, minlength=len(CLASSES)) / len(lesion_dx)
    return summarise(ranking_scores(by_lesion, y[held], lesion_dx, prior), y[held])


def classifier_figures(df: pd.DataFrame, y: np.ndarray, oof_logits: Path, predictor: Predictor) -> dict:
    """The shipped classifiers' calibrated out-of-fold vote metrics on the same query images."""
    rows = np.flatnonzero(~df["heldout"].to_numpy())
    frame = read_logits(oof_logits)
    ids = df["image_id"].to_numpy()[rows]
    return {k: vote_metrics(y[rows], softmax(kind_logits(frame, k, ids), predictor.temperature[k]))
            for k in MODEL_KEYS}


def study(data: Path, weights: Path, oof_logits: Path, n_boot: int = 1000) -> dict:
    t0 = time.time()
    predictor = Predictor(weights, with_ood=False)
    md = load_metadata(data)
    folds_csv = predictor.manifest.folds_path
    df = md.merge(load_folds(folds_csv)[["image_id", "fold"]], on="image_id", how="inner")
    df["heldout"] = df["image_id"].isin(set(read_heldout(predictor.manifest.heldout_path)["image_id"]))
    y = labels(df)
    feats = cached_features(predictor, data, df["image_id"].tolist())
    t_feats = time.time() - t0
    result = {"selection": SELECTION, "protocol": __doc__.split("Protocol. ")[1].split("\n\n")[0].replace("\n", " "),
              "dims": DIMS, "n_images": int(len(df)), "n_heldout": int(df["heldout"].sum()),
              "candidates": {}, "heldout": {}, "classifiers_out_of_fold": classifier_figures(df, y, oof_logits,
                                                                                              predictor)}
    per_query = {}
    for name in EMBEDDINGS:
        result["candidates"][name], per_query[name] = fold_study(name, feats, df, y)
    chosen = max(EMBEDDINGS, key=lambda n: result["candidates"][n]["class_balanced_mAP"])
    result["chosen"] = chosen
    rows = np.flatnonzero(~df["heldout"].to_numpy())
    groups = df["lesion_id"].to_numpy()[rows]
    result["chosen_vote_ci"] = {
        key: {m: dict(zip(("value", "low", "high"),
                          bootstrap_ci(fn, y[rows], per_query[chosen][f"vote_{key}"], groups, n_boot=n_boot)))
              for m, fn in (("balanced_accuracy", balanced_accuracy), ("macro_auc", macro_auc),
                            ("mel_auc", lambda yy, p: class_aucs(yy, p)[MEL]))}
        for key in ("class_weighted_k8", "plain_k8")}
    for name in EMBEDDINGS:
        result["heldout"][name] = heldout_study(name, feats, df, y)
    result["seconds"] = {"features": round(t_feats, 1), "total": round(time.time() - t0, 1)}
    result["weights"] = predictor.model_info
    return result


def markdown(r: dict) -> str:
    """reports/retrieval.md from the study's JSON."""
    def row(name, s):
        v8, p8 = s["votes"]["class_weighted_k8"], s["votes"]["plain_k8"]
        return (f"| {name} | {s['precision@1']:.3f} | {s['precision@8']:.3f} | {s['precision@16']:.3f} | "
                f"{s['mAP']:.3f} | {s['class_balanced_mAP']:.3f} | {v8['balanced_accuracy']:.3f} | "
                f"{v8['macro_auc']:.3f} | {v8['mel_auc']:.3f} | {p8['balanced_accuracy']:.3f} | "
                f"{p8['macro_auc']:.3f} | {p8['mel_auc']:.3f} |")
    head = ("| embedding | P@1 | P@8 | P@16 | mAP | class-bal. mAP | vote BA (cw, k=8) | macro AUC | mel AUC "
            "| vote BA (plain, k=8) | macro AUC | mel AUC |\n|" + "---|" * 12)
    lines = ["# Similar confirmed cases: which embedding retrieves best", "",
             "Generated by `python -m train.evaluation.retrieval`.", "",
             f"**Protocol.** {r['protocol']}", "", f"**Selection criterion** (fixed before the runs): {r['selection']}.",
             f" Chosen: **{r['chosen']}**.", "",
             f"## Out-of-fold, lesion-disjoint ({r['candidates'][r['chosen']]['n_queries']} queries)", "", head]
    lines += [row(n, s) for n, s in r["candidates"].items()]
    lines += ["", "cw = class-weighted vote (each class's count divided by its share of the archive's lesions); "
              "plain = counts. Vote over the k most similar lesions, each lesion once.", "",
              "The shipped classifiers on the same images (calibrated out-of-fold):", "",
              "| model | balanced acc. | macro AUC | mel AUC |", "|---|---|---|---|"]
    lines += [f"| {k} | {m['balanced_accuracy']:.3f} | {m['macro_auc']:.3f} | {m['mel_auc']:.3f} |"
              for k, m in r["classifiers_out_of_fold"].items()]
    lines += ["", f"### The chosen embedding's vote by k ({r['chosen']}, out-of-fold)", "",
              "| vote | k | balanced acc. | macro AUC | mel AUC |", "|---|---|---|---|---|"]
    for key, m in r["candidates"][r["chosen"]]["votes"].items():
        w, k = key.rsplit("_k", 1)
        lines.append(f"| {w} | {k} | {m['balanced_accuracy']:.3f} | {m['macro_auc']:.3f} | {m['mel_auc']:.3f} |")
    lines += ["", "95% lesion-bootstrap CIs of the chosen embedding's k = 8 vote:", ""]
    for key, cis in r["chosen_vote_ci"].items():
        lines.append(f"- {key}: " + ", ".join(f"{m} {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
                                             for m, c in cis.items()))
    lines += ["", f"## Held-out slice against the whole archive, shipped ensembles' embeddings "
              f"({r['n_heldout']} images no member trained on)", "", head]
    lines += [row(n, s) for n, s in r["heldout"].items()]
    lines += ["", f"Features for {r['n_images']} images in {r['seconds']['features']:.0f} s; "
              f"whole study {r['seconds']['total']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--oof-logits", type=Path, default=REPO / "reports" / "oof_logits.csv",
                   help="the shipped members' out-of-fold logits (train.fitting.cv)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON to write; the Markdown goes beside it")
    p.add_argument("--bootstrap", type=int, default=1000)
    a = p.parse_args(argv)
    if not (a.data / "metadata.csv").is_file():
        p.error(f"{a.data} has no metadata.csv: point --data at the HAM10000 folder")
    r = study(a.data, a.weights, a.oof_logits, a.bootstrap)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=1))
    a.out.with_suffix(".md").write_text(markdown(r))
    for n, s in r["candidates"].items():
        v = s["votes"]["class_weighted_k8"]
        print(f"{n:11s} class-balanced mAP {s['class_balanced_mAP']:.4f}  mAP {s['mAP']:.4f}  P@1 {s['precision@1']:.3f}"
              f"  vote(cw,k8) BA {v['balanced_accuracy']:.3f} AUC {v['macro_auc']:.3f} mel {v['mel_auc']:.3f}")
    print(f"chosen: {r['chosen']}; wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
