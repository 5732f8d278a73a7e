"""Publishes the bundled weights as a Hugging Face model repo, and prints the commit sha to pin.

    python -m train.release.publish --repo ORG/NAME [--out DIR] [--dry-run] [--revision-message TEXT]
                            [--weights weights] [--report reports/report.json] [--private]

Builds the repo's folder: every weights file the manifest names (the shared trunk, each
member of both ensembles, the out-of-distribution detector), checked against its sha256,
manifest.json as is, and README.md, the model card the Hub renders. The card is made with
huggingface_hub's ModelCard, ModelCardData and EvalResult: licence, dataset, task, tags and a
model-index of the headline out-of-fold metrics; its body is train.release.model_card.model_card(manifest),
the same text as weights/MODEL_CARD.md, followed by what is specific to the Hub copy.

--dry-run writes the folder and stops (no network, no token). Otherwise the folder is
uploaded with HfApi (token: HF_TOKEN or `hf auth login`) as one commit, and its sha is
printed: serve it with LESION_APP_WEIGHTS=hf://ORG/NAME@<sha>.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR, WeightsError, sha256_file, verify_file
from train import REPO
from train.release.model_card import model_card

REPORT = REPO / "reports" / "report.json"
LICENSE = "cc-by-nc-4.0"
DATASET = "HAM10000"   # the dataset's name (Tschandl et al. 2018), not the id of a Hub dataset
TAGS = ["image-classification", "dermatology", "dermoscopy", "skin-lesion", "ham10000", "medical-imaging",
        "multimodal", "tabular-metadata", "efficientnet", "ensemble", "grad-cam", "pytorch", "safetensors",
        "research-only", "not-for-clinical-use"]
KIND_LABEL = {"fusion": "fusion", "image_only": "image-only"}
# (manifest key, metric type, pretty name, metric args); values from models.<kind>.out_of_fold_metrics.
OOF_METRICS = (("balanced_accuracy", "balanced_accuracy", "Balanced accuracy", None),
               ("macro_f1", "f1", "Macro-F1", {"average": "macro"}),
               ("macro_auc", "roc_auc", "Macro AUC (one-vs-rest)", {"average": "macro", "multi_class": "ovr"}))
MEL_KEY = "mel_sensitivity_at_90_specificity"
OURS = ("manifest.json", "README.md")   # besides the weights files, what the folder holds


class PublishError(RuntimeError):
    """Publishing cannot go on; the message says why and what to do."""


def evaluation(manifest: Manifest) -> str:
    """Where the headline figures come from, stated with every metric."""
    n_folds = len(manifest.members("fusion"))
    return f"out-of-fold, {n_folds}-fold lesion-grouped cross-validation"


def mel_sensitivity_from_report(manifest: Manifest, report_path: Path) -> tuple[dict, str | None]:
    """Melanoma sensitivity at 90% specificity per kind, from train.evaluation.report's report.json, when that
    report is of these very weights (same member sha256s) and out-of-fold; else ({}, why not)."""
    redo = "run `python -m train.evaluation.report`, then publish again"
    if not report_path.is_file():
        return {}, f"{report_path.name} is absent ({redo})"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {}, f"{report_path.name} is unreadable ({type(e).__name__}; {redo})"
    if (report.get("weights") or {}).get("sha256") != manifest.model_info["sha256"]:
        return {}, f"{report_path.name} is a report of other weights than these ({redo})"
    if report.get("evaluation") != "out-of-fold":
        return {}, f"{report_path.name} is not an out-of-fold evaluation ({redo})"
    out = {}
    for k in MODEL_KEYS:
        entry = (report.get("models", {}).get(k) or {}).get(MEL_KEY)
        if isinstance(entry, dict) and isinstance(entry.get("estimate"), (int, float)):
            out[k] = entry
    if "fusion" not in out:
        return out, f"{report_path.name} has no models.fusion.{MEL_KEY}.estimate ({redo})"
    return out, None


def eval_results(manifest: Manifest, mel: dict) -> list:
    from huggingface_hub import EvalResult
    ev = evaluation(manifest)
    n = manifest.out_of_fold_metrics("fusion")["n"]
    common = dict(task_type="image-classification", task_name=f"Skin-lesion classification ({len(CLASSES)} classes)",
                  dataset_type=DATASET, dataset_name=f"{DATASET} ({n} images)", dataset_split=ev)
    results = []
    for k in MODEL_KEYS:
        oof = manifest.out_of_fold_metrics(k)
        for key, metric_type, name, args in OOF_METRICS:
            results.append(EvalResult(**common, metric_type=metric_type, metric_value=round(float(oof[key]), 4),
                                      metric_name=f"{name}, {KIND_LABEL[k]} ({ev})", metric_args=args))
        if k in mel:
            results.append(EvalResult(**common, metric_type="sensitivity",
                                      metric_value=round(float(mel[k]["estimate"]), 4),
                                      metric_name=f"Melanoma sensitivity at 90% specificity, {KIND_LABEL[k]} ({ev})",
                                      metric_args={"class": "mel", "specificity": 0.9}))
    return results


def hub_section(repo: str, manifest: Manifest, entries: list[dict], mel: dict, mel_note: str | None) -> str:
    """What only the Hub copy needs: how to pin it, where the model-index figures come from, the files."""
    ev = evaluation(manifest)
    mel_line = ""
    if "fusion" in mel:
        f = mel["fusion"]
        ci = f.get("ci95")
        mel_line = (f"- Melanoma sensitivity at 90% specificity (fusion): {f['estimate']:.3f}"
                    + (f" (95% lesion-bootstrap CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else "")
                    + f", from `reports/report.json` of `python -m train.evaluation.report` ({ev}; the threshold is "
                      f"chosen on the same out-of-fold predictions, so this is an optimistic figure).\n")
    if mel_note:
        mel_line += f"- Melanoma sensitivity at 90% specificity is left out of the model-index: {mel_note}.\n"
    files = "\n".join(f"| `{e['file']}` | `{e['sha256']}` |" for e in entries)
    return f"""
