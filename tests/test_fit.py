"""A tiny end-to-end `python -m train.fitting.fit` on the committed example images."""
import json

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import run_module

ARGS = ("--epochs", 2, "--batch", 4, "--threads", 1)


@pytest.fixture
def tiny(example_folder, tmp_path):
    md = pd.read_csv(example_folder / "metadata.csv")
    split = md[["image_id", "lesion_id", "dx"]].assign(split=["train"] * 4 + ["val"] * 3)
    split.to_csv(tmp_path / "split.csv", index=False)
    return {"data": example_folder, "split": tmp_path / "split.csv", "cache": tmp_path / "cache"}


def fit(tiny, out, *extra):
    r = run_module("train.fitting.fit", "--model", "fusion", "--data", tiny["data"], "--split", tiny["split"],
                   "--cache", tiny["cache"], "--out", out, *ARGS, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_fit_runs_end_to_end_and_writes_a_calibrated_model(tiny, tmp_path):
    r = fit(tiny, tmp_path / "run")
    assert r.stdout.count("epoch ") >= 2 and "val bacc" in r.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["model"] == "fusion" and run["fusion"] == "concat"
    assert run["config"]["sampler"] == "curriculum" and "curriculum difficulty ranked" in r.stdout
    assert 0.1 <= run["temperature"] <= 10.0
    assert len(run["history"]) == 2 and run["command"].startswith("python -m train.fitting.fit")
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert "head.fc.weight" in weights and "head.meta.0.weight" in weights


def test_film_without_curriculum_still_trains(tiny, tmp_path):
    fit(tiny, tmp_path / "run", "--fusion", "film", "--sampler", "none")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["fusion"] == "film" and run["config"]["sampler"] == "none"
    assert "head.film.weight" in load_file(tmp_path / "run" / "model.safetensors")


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny, tmp_path):
    fit(tiny, tmp_path / "straight")
    first = fit(tiny, tmp_path / "resumed", "--stop-after", 1)
    assert "stopped after epoch 0" in first.stdout
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    second = fit(tiny, tmp_path / "resumed", "--resume")
    assert "resumed after epoch 0" in second.stdout
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    fit(tiny, tmp_path / "run", "--stop-after", 1)
    r = run_module("train.fitting.fit", "--model", "fusion", "--data", tiny["data"], "--split", tiny["split"],
                   "--cache", tiny["cache"], "--out", tmp_path / "run", "--epochs", 3, "--batch", 4,
                   "--threads", 1, "--resume")
    assert r.returncode != 0 and "same settings" in r.stderr


def test_unknown_sampler_or_loss_is_a_clear_cli_error(tiny, tmp_path):
    for flag, value in (("--sampler", "oversample"), ("--loss", "hinge")):
        r = run_module("train.fitting.fit", "--data", tiny["data"], "--split", tiny["split"], "--cache", tiny["cache"],
                       "--out", tmp_path / "run", flag, value)
        assert r.returncode == 2 and flag in r.stderr
