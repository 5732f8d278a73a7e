"""Snapshot of everything the project's commands produce, to prove a refactor changes no behaviour.

    python tests/behaviour_snapshot.py --out /tmp/snap_before      # on the old code
    python tests/behaviour_snapshot.py --out /tmp/snap_after       # on the new code
    python tests/behaviour_snapshot.py --compare /tmp/snap_before /tmp/snap_after
    python tests/behaviour_snapshot.py --app-only --out DIR          # the served app's outputs only

Runs each command as a person would (a subprocess, the shipped weights copied to a scratch
folder), then writes every output file, with wall-clock times, dates and the git commit blanked
(they differ between any two runs), under --out. --compare prints every file that differs and
exits 1 if any does. Not a pytest test (it takes about 15 minutes and needs the shared data).

The commands are named in COMMANDS and the app's modules in APP_MODULES; where a refactor moves
one, change its module there, in the same commit, so the diff shows exactly what moved.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "ham10000"

# What each step runs (module names: the only thing a refactor may change here).
COMMANDS = {
    "make_folds": "train.data.make_folds",
    "cv": "train.fitting.cv",
    "bundle": "train.release.bundle",
    "fit_ood": "train.release.fit_ood",
    "prediction_sets": "train.release.prediction_sets",
    "report": "train.evaluation.report",
    "evaluate": "train.evaluation.evaluate",
    "full": "train.fitting.full",
    "cam_localisation": "train.evaluation.cam_localisation",
}
# The app's modules the page probe imports (where a refactor moves one, change it here).
APP_MODULES = {
    "predictor": "lesion_app.analysis.predictor",
    "handlers": "lesion_app.page.events",
    "clinical_report": "lesion_app.evidence.clinical_report",
    "case_report": "lesion_app.page.case_report",
}
# The page as a person uses it, for each example: the handlers' outputs for Analyze, a metadata
# change, another heatmap class and method, other similar cases; every heatmap method's maps;
# the case report's bytes at a fixed time (SOURCE_DATE_EPOCH fixes the PDF's own date).
PAGE_PROBE = """
import hashlib, importlib, io, json, sys
from datetime import datetime, timezone
import numpy as np, pandas as pd
M = {k: importlib.import_module(v) for k, v in json.loads(sys.argv[1]).items()}
p = M["predictor"].Predictor()
clin = M["clinical_report"].ClinicalReport.load(p.model_info)
d = "lesion_app/examples"
files = {r.image_id: f"{d}/images/{r.image_id}.jpg" for r in pd.read_csv(d + "/metadata.csv").itertuples()}
keep = frozenset(hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files.values())
events = M["handlers"].PageEvents(p, clin, keep)

