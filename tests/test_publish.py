"""python -m train.release.publish: the model-repo folder, its card, and the upload (mocked; offline)."""
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import REPO
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.weights import WEIGHTS_DIR, WeightsError, sha256_file

REPO_ID = "demo-org/lesion-fusion"
EVALUATION = "out-of-fold, 5-fold lesion-grouped cross-validation"
# Subprocesses import the repo first, and whatever the caller's PYTHONPATH holds (carried packages).
PYTHONPATH = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def no_token_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": PYTHONPATH}


def test_dry_run_writes_the_model_repo_folder(tmp_path):
    from huggingface_hub import ModelCard
    from train.release.model_card import model_card
    out = tmp_path / "repo"
    r = subprocess.run([sys.executable, "-m", "train.release.publish", "--repo", REPO_ID, "--out", str(out), "--dry-run"],
                       cwd=REPO, env=no_token_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dry run: nothing uploaded" in r.stdout
    manifest = Manifest.load(WEIGHTS_DIR)
    entries = manifest.file_entries()
    # Every file the manifest names, with its sha256; the manifest itself unchanged; nothing else.
    assert sorted(p.name for p in out.iterdir()) == sorted([e["file"] for e in entries] + ["manifest.json", "README.md"])
    for e in entries:
        assert sha256_file(out / e["file"]) == e["sha256"], e["file"]
    assert (out / "manifest.json").read_bytes() == (WEIGHTS_DIR / "manifest.json").read_bytes()
    names = {e["file"] for e in entries}
    assert "trunk.safetensors" in names
    assert {m["file"] for k in ("fusion", "image_only") for m in manifest.members(k)} <= names
    if manifest.ood:
        assert manifest.ood["file"] in names

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.license == "cc-by-nc-4.0"
    assert data.datasets == ["HAM10000"]
    assert data.pipeline_tag == "image-classification"
    assert {"dermatology", "ham10000", "research-only"} <= set(data.tags)
    results = data.eval_results
    assert results and all(EVALUATION in r.metric_name and r.dataset_split == EVALUATION for r in results)
    by_name = {r.metric_name: r for r in results}
    for k, label in (("fusion", "fusion"), ("image_only", "image-only")):
        oof = manifest.out_of_fold_metrics(k)
        for key, metric_type, name in (("balanced_accuracy", "balanced_accuracy", "Balanced accuracy"),
                                       ("macro_f1", "f1", "Macro-F1"), ("macro_auc", "roc_auc", "Macro AUC (one-vs-rest)")):
            r = by_name[f"{name}, {label} ({EVALUATION})"]
            assert r.metric_type == metric_type and r.metric_value == pytest.approx(oof[key], abs=1e-4)
    # One source: the body carries train.release.model_card's text as is.
    assert model_card(manifest) in card.text
    assert f"hf://{REPO_ID}@<commit sha>" in card.text


def report_of(manifest, **fusion_extra):
    return {"weights": {"version": manifest.version,
                        "sha256": {k: [m["sha256"] for m in manifest.members(k)]
                                   for k in ("fusion", "image_only")}},
            "evaluation": "out-of-fold",
            "models": {"fusion": {"balanced_accuracy": {"estimate": 0.7}, **fusion_extra}, "image_only": {}}}


def test_melanoma_sensitivity_comes_from_a_report_of_these_weights(tmp_path):
    from huggingface_hub import ModelCard
    from train.release.publish import build_card
    manifest = Manifest.load(WEIGHTS_DIR)
    entries = manifest.file_entries()
    path = tmp_path / "report.json"
    mel_name = f"Melanoma sensitivity at 90% specificity, fusion ({EVALUATION})"

    def card_for(report):
        if report is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps(report))
        card, note = build_card(REPO_ID, manifest, entries, path)
        (tmp_path / "README.md").write_text(str(card))
        return ModelCard.load(tmp_path / "README.md"), note

    card, note = card_for(report_of(manifest, mel_sensitivity_at_90_specificity={"estimate": 0.61234,
                                                                                  "ci95": [0.58, 0.64]}))
    assert note is None
    (mel,) = [r for r in card.data.eval_results if r.metric_name == mel_name]
    assert mel.metric_type == "sensitivity" and mel.metric_value == 0.6123
    assert mel.metric_args == {"class": "mel", "specificity": 0.9}
    assert "0.612 (95% lesion-bootstrap CI 0.580 to 0.640)" in card.text

    # Missing key, a report of other weights, no report: the metric is left out, with a note why.
    other = report_of(manifest, mel_sensitivity_at_90_specificity={"estimate": 0.6})
    other["weights"]["sha256"]["fusion"] = ["0" * 64]
    for report, why in ((report_of(manifest), "has no models.fusion.mel_sensitivity_at_90_specificity"),
                        (other, "a report of other weights"), (None, "is absent")):
        card, note = card_for(report)
        assert why in note
        assert all("Melanoma" not in r.metric_name for r in card.data.eval_results)
        assert any(r.metric_type == "balanced_accuracy" for r in card.data.eval_results)
        assert "left out of the model-index" in card.text and why in card.text


def test_upload_offline_fails_at_once_with_a_clear_message(tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "train.release.publish", "--repo", REPO_ID, "--out", str(tmp_path / "repo")],
                       cwd=REPO, env=no_token_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith("error: HF_HUB_OFFLINE is set, so nothing can be uploaded"), r.stderr
    assert "--dry-run" in r.stderr
    assert not (tmp_path / "repo").exists()     # checked before any work
    assert time.time() - t0 < 120     # no network wait (imports and hashing only)


def test_upload_commits_the_folder_once_and_prints_the_sha_to_pin(tmp_path, monkeypatch, capsys):
    """The online path with HfApi stood in for: repo created if absent, one commit of the folder."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants
    from train.release import publish
    calls = []
    sha = "a1b2c3d4" * 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, **kw):
        calls.append(("upload", kw))
        return SimpleNamespace(oid=sha)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "repo"
    publish.main(["--repo", REPO_ID, "--out", str(out), "--revision-message", "Weights for the demo"])
    printed = capsys.readouterr().out
    assert f"as commit {sha}" in printed and f"LESION_APP_WEIGHTS=hf://{REPO_ID}@{sha}" in printed
    (create, upload) = calls
    assert create[:2] == ("create", REPO_ID) and create[2]["repo_type"] == "model" and create[2]["exist_ok"]
    kw = upload[1]
    assert (kw["repo_id"], kw["repo_type"], kw["folder_path"], kw["commit_message"]) == (
        REPO_ID, "model", out, "Weights for the demo")
    assert kw["delete_patterns"] == ["*.safetensors"]   # members of an earlier publish do not linger

    # No token: a plain error naming the fix, and nothing is uploaded.
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    calls.clear()
    with pytest.raises(SystemExit, match="no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"):
        publish.main(["--repo", REPO_ID, "--out", str(out)])
    assert calls == []


def test_refuses_what_it_must_not_publish(tmp_path):
    from train.release.publish import PublishError, build_folder, main
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not for the Hub")
    with pytest.raises(PublishError, match="holds other things \\(notes.txt\\)"):
        build_folder(REPO_ID, out)
    # A weights file that does not match the manifest is never published.
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    with open(weights / "image_only_fold3.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="image_only_fold3.safetensors is corrupted"):
        build_folder(REPO_ID, tmp_path / "out2", weights)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit, match="error: --repo not a repo is not a repo id"):
        main(["--repo", "not a repo", "--dry-run", "--out", str(tmp_path / "out3")])
