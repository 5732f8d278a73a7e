"""train.release.other_clinics (issue 36: the model card's "Other clinics' images", before and after):
the evaluate JSONs committed under reports/transfer go into a copy of the shipped weights' manifest
and card, as a user runs it; a row for other weights last, or rows of different folders, are refused."""
import json
import shutil

import pytest

from conftest import REPO, run_module
from lesion_app.classifier.manifest import Manifest

BEFORE = REPO / "reports" / "transfer" / "isic2017_model_v3.json"
NOW = REPO / "reports" / "transfer" / "isic2017_model_v3_served.json"


@pytest.fixture
def weights(tmp_path):
    dst = tmp_path / "weights"
    dst.mkdir()
    for name in ("manifest.json", "MODEL_CARD.md"):
        shutil.copy(REPO / "weights" / name, dst / name)
    return dst


def test_rows_go_into_the_manifest_and_the_card(weights):
    r = run_module("train.release.other_clinics", "--weights", weights,
                   "--row", f"before={BEFORE}", "--row", f"now={NOW}")
    assert r.returncode == 0, r.stderr
    entry = Manifest.load(weights).other_clinics
    now = json.loads(NOW.read_text())
    assert [row["label"] for row in entry["rows"]] == ["before", "now"]
    assert entry["n"] == now["data"]["n_images"] and entry["rows"][-1]["shipped_weights"]
    assert entry["rows"][-1]["fusion"]["mel_auc"] == now["fusion"]["mel_auc"]
    card = (weights / "MODEL_CARD.md").read_text()
    section = card.split("## Other clinics' images\n", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("| now |"))
    assert f"{now['fusion']['balanced_accuracy']:.3f}" in line and f"{now['fusion']['mel_auc']:.3f}" in line
    assert f"{now['image_only']['mel_auc']:.3f}" in line


def test_other_weights_last_or_another_folder_are_refused(weights, tmp_path):
    manifest_before = (weights / "manifest.json").read_bytes()
    other = json.loads(NOW.read_text())
    other["weights"]["sha256"]["fusion"][0] = "0" * 64
    other_weights = tmp_path / "other_weights.json"
    other_weights.write_text(json.dumps(other))
    r = run_module("train.release.other_clinics", "--weights", weights, "--row", f"now={NOW}",
                   "--row", f"retrained={other_weights}")
    assert r.returncode == 2 and "other members than the manifest's" in r.stderr
    folder = json.loads(NOW.read_text())
    folder["data"]["folder"] = "../shared/data/another"
    other_folder = tmp_path / "other_folder.json"
    other_folder.write_text(json.dumps(folder))
    r = run_module("train.release.other_clinics", "--weights", weights, "--row", f"a={other_folder}",
                   "--row", f"now={NOW}")
    assert r.returncode == 2 and "different folders" in r.stderr
    r = run_module("train.release.other_clinics", "--weights", weights, "--row", str(NOW))
    assert r.returncode == 2 and "LABEL=FILE" in r.stderr
    assert (weights / "manifest.json").read_bytes() == manifest_before   # nothing written on a refusal
