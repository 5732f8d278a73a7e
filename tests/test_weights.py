"""The bundled weights: they load, match the manifest, and fail clearly when damaged."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lesion_app.classifier.ensemble import Ensemble
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import (MODEL_KEYS, WEIGHTS_DIR, WeightsError, load_manifest, load_models,
                                sha256_file)


@pytest.fixture(scope="module")
def bundled():
    return load_models(WEIGHTS_DIR)


def test_bundled_weights_load_and_match_their_manifest(bundled):
    manifest, models = bundled
    assert manifest.class_order == list(CLASSES)
    assert sha256_file(WEIGHTS_DIR / manifest.trunk["file"]) == manifest.trunk["sha256"]
    for k in MODEL_KEYS:
        for m in manifest.members(k):
            assert sha256_file(WEIGHTS_DIR / m["file"]) == m["sha256"]
        assert isinstance(models[k], Ensemble) and not models[k].training
        assert len(models[k].members) == len(manifest.members(k))
        assert 0.1 <= manifest.temperature(k) <= 10
    assert models["fusion"].uses_metadata and not models["image_only"].uses_metadata


def test_manifest_records_what_the_issue_asks_for():
    m = load_manifest(WEIGHTS_DIR)
    for key in ("architecture", "trunk", "input", "class_order", "metadata", "folds_file", "folds_sha256",
                "heldout_file", "git_commit", "training_wall_time_seconds", "selection", "hardware"):
        assert key in m, key
    for k in MODEL_KEYS:
        e = m["models"][k]
        assert e["training_command"].startswith("python -m train.fitting.cv")
        assert {"out_of_fold_metrics", "heldout_metrics", "temperature", "members", "ensemble"} <= e.keys()
    assert m["input"]["spec"]["mean"] == 0.5 and m["input"]["spec"]["std"] == 0.5
    # Every variant compared is on record with its out-of-fold figures and costs, the shipped one among them.
    rows = m["selection"]["variants_compared"]
    assert m["selection"]["shipped"] in [v["run"] for v in rows]
    for v in rows:
        assert set(v["out_of_fold"]) == set(MODEL_KEYS) and v["wall_time_seconds"] and v["device"]
        assert set(v["member_train_seconds"]) == set(MODEL_KEYS)


def test_every_member_shares_the_one_frozen_trunk(bundled):
    _, models = bundled
    members = [m for ens in models.values() for m in ens.members]
    first = list(members[0].lower_parameters())
    for m in members[1:]:
        assert all(torch.equal(p, q) for p, q in zip(first, m.lower_parameters()))


@pytest.fixture
def weights_copy(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, dst)
    return dst


def test_corrupted_member_gives_a_clear_error(weights_copy):
    path = weights_copy / "image_only_fold2.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        load_models(weights_copy)
    msg = str(e.value)
    assert "image_only_fold2.safetensors" in msg and "corrupted" in msg and "git checkout -- weights/" in msg


def test_missing_trunk_or_member_gives_a_clear_error(weights_copy):
    (weights_copy / "fusion_fold4.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"fusion_fold4\.safetensors is missing.*git checkout"):
        load_models(weights_copy)
    (weights_copy / "trunk.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"trunk\.safetensors is missing"):
        load_models(weights_copy)


def test_missing_or_broken_manifest_gives_a_clear_error(weights_copy):
    (weights_copy / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="manifest.json is not valid JSON"):
        load_models(weights_copy)
    (weights_copy / "manifest.json").unlink()
    with pytest.raises(WeightsError, match="manifest.json is missing"):
        load_models(weights_copy)


def test_manifest_missing_a_key_gives_a_clear_error(weights_copy):
    path = weights_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["trunk"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"manifest.json lacks or mangles an entry.*trunk"):
        load_models(weights_copy)


def test_a_state_dict_that_does_not_fit_gives_a_clear_error(weights_copy):
    # A member file with a well-formed checksum but the wrong tensors (a head of 3 classes).
    path = weights_copy / "fusion_fold0.safetensors"
    state = load_file(path)
    state["head.fc.weight"] = state["head.fc.weight"][:3].clone()
    state["head.fc.bias"] = state["head.fc.bias"][:3].clone()
    save_file(state, path)
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    manifest["models"]["fusion"]["members"][0]["sha256"] = sha256_file(path)
    (weights_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"fusion_fold0\.safetensors does not fit"):
        load_models(weights_copy)