def digest(v):
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if hasattr(v, "savefig"):
        buf = io.BytesIO()
        v.savefig(buf, format="png", metadata={"Software": None})
        return "png " + hashlib.sha256(buf.getvalue()).hexdigest()
    if isinstance(v, np.ndarray):
        return f"array {v.shape} " + hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
    if isinstance(v, dict):
        return {str(k): digest(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [digest(x) for x in v]
    return repr(v)

out = {}
for r in pd.read_csv(d + "/metadata.csv", dtype=str).itertuples():
    path, one = files[r.image_id], {}
    u = events.analyze(path, r.age, r.sex, r.localization, None, None, None, None, M["handlers"].SessionState())
    one["analyze"] = digest(u.content.shown())
    state = u.state
    u = events.metadata_changed(path, "70", "female", "face", None, None, None, None, state)
    one["metadata_changed"], state = digest(u.content.shown()), u.state
    u = events.heatmap_changed(path, "70", "female", "face", "mel", None, "95%", "Grad-CAM++", state)
    one["heatmap_changed"], state = digest(u.content.shown()), u.state
    u = events.similar_changed("16", True, True, state)
    one["similar_changed"] = digest(u.content.shown())
    one["case_report"] = hashlib.sha256(M["case_report"].case_report_pdf(
        state.analysis, clin, "90", "0.9", when=datetime(2026, 1, 1, tzinfo=timezone.utc))).hexdigest()
    for method in ("Grad-CAM", "Grad-CAM++", "LayerCAM"):
        for cls in (None, "mel"):
            a = p.analyze(events.decode(path), r.age, r.sex, r.localization, cls, method)
            one[f"cams {method} {cls}"] = digest([a.fusion.cam, a.image_only.cam])
    out[r.image_id] = one
print(json.dumps(out, indent=1, sort_keys=True))
"""
# Keys whose values are times, dates or the commit: blanked before comparing.
VOLATILE = re.compile(r"(seconds|wall_time|git_commit|^version$|^date$|images_per_second|fit_seconds|"
                      r"^folder$|bundle_command|^command$|training_command)")


def run(step: str, *args, cwd=REPO) -> str:
    cmd = COMMANDS[step]
    cmd = [sys.executable, "-m", *([cmd] if isinstance(cmd, str) else cmd), *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{step} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def small_folder(dst: Path, per_class: int = 24) -> Path:
    """A HAM10000-layout folder of a few images per class (symlinks into the shared data)."""
    md = pd.read_csv(DATA / "metadata.csv", dtype=str)
    lesions = md.drop_duplicates("lesion_id").groupby("dx").head(per_class)["lesion_id"]
    sub = md[md["lesion_id"].isin(set(lesions))]
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for i in sub["image_id"]:
        os.symlink(DATA / "images" / f"{i}.jpg", dst / "images" / f"{i}.jpg")
        os.symlink(DATA / "masks" / f"{i}_segmentation.png", dst / "masks" / f"{i}_segmentation.png")
    sub.to_csv(dst / "metadata.csv", index=False)
    return dst


def heldout_folder(dst: Path) -> Path:
    """The committed held-out slice as a HAM10000-layout folder (symlinks)."""
    held = set(pd.read_csv(REPO / "train" / "splits" / "ham10000_heldout.csv", dtype=str)["image_id"])
    md = pd.read_csv(DATA / "metadata.csv", dtype=str)
    sub = md[md["image_id"].isin(held)]
    (dst / "images").mkdir(parents=True)
    for i in sub["image_id"]:
        os.symlink(DATA / "images" / f"{i}.jpg", dst / "images" / f"{i}.jpg")
    sub.to_csv(dst / "metadata.csv", index=False)
    return dst


def scrub(x):
    if isinstance(x, dict):
        return {k: ("<volatile>" if VOLATILE.search(k) else scrub(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [scrub(v) for v in x]
    if isinstance(x, str):
        return re.sub(r"/tmp/[^\s'\"]*", "<tmp>", x)
    return x


def keep(src: Path, out: Path, name: str) -> None:
    """Copies one output into the snapshot: JSON scrubbed, text with times blanked, binaries hashed."""
    dst = out / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".json":
        dst.write_text(json.dumps(scrub(json.loads(src.read_text())), indent=1, sort_keys=True))
    elif src.suffix in (".md", ".csv", ".txt"):
        text = src.read_text()
        text = re.sub(r"\d+(\.\d+)? ?(s|min)\b", "<time>", text)
        text = re.sub(r"Version \S+; trained from commit `[^`]*`", "<version>", text)
        dst.write_text(re.sub(r"/tmp/[^\s'\"`|]*", "<tmp>", text))
    else:
        dst.with_suffix(dst.suffix + ".sha256").write_text(hashlib.sha256(src.read_bytes()).hexdigest() + "\n")


def snapshot(out: Path, scratch: Path, app_only: bool = False) -> None:
    """Every step, or (app_only) the served app's only: the evaluate CLI, /report and the page."""
    out.mkdir(parents=True, exist_ok=True)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    weights = REPO / "weights"

    # 1. The shipped models through the evaluate CLI: the held-out slice and the app's examples.
    held = heldout_folder(scratch / "heldout")
    for name, data in (("heldout", held), ("examples", REPO / "lesion_app" / "examples")):
        run("evaluate", "--data", data, "--out", scratch / f"{name}_metrics.json",
            "--predictions", scratch / f"{name}_predictions.csv", "--sets", scratch / f"{name}_sets.csv")
        for f in ("metrics.json", "predictions.csv", "sets.csv"):
            keep(scratch / f"{name}_{f}", out, f"evaluate/{name}_{f}")

    # 2. /report's JSON for each example, through the app's own handler path.
    code = ("import json,sys; from PIL import Image; import pandas as pd;"
            f" from {APP_MODULES['predictor']} import Predictor;"
            "p=Predictor(); d='lesion_app/examples'; md=pd.read_csv(d+'/metadata.csv', dtype=str);"
            "print(json.dumps({r.image_id: p.analyze(Image.open(f'{d}/images/{r.image_id}.jpg').convert('RGB'),"
            " r.age, r.sex, r.localization).to_report() for r in md.itertuples()}, sort_keys=True))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    (scratch / "reports.json").write_text(r.stdout)
    keep(scratch / "reports.json", out, "report_api/examples.json")

    # 2b. The page: the handlers' outputs, every heatmap method, the case report's bytes.
    r = subprocess.run([sys.executable, "-c", PAGE_PROBE, json.dumps(APP_MODULES)], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
                                       "SOURCE_DATE_EPOCH": "1767225600"})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    (scratch / "page.json").write_text(r.stdout)
    keep(scratch / "page.json", out, "page/examples.json")
    if app_only:
        return

    # 3. Release steps on a copy of the shipped weights: prediction sets, then the OOD check.
    w = scratch / "weights"
    shutil.copytree(weights, w)
    run("prediction_sets", "--weights", w)
    keep(w / "manifest.json", out, "prediction_sets/manifest.json")
    keep(w / "MODEL_CARD.md", out, "prediction_sets/MODEL_CARD.md")
    run("fit_ood", "--weights", w, "--check", 300)
    for f in ("manifest.json", "MODEL_CARD.md", "ood.safetensors"):
        keep(w / f, out, f"fit_ood/{f}")

    # 4. The report from the committed logits, and heatmap localisation on part of the slice.
    run("report", "--out", scratch / "reports", "--n-boot", 200)
    for f in sorted((scratch / "reports").iterdir()):
        if f.suffix in (".json", ".md"):
            keep(f, out, f"report/{f.name}")
    run("cam_localisation", "--limit", 40, "--json", scratch / "cam.json")
    keep(scratch / "cam.json", out, "cam_localisation/cam.json")

    # 5. Training on a small folder: folds, cross-validation (both kinds), the bundle, whole-network.
    small = small_folder(scratch / "small")
    folds = scratch / "folds.csv"
    run("make_folds", "--data", small, "--out", folds)
    keep(folds, out, "train/folds.csv")
    keep(folds.with_name("heldout.csv"), out, "train/heldout.csv")
    cv = scratch / "cv"
    run("cv", "--data", small, "--folds", folds, "--out", cv, "--cache", scratch / "cache", "--epochs", 2)
    for f in ("oof_logits.csv", "heldout_logits.csv", "cv.json"):
        keep(cv / f, out, f"train/cv_{f}")
    for m in sorted(cv.glob("*_fold*/member.safetensors")):
        keep(m, out, f"train/{m.parent.name}.safetensors")
    bundled = scratch / "bundle"
    run("bundle", "--cv", cv, "--data", small, "--out", bundled, "--reports", scratch / "bundle_reports",
        "--version", "snapshot")
    for f in sorted(bundled.iterdir()):
        keep(f, out, f"bundle/{f.name}")
    full = scratch / "full"
    run("full", "--data", small, "--out", full, "--epochs", 1, "--batch", 16, "--workers", 0,
        "--cache", scratch / "cache")
    keep(full / "run.json", out, "train/full_run.json")
    keep(full / "model.safetensors", out, "train/full_model.safetensors")


def compare(a: Path, b: Path) -> int:
    names = sorted({p.relative_to(a) for p in a.rglob("*") if p.is_file()} |
                   {p.relative_to(b) for p in b.rglob("*") if p.is_file()})
    differ = [n for n in names if not (a / n).is_file() or not (b / n).is_file()
              or (a / n).read_bytes() != (b / n).read_bytes()]
    for n in differ:
        print(f"differs: {n}")
    print(f"{len(names) - len(differ)} of {len(names)} files identical")
    return 1 if differ else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/behaviour_snapshot_scratch"))
    p.add_argument("--compare", type=Path, nargs=2)
    p.add_argument("--app-only", action="store_true",
                   help="only the served app's outputs (evaluate CLI, /report, the page): a few minutes")
    a = p.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not a.out:
        p.error("--out or --compare")
    snapshot(a.out, a.scratch, a.app_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