## This repository on the Hugging Face Hub
Published by `python -m train.release.publish`. Serve one commit of it, never a branch: the app
refuses a branch name and loads only a full 40-hex commit sha.

    LESION_APP_WEIGHTS=hf://{repo}@<commit sha> python app.py

The app fetches `manifest.json` and every file it names through huggingface_hub's cache
(`HF_HUB_CACHE`; with `HF_HUB_OFFLINE=1` only what is already cached) and checks each against
the manifest's sha256 before loading it.

Metadata: `datasets: [{DATASET}]` is the dataset's name, HAM10000 (Tschandl et al. 2018, above),
not the id of a dataset on the Hub; no Hub copy of it was used. Every model-index figure is
{ev} ({manifest.out_of_fold_metrics('fusion')['n']} images, each scored by the member
that never saw its lesion), for the fusion and the image-only members:
- balanced accuracy, macro-F1 and macro one-vs-rest AUC from `manifest.json`
  (`models.<kind>.out_of_fold_metrics`), as in the table above;
{mel_line}
| file | sha256 |
|---|---|
{files}
"""


def build_card(repo: str, manifest: Manifest, entries: list[dict], report_path: Path):
    """(ModelCard, note or None): YAML metadata from ModelCardData, body = model_card(manifest) + the Hub section."""
    from huggingface_hub import ModelCard, ModelCardData
    mel, note = mel_sensitivity_from_report(manifest, report_path)
    data = ModelCardData(license=LICENSE, datasets=[DATASET], pipeline_tag="image-classification", tags=TAGS,
                         metrics=["balanced_accuracy", "f1", "roc_auc", "sensitivity"],
                         model_name=repo.split("/")[-1], eval_results=eval_results(manifest, mel))
    body = model_card(manifest) + hub_section(repo, manifest, entries, mel, note)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"), note


def prepare_out(out: Path, names: set[str]) -> None:
    """out/ empty of anything but an earlier publish folder's files (removed), so the upload is exactly ours."""
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out.iterdir()
                     if not (p.is_file() and (p.name in names or p.name in OURS or p.suffix == ".safetensors")))
    if foreign:
        raise PublishError(f"{out} holds other things ({', '.join(foreign[:5])}); it would be uploaded with them. "
                           f"Choose an empty --out folder.")
    for p in out.iterdir():
        p.unlink()


