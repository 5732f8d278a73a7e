"""Prints how long one full analysis takes, piece by piece, and the app's start-up and memory.

    python -m train.benchmark [--repeats 30] [--app]

Pieces: preprocessing, the shared trunk (once, 4 flip views), the upper stages of every
member of both ensembles, each ensemble's heads, SHAP (the fusion heads over 8 coalitions +
exact Shapley), the OOD check, each ensemble's Grad-CAM, and the whole `Predictor.analyze`. Medians after warm-up. With --app it
also starts `python app.py`, times its first HTTP answer, sends requests and reads its peak
memory (VmHWM). The machine is shared and noisy: compare figures within one run.
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

from lesion_app.gradcam import gradcam
from lesion_app.image_input import load_upload
from lesion_app.ood import OODDetector
from lesion_app.predictor import Predictor
from lesion_app.shapley import coalition_rows, shapley_values

REPO = Path(__file__).resolve().parent.parent
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
    pooled = p.pooled_features(x, low)
    rows = coalition_rows(meta, p.absent_row)
    size = (p.spec.height, p.spec.width)

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
        "OOD check": lambda: p.ood.score(OODDetector.features(pooled["image_only"])) if p.ood else None,
        f"Grad-CAM fusion ({n['fusion']} members, 1 backward)":
            lambda: gradcam(p.models["fusion"], low[:1].clone(), meta[None], 4, size),
        f"Grad-CAM image-only ({n['image_only']} members, 1 backward)":
            lambda: gradcam(p.models["image_only"], low[:1].clone(), None, 4, size),
        "TOTAL Predictor.analyze": lambda: p.analyze(image, 35, "female", "ear"),
    }
    print(f"device {p.device}, torch threads {torch.get_num_threads()}, {repeats} repeats, seconds")
    print(f"{'piece':48s} {'median':>8s} {'p90':>8s}")
    for name, fn in pieces.items():
        med, p90 = timed(fn, repeats)
        print(f"{name:48s} {med:8.4f} {p90:8.4f}")


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
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench_predictor(a.repeats)
    if a.app:
        bench_app()


if __name__ == "__main__":
    main()
