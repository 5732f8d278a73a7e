"""`python -m train.fitting.full`: whole-network fine-tuning, alone and under torchrun (2 ranks, gloo)."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import REPO, run_module
from train.data.dataset import load_metadata
from lesion_app.classifier.models import LesionClassifier
from train.data.splits import resolve_split, validation_split
from train.fitting.full import BackboneError, FullConfig, WholeNetwork, build_model

SMALL = ("--size", "96x72", "--workers", "1", "--threads", "1")
TURNS = {"": None, "h": Image.Transpose.FLIP_LEFT_RIGHT, "v": Image.Transpose.FLIP_TOP_BOTTOM,
         "r": Image.Transpose.ROTATE_180}


@pytest.fixture
def tiny(example_folder, tmp_path):
    """28 images in the HAM10000 layout: each example and its flips and half-turn, each its own lesion."""
    md = pd.read_csv(example_folder / "metadata.csv")
    dst = tmp_path / "tiny"
    (dst / "images").mkdir(parents=True)
    rows = []
    for r in md.itertuples(index=False):
        with Image.open(example_folder / "images" / f"{r.image_id}.jpg") as im:
            for tag, turn in TURNS.items():
                image_id = r.image_id + tag
                (im.transpose(turn) if turn is not None else im).save(dst / "images" / f"{image_id}.jpg")
                rows.append({**r._asdict(), "image_id": image_id, "lesion_id": r.lesion_id + tag})
    pd.DataFrame(rows).to_csv(dst / "metadata.csv", index=False)
    return dst


def test_torchrun_two_ranks_train_one_model(tiny, tmp_path):
    """The issue's command (small inputs): 2 gloo ranks, run.json says world_size 2, and every rank
    ends with the same parameters (each rank's own checksum, gathered into run.json)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "train.fitting.full", "--data", str(tiny), "--epochs", "1", "--batch", "8",
                        "--out", str(out), "--cache", str(tmp_path / "cache"), *SMALL],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["backend"] == "gloo" and run["per_process_batch"] == 4
    sums = run["rank_param_sha256"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert run["config"]["sampler"] == "curriculum" and "curriculum difficulty ranked" in r.stdout
    assert (out / "split.csv").is_file() and run["split"].startswith("made on the fly")
    assert len(run["history"]) == 1 and 0.1 <= run["temperature"] <= 10
    assert r.stdout.count("epoch  0") == 1                              # only rank 0 logs
    # A lite0 run is the app's LesionClassifier: the file loads into it key for key.
    LesionClassifier("concat", pretrained=False).load_state_dict(load_file(out / "model.safetensors"))


def test_one_process_run_resumes_to_the_same_model(tiny, tmp_path):
    args = ("--data", tiny, "--epochs", 2, "--batch", 4, "--sampler", "balanced", *SMALL)
    straight = run_module("train.fitting.full", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_module("train.fitting.full", *args, "--out", tmp_path / "resumed", "--stop-after", 1)
    assert first.returncode == 0 and "stopped after epoch 0" in first.stdout
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    second = run_module("train.fitting.full", *args, "--out", tmp_path / "resumed", "--resume")
    assert second.returncode == 0 and "resumed after epoch 0" in second.stdout, second.stderr[-3000:]
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("straight", "resumed"))
    assert ra["temperature"] == rb["temperature"] and ra["world_size"] == rb["world_size"] == 1
    other = run_module("train.fitting.full", *args[:-6], "--size", "64x48", "--workers", "1", "--threads", "1",
                       "--out", tmp_path / "resumed", "--resume")
    assert other.returncode == 2 and "same settings" in other.stderr


def test_backbones_without_reachable_weights_are_a_clear_error(tiny, tmp_path):
    r = run_module("train.fitting.full", "--data", tiny, "--arch", "tf_efficientnet_lite3", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--weights-file" in r.stderr and "Traceback" not in r.stderr
    r = run_module("train.fitting.full", "--data", tiny, "--arch", "no_such_net", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no such architecture" in r.stderr
    # The cross-validated members train on the shared trunk's cache: whole-network flags are not theirs.
    # The cross-validated members need packaged ImageNet weights (lite0, Lite1, Lite2): no other backbone.
    r = run_module("train.fitting.cv", "--data", tiny, "--arch", "tf_efficientnet_lite3", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--arch" in r.stderr


def test_any_lite_backbone_starts_from_a_weights_file(tmp_path):
    donor = WholeNetwork("image_only", arch="tf_efficientnet_lite1", pretrained=False).backbone.state_dict()
    save_file({k: v.contiguous() for k, v in donor.items()}, tmp_path / "lite1.safetensors")
    cfg = FullConfig(arch="tf_efficientnet_lite1", init=str(tmp_path / "lite1.safetensors"))
    model, source = build_model(cfg, "concat", tmp_path / "lite1.safetensors")
    assert "lite1.safetensors" in source
    assert all(torch.equal(v, donor[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(BackboneError, match="do not fit"):
        build_model(FullConfig(arch="tf_efficientnet_lite0", init="x"), "concat", tmp_path / "lite1.safetensors")


def test_the_whole_network_forward_is_the_classifiers():
    torch.manual_seed(0)
    model, _ = build_model(FullConfig(), "film")
    ref = LesionClassifier("film", pretrained=False)
    ref.load_state_dict(model.state_dict())
    x, meta = torch.randn(2, 3, 96, 128), torch.randn(2, 20)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x, meta), ref.eval()(x, meta), atol=1e-5)


def test_other_folders_get_a_seeded_lesion_grouped_validation_split(tiny):
    df = load_metadata(tiny)
    # Two lesions per example now: the image and its left-right flip, the other two views.
    df["lesion_id"] = df["lesion_id"].str[:11] + df["image_id"].str[12:].isin(["", "h"]).map({True: "a", False: "b"})
    a, b = validation_split(df, seed=0), validation_split(df, seed=0)
    assert a.equals(b) and any(not a.equals(validation_split(df, seed=s)) for s in range(1, 5))
    assert set(a["split"]) == {"train", "val"}
    assert (a.groupby("lesion_id")["split"].nunique() == 1).all()
    split, name = resolve_split(tiny, None)
    assert isinstance(split, pd.DataFrame) and "made on the fly" in name