def build_folder(repo: str, out: Path, weights_dir: Path = WEIGHTS_DIR, report_path: Path = REPORT) -> dict:
    """Writes the model repo's folder; returns {'files': [...], 'note': str | None}."""
    manifest = Manifest.load(weights_dir)
    entries = manifest.file_entries()
    if not entries:
        raise PublishError(f"{weights_dir / 'manifest.json'} names no weights file.")
    for e in entries:
        verify_file(weights_dir, e)            # never publish a file the manifest does not vouch for
    card, note = build_card(repo, manifest, entries, report_path)
    prepare_out(out, {e["file"] for e in entries})
    for e in entries:
        dst = out / e["file"]
        shutil.copyfile(Path(weights_dir) / e["file"], dst)
        if sha256_file(dst) != e["sha256"]:
            raise PublishError(f"{dst} changed while being copied; publish again.")
    shutil.copyfile(Path(weights_dir) / "manifest.json", out / "manifest.json")
    card.save(out / "README.md")
    return {"files": [e["file"] for e in entries] + list(OURS), "note": note, "version": manifest.version,
            "git_commit": "unknown" if manifest.git_commit is None else manifest.git_commit}


def upload_token(repo: str) -> str:
    """The token to upload with, checked before any work: offline or without a token, a plain error at once."""
    from huggingface_hub import constants, get_token
    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set, so nothing can be uploaded. Run again with the network on "
                           "(HF_HUB_OFFLINE=0), or with --dry-run to only write the folder.")
    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token "
                           f"with write access to {repo.split('/')[0]}.")
    return token


def upload(repo: str, out: Path, message: str, private: bool = False) -> str:
    """Uploads the folder as one commit of the model repo (created if needed); returns its sha."""
    from huggingface_hub import HfApi
    api = HfApi(token=upload_token(repo))
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, repo_type="model", folder_path=out, commit_message=message,
                                 delete_patterns=["*.safetensors"])   # members of an earlier publish go
    except Exception as e:   # HTTP, auth and network errors alike: say which, no traceback
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise PublishError(f"uploading to {repo} failed ({type(e).__name__}: {first}).") from None
    return info.oid


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="the model repo, ORG/NAME")
    p.add_argument("--out", type=Path, help="the folder to write (default runs/hub/ORG--NAME)")
    p.add_argument("--dry-run", action="store_true", help="write the folder only: no network, no token")
    p.add_argument("--revision-message", help="the commit message (default: the weights' version and commit)")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--report", type=Path, default=REPORT, help="train.evaluation.report's report.json (melanoma sensitivity)")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    a = p.parse_args(argv)
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(a.repo)
        if a.repo.count("/") != 1:
            raise HFValidationError("it must be ORG/NAME")
    except HFValidationError as e:
        sys.exit(f"error: --repo {a.repo} is not a repo id ({e})")
    out = a.out or REPO / "runs" / "hub" / a.repo.replace("/", "--")
    try:
        if not a.dry_run:
            upload_token(a.repo)
        info = build_folder(a.repo, out, a.weights, a.report)
        print(f"wrote {out}: {len(info['files'])} files (model card, manifest, {len(info['files']) - 2} weights files)")
        if info["note"]:
            print(f"note: melanoma sensitivity at 90% specificity left out of the model-index: {info['note']}")
        if a.dry_run:
            print("dry run: nothing uploaded")
            return
        message = a.revision_message or f"Weights {info['version']} (trained from {info['git_commit']})"
        sha = upload(a.repo, out, message, a.private)
    except (PublishError, WeightsError) as e:
        sys.exit(f"error: {e}")
    print(f"uploaded to https://huggingface.co/{a.repo} as commit {sha}")
    print(f"pin it: LESION_APP_WEIGHTS=hf://{a.repo}@{sha}")


if __name__ == "__main__":
    main()
