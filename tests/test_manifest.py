"""lesion_app.classifier.manifest.Manifest: the one reader and writer of weights/manifest.json."""
import json
import shutil

import numpy as np
import pytest

from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest, ManifestNotJSON, WeightsError
from lesion_app.paths import REPO, repo_path, repo_relative


@pytest.fixture(scope="module")
def shipped():
    return Manifest.load(WEIGHTS_DIR)


def test_saving_the_shipped_manifest_writes_the_same_bytes(shipped, tmp_path):
    shipped.save(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == (WEIGHTS_DIR / "manifest.json").read_bytes()


def test_a_manifest_for_another_class_order_refuses_to_load_naming_the_file(tmp_path):
    data = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    data["class_order"] = data["class_order"][::-1]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=rf"{tmp_path / 'manifest.json'} was made for another class order"):
        Manifest.load(tmp_path)


def test_missing_entries_and_broken_json_name_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    data = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    del data["models"]["image_only"]["temperature"]
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=rf"{path} lacks or mangles an entry \(KeyError: 'temperature'\)"):
        Manifest.load(tmp_path)
    with pytest.raises(ManifestNotJSON, match=rf"{path} is not valid JSON") as e:
        Manifest.from_text("{not json", path)
    assert type(e.value.cause).__name__ == "JSONDecodeError"
    path.unlink()
    with pytest.raises(WeightsError, match=rf"{path} is missing"):
        Manifest.load(tmp_path)


def test_with_ood_and_with_prediction_sets_return_a_new_manifest(shipped):
    before = shipped.to_json()
    ood = {"file": "other_ood.safetensors", "sha256": "0" * 64}
    sets = {"method": "test", "thresholds": {"0.9": {k: [0.5] * 7 for k in MODEL_KEYS}}}
    a, b = shipped.with_ood(ood), shipped.with_prediction_sets(sets)
    assert a is not shipped and a.ood == ood and b.prediction_sets == sets
    assert shipped.to_json() == before and shipped.ood != ood and shipped.prediction_sets != sets
    ood_entries = [e for e in a.file_entries() if e["file"].endswith("ood.safetensors")]
    assert ood_entries == [ood] and list(a.to_dict()) == list(shipped.to_dict())
    assert np.array_equal(b.set_thresholds["0.9"]["fusion"], np.full(7, 0.5))


def test_a_new_key_is_saved_after_those_read_as_a_json_object_would_be(shipped):
    # Prediction sets fitted before the OOD check: the OOD entry goes last, the rest keep their place.
    data = {k: v for k, v in shipped.to_dict().items() if k != "ood"}
    m = Manifest.from_dict(data, "test").with_ood({"file": "ood.safetensors", "sha256": "0" * 64})
    assert list(m.to_dict()) == [*data, "ood"]
    # Keys this code does not know are kept where they were.
    data = {"note": "kept", **shipped.to_dict()}
    assert Manifest.from_text(json.dumps(data, indent=1), "test").to_json() == json.dumps(data, indent=1)


def test_typed_reads_match_the_json(shipped):
    data = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    assert shipped.version == data["version"] and shipped.backbone == data["architecture"]["backbone"]
    assert shipped.split_block == data["trunk"]["split_block"]
    for k in MODEL_KEYS:
        assert shipped.members(k) == data["models"][k]["members"]
        assert shipped.temperature(k) == data["models"][k]["temperature"]
    assert shipped.input_spec.to_dict() == data["input"]["spec"]
    assert shipped.model_info == {"version": data["version"],
                                  "sha256": {k: [m["sha256"] for m in data["models"][k]["members"]]
                                             for k in MODEL_KEYS}}

    # Every {"file", "sha256"} entry anywhere in the JSON, in its order: what the Hub fetches.
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str) and isinstance(node.get("sha256"), str):
                found.append(node)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(data)
    assert shipped.file_entries() == found


def test_fold_files_resolve_to_absolute_paths_and_back(shipped):
    assert shipped.folds_path == REPO / shipped.folds_file and shipped.folds_path.is_file()
    assert shipped.heldout_path.is_absolute() and shipped.heldout_path.is_file()
    assert repo_relative(shipped.heldout_path) == shipped.heldout_file
    assert repo_path(repo_relative(shipped.folds_path)) == shipped.folds_path
    outside = REPO.parent / "elsewhere.csv"
    assert repo_path(repo_relative(outside)) == outside


def test_a_copied_weights_folder_loads_the_same(shipped, tmp_path):
    shutil.copyfile(WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    assert Manifest.load(tmp_path) == shipped
