"""The bundled weights: they load, match the manifest, and fail clearly when damaged."""
import shutil

import pytest
import torch

from lesion_app.models import LesionClassifier
from lesion_app.vocab import CLASSES
from lesion_app.weights import (MODEL_KEYS, WEIGHTS_DIR, WeightsError, load_manifest, load_models,
                                sha256_file)


@pytest.fixture(scope="module")
def bundled():
    return load_models(WEIGHTS_DIR)


def test_bundled_weights_load_and_match_their_manifest(bundled):
    manifest, models = bundled
    assert manifest["class_order"] == list(CLASSES)
    for k in MODEL_KEYS:
        entry = manifest["models"][k]
        assert sha256_file(WEIGHTS_DIR / entry["file"]) == entry["sha256"]
        assert isinstance(models[k], LesionClassifier) and not models[k].training
        assert 0.1 <= entry["temperature"] <= 10
    assert models["fusion"].uses_metadata and not models["image_only"].uses_metadata


def test_manifest_records_what_the_issue_asks_for():
    m = load_manifest(WEIGHTS_DIR)
    for key in ("architecture", "input", "class_order", "metadata", "split_file", "split_sha256",
                "git_commit", "training_wall_time_seconds", "selection"):
        assert key in m, key
    for k in MODEL_KEYS:
        e = m["models"][k]
        assert e["training_command"].startswith("python -m train.fit")
        assert {"val_metrics", "test_metrics", "temperature", "sha256"} <= e.keys()
    assert m["input"]["spec"]["mean"] == 0.5 and m["input"]["spec"]["std"] == 0.5


def test_both_models_share_the_frozen_imagenet_stages(bundled):
    _, models = bundled
    a, b = (models[k] for k in MODEL_KEYS)
    assert all(torch.equal(p, q) for p, q in zip(a.lower_parameters(), b.lower_parameters()))


@pytest.fixture
def weights_copy(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, dst)
    return dst


def test_corrupted_file_gives_a_clear_error(weights_copy):
    path = weights_copy / "fusion.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        load_models(weights_copy)
    msg = str(e.value)
    assert "fusion.safetensors" in msg and "corrupted" in msg and "git checkout -- weights/" in msg


def test_missing_file_gives_a_clear_error(weights_copy):
    (weights_copy / "image_only.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"image_only\.safetensors is missing.*git checkout"):
        load_models(weights_copy)


def test_missing_or_broken_manifest_gives_a_clear_error(weights_copy):
    (weights_copy / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="manifest.json is not valid JSON"):
        load_models(weights_copy)
    (weights_copy / "manifest.json").unlink()
    with pytest.raises(WeightsError, match="manifest.json is missing"):
        load_models(weights_copy)
