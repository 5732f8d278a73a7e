"""GPU smoke test (Spaces run the app on a dedicated GPU): on CUDA the app's inference path gives
the CPU's answer, the fp16 files load as fp32 on the GPU, Grad-CAM's hooks work there and are
released, and importing the app does no CUDA work. Skipped, with the reason, without CUDA.

Run `python -m pytest tests/test_gpu.py -s` to see the figures (differences and timings).
"""
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import EXAMPLES, REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")

CASES = pd.read_csv(EXAMPLES / "metadata.csv")
TOL = 1e-3
# Subprocesses import the repo first, and whatever the caller's PYTHONPATH holds (carried packages).
PYTHONPATH = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def case(i):
    from lesion_app.files.image_input import load_upload
    r = CASES.iloc[i]
    return load_upload(str(EXAMPLES / "images" / f"{r.image_id}.jpg")), float(r.age), r.sex, r.localization


def test_importing_the_app_does_no_cuda_work():
    modules = ["app", "lesion_app.classifier.weights", "lesion_app.classifier.models", "lesion_app.classifier.ensemble", "lesion_app.analysis.predictor",
               "lesion_app.evidence.gradcam", "lesion_app.evidence.ood", "lesion_app.classifier.hub", "lesion_app.files.image_input"]
    code = ("import importlib, importlib.util, sys, torch\n"
            f"mods = {modules!r} + (['lesion_app.page.ui'] if importlib.util.find_spec('gradio') else [])\n"
            "for m in mods: importlib.import_module(m)\n"
            "print(torch.cuda.is_initialized(), len(mods))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert r.returncode == 0, r.stderr[-3000:]
    initialized, n = r.stdout.split()
    assert initialized == "False", f"importing the app's modules initialised CUDA ({n} modules)"


@pytest.fixture(scope="module")
def predictors():
    from lesion_app.analysis.predictor import Predictor
    t0 = time.perf_counter()
    cpu = Predictor(device=torch.device("cpu"))
    t1 = time.perf_counter()
    gpu = Predictor()              # the app's default: CUDA when present
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"\n[gpu] {torch.cuda.get_device_name()}, torch {torch.__version__}; load: CPU {t1 - t0:.2f} s, "
          f"GPU {t2 - t1:.2f} s")
    return cpu, gpu


def test_fp16_weights_load_as_fp32_on_the_gpu(predictors):
    from safetensors import safe_open
    from lesion_app.classifier.weights import WEIGHTS_DIR
    _, gpu = predictors
    assert gpu.device.type == "cuda"
    with safe_open(WEIGHTS_DIR / gpu.manifest.trunk["file"], "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} >= {"F16"}      # on disk: fp16
    for k, ens in gpu.models.items():
        tensors = [*ens.parameters(), *(b for b in ens.buffers() if b.is_floating_point())]
        assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cuda")}, k
        assert not any(p.requires_grad for p in ens.parameters()), k


def timed(fn, n=5):
    """(first call s, median of the next n s) with CUDA synchronised."""
    def once():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t
    out, first = once()
    return out, first, float(np.median([once()[1] for _ in range(n)]))


def test_one_analysis_on_cuda_matches_the_cpu(predictors):
    cpu, gpu = predictors
    image, age, sex, site = case(0)
    a_cpu, cpu_first, cpu_med = timed(lambda: cpu.analyze(image, age, sex, site))
    a_gpu, gpu_first, gpu_med = timed(lambda: gpu.analyze(image, age, sex, site))
    r_cpu, r_gpu = a_cpu.to_report(), a_gpu.to_report()
    diffs = {k: float(np.abs(np.array(list(r_gpu[k]["probabilities"].values()))
                             - np.array(list(r_cpu[k]["probabilities"].values()))).max())
             for k in ("fusion", "image_only")}
    shap = max(abs(r_gpu["shap"][p] - r_cpu["shap"][p]) for p in ("base", "age", "sex", "site"))
    cams = {k: (getattr(a_gpu, k).cam, getattr(a_cpu, k).cam) for k in ("fusion", "image_only")}
    cam_diff = {k: float(np.abs(g - c).max()) for k, (g, c) in cams.items()}
    cam_corr = {k: float(np.corrcoef(g.ravel(), c.ravel())[0, 1]) for k, (g, c) in cams.items()}
    print(f"[gpu] analysis: max |GPU - CPU| probability fusion {diffs['fusion']:.2e}, image-only "
          f"{diffs['image_only']:.2e}; Shapley {shap:.2e}; Grad-CAM max diff {cam_diff}, corr {cam_corr}")
    print(f"[gpu] one analysis (both ensembles x 4 flips, both Grad-CAMs, SHAP, OOD): CPU first {cpu_first:.3f} s, "
          f"median {cpu_med:.3f} s; GPU first {gpu_first:.3f} s, median {gpu_med:.3f} s")
    assert max(diffs.values()) < TOL, diffs
    assert shap < TOL
    for k in ("fusion", "image_only"):
        assert r_gpu[k]["top"] == r_cpu[k]["top"]
        a, b = getattr(a_gpu, k), getattr(a_cpu, k)
        assert a.cam_class == b.cam_class and a.cam_empty == b.cam_empty
        assert a.cam.shape == b.cam.shape == (gpu.spec.height, gpu.spec.width)
        assert a.cam.dtype == b.cam.dtype and a.cam.max() > 0
        assert cam_corr[k] > 0.99, cam_corr     # Grad-CAM's hooks ran on the GPU's activations
    assert a_gpu.warnings == a_cpu.warnings
    # A metadata change and another heatmap class reuse the kept GPU features (the UI's path).
    w_cpu = cpu.with_metadata(a_cpu, None, "unknown", "unknown", cam_class="mel").to_report()
    w_gpu = gpu.with_metadata(a_gpu, None, "unknown", "unknown", cam_class="mel").to_report()
    for k in ("fusion", "image_only"):
        assert np.allclose(list(w_gpu[k]["probabilities"].values()), list(w_cpu[k]["probabilities"].values()),
                           atol=TOL)


def test_gradcam_hooks_are_released_and_nothing_accumulates_on_the_gpu(predictors):
    _, gpu = predictors
    image, age, sex, site = case(1)
    gpu.analyze(image, age, sex, site)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for cls in ("mel", "nv", "bcc"):
        gpu.analyze(image, age, sex, site, cam_class=cls)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    print(f"[gpu] memory allocated after 1 analysis {before / 2**20:.1f} MiB; grew {grown / 2**20:.2f} MiB over 3 more")
    assert grown < 8 * 2**20
    for ens in gpu.models.values():
        for m in ens.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, type(m).__name__
