"""Prints how long one full analysis takes, piece by piece, and the app's start-up and memory.

    python -m train.evaluation.benchmark [--repeats 30] [--app] [--training]

Pieces: preprocessing, the shared trunk (once, 4 flip views), the upper stages of every
member of both ensembles, each ensemble's heads, SHAP (the fusion heads over 8 coalitions +
exact Shapley), the OOD check, each ensemble's Grad-CAM and LayerCAM (fine), the lesion outline (the segmenter on the trunk's pass) and its
measures, the similar-cases retrieval over the whole
archive (embedding from the kept features + search, no network pass), and the whole `Predictor.analyze`
(with Grad-CAM, and with LayerCAM (fine)). Medians after warm-up. With --app it
also starts `python app.py`, times its first HTTP answer, sends requests and reads its peak
memory (VmHWM). Also the live what-if's model time (Predictor.with_metadata; the page's own
part is tests/page_benchmark.py's). With --training it measures this
CPU's cache and training-step rates and extrapolates a full train.fitting.cv run (cache + 10
members). The machine is shared and noisy: compare figures within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from lesion_app.evidence.archive import SimilarQuery
from lesion_app.evidence.gradcam import gradcam, gradcam_from_kept
from lesion_app.evidence.lesion import lesion_findings
from lesion_app.files.image_input import load_upload
from lesion_app.evidence.ood import OODDetector
from lesion_app.analysis.predictor import Predictor
from lesion_app.evidence.shapley import coalition_rows, shapley_values
from train import REPO

EXAMPLE = REPO / "lesion_app" / "examples" / "images" / "ISIC_0024449.jpg"


def timed(fn, repeats: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t), sorted(t)[int(0.9 * (len(t) - 1))]


def bench_predictor(repeats: int) -> None:
    p = Predictor()
    image = load_upload(EXAMPLE)
    x = p.image_tensor(image)[None]
    meta = p.encode(35, "female", "ear")
    low = p.trunk_features(x)
    reference = p.frozen_features(x)   # what the OOD check and the archive read (the trunk's output as shipped)
    pooled = p.pooled_features(x, low)
    rows = coalition_rows(meta, p.absent_row)
    with torch.inference_mode():   # what an analysis keeps of the unflipped view for its heatmaps
        kept = {k: m.pooled_and_kept(low, [0])[1].clone() for k, m in p.models.items()}
    size = (p.spec.height, p.spec.width)
    raw = p.embedding(reference, pooled, 1) if p.archive is not None else None
    stage = p.trunk_and_outlines(x)[2].clone()   # the trunk's stride-8 stage, where the fine heatmaps start
    if p.segmenter is not None:
        outline = p.trunk_and_outlines(x)[1][0]
        shown = p.analyze(image).image
        cam = gradcam(p.models["fusion"], low[:1].clone(), meta[None], 4, (p.spec.height, p.spec.width))[0]

    def shap():
        probs = p.head_probabilities("fusion", pooled["fusion"].expand(-1, len(rows), -1, -1), rows)
        return shapley_values(probs.cpu().numpy())

    n = {k: len(m.members) for k, m in p.models.items()}
    pieces = {
        "load + preprocess image": lambda: p.image_tensor(load_upload(EXAMPLE)),
        "shared trunk, once (4 flip views)": lambda: p.trunk_features(x),
        f"upper stages, all {sum(n.values())} members (4 views)": lambda: p.pooled_features(x, low),
        "fusion ensemble heads": lambda: p.head_probabilities("fusion", pooled["fusion"], meta[None]),
        "image-only ensemble heads": lambda: p.head_probabilities("image_only", pooled["image_only"], meta[None]),
        "SHAP (8 coalitions, exact)": shap,
        "OOD check": lambda: p.ood.score(OODDetector.trunk_features(reference, 1)) if p.ood else None,
        f"Grad-CAM fusion ({n['fusion']} members, from the kept block outputs)":
            lambda: gradcam_from_kept(p.models["fusion"], kept["fusion"], meta[None], 4, size),
        f"Grad-CAM image-only ({n['image_only']} members, from the kept block outputs)":
            lambda: gradcam_from_kept(p.models["image_only"], kept["image_only"], None, 4, size),
        "Grad-CAM fusion, from the trunk output (upper stages again)":
            lambda: gradcam(p.models["fusion"], low[:1].clone(), meta[None], 4, size),
        "LayerCAM (fine) fusion (from the stride-8 stage)":
            lambda: gradcam(p.models["fusion"], low[:1].clone(), meta[None], 4, size, "LayerCAM (fine)", stage=stage),
        "LayerCAM (fine) image-only (from the stride-8 stage)":
            lambda: gradcam(p.models["image_only"], low[:1].clone(), None, 4, size, "LayerCAM (fine)", stage=stage),
        **({f"similar cases: embed + search {len(p.archive)} archive images, k=8":
            lambda: p.archive.similar(p.embedding(low, pooled, 1)),
            "similar cases: search only, k=16, same site and sex":
            lambda: p.archive.similar(raw, SimilarQuery(16, True, True), sex="female", site="ear")}
           if p.archive is not None else {}),
        **({"shared trunk + lesion outline (segmenter on the same pass)": lambda: p.trunk_and_outlines(x),
            "lesion measures and attention inside (one image)":
            lambda: lesion_findings(outline, shown, {"fusion": cam, "image_only": cam}, p.manifest.segmentation)}
           if p.segmenter is not None else {}),
        "TOTAL Predictor.analyze": lambda: p.analyze(image, 35, "female", "ear"),
        "TOTAL Predictor.analyze, LayerCAM (fine)": lambda: p.analyze(image, 35, "female", "ear",
                                                                      cam_method="LayerCAM (fine)"),
    }
    print(f"device {p.device}, torch threads {torch.get_num_threads()}, {repeats} repeats, seconds")
    print(f"{'piece':48s} {'median':>8s} {'p90':>8s}")
    for name, fn in pieces.items():
        med, p90 = timed(fn, repeats)
        print(f"{name:48s} {med:8.4f} {p90:8.4f}")


def bench_metadata_change(repeats: int) -> None:
    """Server time of a live what-if update's model work: Predictor.with_metadata on the kept
    features. The page's part (its figures, heatmap and tables, and Gradio's postprocessing) is
    tests/page_benchmark.py's: train/ imports nothing of the page."""
    p = Predictor()
    image = load_upload(EXAMPLE)
    a = p.analyze(image, 35, "female", "ear")
    ages = iter(range(10 ** 6))
    med, p90 = timed(lambda: p.with_metadata(a, 20 + next(ages) % 60, "male", "back"), repeats)
    print(f"{'metadata change: Predictor.with_metadata':48s} {med:8.4f} {p90:8.4f}")


