"""Lesion segmentation: the scores, the training command on a folder made here, and the mask it
writes at an image's own size."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_module
from lesion_app.classifier.preprocess import InputSpec
from lesion_app.classifier.segmenter import LesionSegmenter, lower_with_stages, mask_for_image
from lesion_app.classifier.models import LesionClassifier
from train.evaluation.segmentation_metrics import mask_scores


def test_dice_jaccard_and_the_threshold_jaccard_on_known_masks():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True                    # 50 pixels
    b = np.zeros((10, 10), bool)
    b[:, :4] = True                    # 40 pixels, all inside a
    s = mask_scores([a, a, b, np.zeros_like(a)], [a, b, a, np.zeros_like(a)])
    assert s["dice"].tolist() == pytest.approx([1.0, 80 / 90, 80 / 90, 1.0])
    assert s["jaccard"].tolist() == pytest.approx([1.0, 0.8, 0.8, 1.0])
    c = np.zeros((10, 10), bool)
    c[:, :2] = True                    # Jaccard 20/50 = 0.4 < 0.65: counts 0
    assert mask_scores([c], [a])["threshold_jaccard"].tolist() == [0.0]


def test_the_trunk_pass_with_stages_is_the_trunk_pass():
    torch.manual_seed(0)
    m = LesionClassifier("image_only", pretrained=False).eval()
    x = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        low, stages = lower_with_stages(m, x)
        assert torch.equal(low, m.lower(x))
        assert [s.shape[1:] for s in stages] == [(24, 48, 64), (40, 24, 32), (80, 12, 16)]
        assert LesionSegmenter()(stages).shape == (2, 1, 48, 64)


def test_a_mask_maps_back_to_the_whole_image_outside_the_crop_empty():
    spec = InputSpec()
    prob = np.zeros((spec.height, spec.width))
    prob[:, :] = 1.0
    mask = mask_for_image(prob, (400, 150), spec)      # wider than 4:3: a centre crop 200 wide
    assert mask.shape == (150, 400) and mask[:, 100:300].all() and not mask[:, :100].any()


@pytest.fixture
def masked_folder(example_folder, tmp_path):
    """The 7 examples and a flipped copy of each as another lesion, each with a mask of its
    darker-than-median pixels (a stand-in outline, enough to train on)."""
    md = pd.read_csv(example_folder / "metadata.csv")
    extra = md.assign(image_id=md["image_id"] + "_flip", lesion_id=md["lesion_id"] + "_flip")
    (example_folder / "masks").mkdir()
    for src, dst in zip(md["image_id"], extra["image_id"]):
        with Image.open(example_folder / "images" / f"{src}.jpg") as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(example_folder / "images" / f"{dst}.jpg")
    for i in pd.concat([md, extra])["image_id"]:
        grey = np.asarray(Image.open(example_folder / "images" / f"{i}.jpg").convert("L"), float)
        Image.fromarray(((grey < np.median(grey)) * 255).astype(np.uint8)).save(
            example_folder / "masks" / f"{i}_segmentation.png")
    pd.concat([md, extra]).to_csv(example_folder / "metadata.csv", index=False)
    folds = tmp_path / "folds.csv"
    r = run_module("train.data.make_folds", "--data", example_folder, "--out", folds, "--folds", 2,
                   "--heldout-share", 0.3)
    assert r.returncode == 0, r.stderr[-2000:]
    return example_folder, folds


def test_training_scores_out_of_fold_and_a_rerun_skips_what_is_done(masked_folder, tmp_path):
    data, folds = masked_folder
    args = ["--data", data, "--folds", folds, "--cache", tmp_path / "cache", "--out", tmp_path / "seg",
            "--epochs", 1, "--n-boot", 20]
    r = run_module("train.fitting.segmentation", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "seg"
    summary = json.loads((out / "segmentation.json").read_text())
    for part in ("out_of_fold", "heldout"):
        for k in ("dice", "jaccard", "threshold_jaccard"):
            v = summary[part][k]
            assert 0 <= v["ci"][0] <= v["mean"] <= v["ci"][1] <= 1
    n = len(pd.read_csv(data / "metadata.csv"))
    assert summary["n_out_of_fold"] + summary["n_heldout"] == n
    stamps = {f.name: f.stat().st_mtime_ns for f in out.glob("*.safetensors")}
    assert set(stamps) == {"fold0.safetensors", "fold1.safetensors", "final.safetensors"}
    r = run_module("train.fitting.segmentation", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("*.safetensors")} == stamps
    assert json.loads((out / "segmentation.json").read_text())["out_of_fold"] == summary["out_of_fold"]
