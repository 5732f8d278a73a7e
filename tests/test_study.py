"""`python -m train.study.compare` end to end on the committed example images (tiny settings)."""
import json

import numpy as np
import pandas as pd
import torch

from conftest import run_module
from lesion_app.classifier.metadata import META_DIM
from train.fitting.objectives import LOSSES
from train.fitting.pooled_heads import Hyper, head_probs, train_head
from train.study.compare import FUSIONS, SAMPLINGS, decision_fusion


def test_study_writes_the_table_with_every_arm_and_cis(example_folder, tmp_path):
    md = pd.read_csv(example_folder / "metadata.csv")
    split = md[["image_id", "lesion_id", "dx"]].assign(split=["train"] * 3 + ["val"] * 2 + ["test"] * 2)
    split.to_csv(tmp_path / "split.csv", index=False)
    r = run_module("train.study.compare", "--data", example_folder, "--split", tmp_path / "split.csv",
                   "--cache", tmp_path / "cache", "--out", tmp_path / "out", "--seeds", 1,
                   "--epochs", 1, "--folds", 2, "--n-boot", 20, "--threads", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    arms = {(row["fusion"], row["loss"], row["sampling"]) for row in study["rows"]}
    assert len(arms) == (len(FUSIONS) + 1) * len(LOSSES) * len(SAMPLINGS)   # + metadata-only
    assert study["best_on_validation"]["fusion"] not in ("image_only", "metadata_only")
    for row in study["rows"]:
        for s in ("val", "test"):
            m = row[s]["balanced_accuracy"]
            assert 0 <= m["ci"][0] <= m["ci"][1] <= 1 and 0 <= m["mean"] <= 1
    assert len(study["paired_with_best"]) == 2 + 2 + len(FUSIONS)   # arms one factor away
    text = (tmp_path / "out" / "study.md").read_text()
    assert "Best on validation" in text and text.count("\n| ") > len(arms)


def test_heads_learn_separable_features_under_every_loss_and_sampling():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(7), [60, 30, 20, 8, 20, 200, 8])
    centres = rng.normal(0, 3, (7, 16))
    x = torch.tensor(centres[y][:, None, :] + rng.normal(0, 1, (len(y), 8, 16)), dtype=torch.float32)
    meta = torch.zeros(len(y), META_DIM)
    unknown = torch.zeros(META_DIM)
    hp = Hyper(epochs=30, lr=1e-2)
    rank = rng.random(len(y))
    for loss in LOSSES:
        for sampling in SAMPLINGS:
            head = train_head("film", x, meta, y, unknown, loss, sampling, hp, 0, rank)
            recall = [(head_probs(head, x, meta).argmax(1)[y == k] == k).mean() for k in range(7)]
            assert np.mean(recall) > 0.9, (loss, sampling, recall)


def test_decision_fusion_mean_and_max_are_distributions():
    a = np.array([[0.7, 0.2, 0.1]])
    b = np.array([[0.1, 0.3, 0.6]])
    np.testing.assert_allclose(decision_fusion(a, b, "mean"), [[0.4, 0.25, 0.35]])
    np.testing.assert_allclose(decision_fusion(a, b, "max"), [[0.7 / 1.6, 0.3 / 1.6, 0.6 / 1.6]])