def bench_training(threads: int = 2, steps: int = 6) -> None:
    """Measures the CPU's cache and training rates and extrapolates one full train.fitting.cv run."""
    import numpy as np
    from train.data.dataset import DEFAULT_DATA, load_image
    from lesion_app.classifier.manifest import Manifest
    from lesion_app.classifier.models import LesionClassifier
    from lesion_app.classifier.preprocess import InputSpec
    from train.data.features import N_VIEWS, image_views
    torch.set_num_threads(threads)
    manifest = Manifest.load(REPO / "weights")
    split = manifest.split_block
    ids = [p.stem for p in sorted((DEFAULT_DATA / "images").glob("*.jpg"))[:8]] if DEFAULT_DATA.is_dir() else []
    images = [load_image(DEFAULT_DATA, i) for i in ids] or [load_upload(EXAMPLE)] * 8
    model = LesionClassifier("concat", split_block=split).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        t = time.perf_counter()
        for im in images:
            low = model.lower(image_views(im, InputSpec()).contiguous(memory_format=torch.channels_last))
        cache_per_image = (time.perf_counter() - t) / len(images)
    for q in model.lower_parameters():
        q.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad])
    f = low[:1].repeat(64, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    meta = torch.zeros(64, 20)
    model.train()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model.head(model.upper(f), meta).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    n_train = statistics.mean(m["n_train"] for k in ("fusion", "image_only") for m in manifest.members(k))
    epochs = manifest.config("fusion")["epochs"]
    members = sum(len(manifest.members(k)) for k in ("fusion", "image_only"))
    member_s = epochs * np.ceil(n_train / 64) * step
    cache_s = 8480 * cache_per_image
    # The curriculum: pooled ImageNet features once (~5 min) and one out-of-fold ranking per fold
    # (74 s for 5,930 cases), both measured on this CPU (NOTES.md, README).
    rank_s = 300.0 + 5 * 74.0 * n_train / 5930
    total = cache_s + rank_s + members * member_s
    print(f"CPU training estimate ({threads} threads, {N_VIEWS} views, split at blocks[{split}]):")
    print(f"  cache {cache_per_image:.3f} s/image -> {cache_s / 60:.1f} min for 8,480 images")
    print(f"  one step of 64 {step:.2f} s -> one member ({epochs} epochs x {n_train:.0f} cases) {member_s / 60:.1f} min")
    print(f"  {members} members {members * member_s / 60:.1f} min + curriculum ranking {rank_s / 60:.1f} min")
    print(f"  total {total / 60:.1f} min (budget 150 min)")


def bench_app(requests: int = 20) -> None:
    from gradio_client import Client, handle_file
    port = 7900 + os.getpid() % 90
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() - t0 > 120:
                    raise RuntimeError("app did not answer within 120 s")
                time.sleep(0.2)
        print(f"app answers HTTP after {time.time() - t0:.1f} s")
        client = Client(url, verbose=False)
        lat = []
        for _ in range(requests):
            t = time.perf_counter()
            client.predict(handle_file(str(EXAMPLE)), 35, "female", "ear", api_name="/report")
            lat.append(time.perf_counter() - t)
        print(f"/report over loopback: median {statistics.median(lat):.3f} s over {requests} calls")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(l for l in status.splitlines() if l.startswith("VmHWM"))
        print(f"app peak memory (VmHWM): {int(hwm.split()[1]) / 1024:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--app", action="store_true", help="also time the app's start-up and memory")
    ap.add_argument("--training", action="store_true", help="also estimate a full train.fitting.cv run on this CPU")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench_predictor(a.repeats)
    bench_metadata_change(a.repeats)
    if a.app:
        bench_app()
    if a.training:
        bench_training()


if __name__ == "__main__":
    main()
