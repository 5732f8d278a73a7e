"""Recipe variants compared out-of-fold on the same folds (issue 24): every run's figures with
lesion-bootstrap 95% CIs, the paired difference of each against a baseline, and the release's
selection criterion applied to them.

    python -m train.evaluation.compare_runs BASELINE RUN [RUN ...] [--folds train/splits/ham10000_folds.csv]
        [--n-boot 1000] [--kinds fusion image_only] [--out reports/variants.md]

A run is a train.fitting.cv folder (oof_logits.csv, cv.json, times.json, <kind>_fold<k>/member.json);
BASELINE may also be `shipped`: the release's own out-of-fold logits (reports/oof_logits.csv, which
train.release.bundle copies there) with the manifest's temperatures and wall times; or `shipped@REV`,
the release as committed at git revision REV (so a release that has since been replaced stays a
baseline: `shipped@01f8248` is the recipe Model v3's variants were chosen against). Every run must
score the same images (the same folds). Each kind's probabilities are softmax(logits / T) with the
run's own out-of-fold temperature, as the release serves them. All runs share one set of lesion
resamples, so the differences are paired. Writes OUT (.md) and OUT with .json. `--kinds fusion`
compares the fusion ensembles alone (all the criterion reads), so a run can be judged while its
image-only members are still training.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from io import StringIO
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest
from lesion_app.classifier.models import ARCH
from lesion_app.classifier.vocab import CLASSES
from train import REPO
from train.data.logits import kind_logits, read_logits
from train.data.splits import DEFAULT_FOLDS, load_folds
from train.evaluation.metrics import (MEL, balanced_accuracy, class_aucs, expected_calibration_error, macro_auc,
    macro_f1, mel_sensitivity_at, softmax)
from train.evaluation.stats import resample_rows

SHIPPED = "shipped"
# How a recipe is chosen to ship (issue 24; stated before any of its variants' figures existed). The
# bundle records it in the manifest's selection.
SELECTION_CRITERION = (
    "the fusion ensemble's out-of-fold balanced accuracy and melanoma AUC together: a variant replaces the "
    "shipped recipe only when its paired differences against it (lesion bootstrap over the same 5 folds) are "
    "both above 0 and neither 95% CI lies wholly below 0, and its CPU training (at most 6 hours on the 2-core "
    "CPU) and serving budgets hold; of several such variants, the larger sum of the two differences")


def mel_auc(y, probs) -> float | None:
    return class_aucs(y, probs)[MEL]


def ece(y, probs) -> float:
    return expected_calibration_error(probs, y)


# What issue 24 asks of every variant, in the table's order.
METRICS = {"balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1, "macro_auc": macro_auc,
           "mel_auc": mel_auc, "mel_sensitivity_at_90_specificity": mel_sensitivity_at(0.90),
           "mel_sensitivity_at_95_specificity": mel_sensitivity_at(0.95), "ece": ece}
HEADERS = {"balanced_accuracy": "bal. acc.", "macro_f1": "macro-F1", "macro_auc": "macro AUC", "mel_auc": "mel AUC",
           "mel_sensitivity_at_90_specificity": "mel sens @90% spec", "mel_sensitivity_at_95_specificity":
           "mel sens @95% spec", "ece": "ECE"}
# The criterion's two figures (train.release.bundle.SELECTION_CRITERION), of the fusion ensemble.
CRITERION = ("balanced_accuracy", "mel_auc")


@dataclass
class Run:
    name: str
    logits: pd.DataFrame
    temperature: dict[str, float]
    recipe: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "unknown"

    def probabilities(self, kind: str, order) -> np.ndarray:
        return softmax(kind_logits(self.logits, kind, order), self.temperature[kind])


def committed(rev: str, path: Path) -> str:
    """A committed file's text at git revision rev; SystemExit naming both when git has none."""
    rel = path.relative_to(REPO).as_posix()
    r = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: git has no {rel} at {rev!r} ({r.stderr.strip()})")
    return r.stdout


def load_release(rev: str | None, kinds=MODEL_KEYS) -> Run:
    """The release's out-of-fold logits and manifest: as in the working tree (rev None), or as
    committed at git revision rev."""
    manifest, logits = WEIGHTS_DIR / "manifest.json", REPO / "reports" / "oof_logits.csv"
    if rev is None:
        m, oof = Manifest.load(WEIGHTS_DIR), read_logits(logits)
    else:
        m = Manifest.from_text(committed(rev, manifest), f"{manifest.name} at {rev}")
        oof = read_logits(StringIO(committed(rev, logits)))
    # Named by its run, so the tables stay true once another release has replaced it.
    shipped = m.selection["shipped"] if m.selection else "the release"
    return Run(f"{shipped} (shipped)" if rev is None else f"{shipped} (shipped at {rev})", oof,
               {k: m.temperature(k) for k in kinds},
               {"split_block": m.models["fusion"].get("split_block"), "backbone": m.backbone},
               dict(m.training_wall_time_seconds or {}), m.hardware or "unknown")


def load_run(spec: str, kinds=MODEL_KEYS) -> Run:
    """A train.fitting.cv folder, `shipped` (the release's out-of-fold logits and manifest), or
    `shipped@REV` (the release as committed at git revision REV); SystemExit when a folder has no
    out-of-fold figures for one of kinds."""
    if spec == SHIPPED or spec.startswith(SHIPPED + "@"):
        return load_release(spec.partition("@")[2] or None, kinds)
    run = Path(spec)
    if not (run / "oof_logits.csv").is_file() or not (run / "cv.json").is_file():
        raise SystemExit(f"error: {run} is not a finished train.fitting.cv run (no oof_logits.csv or cv.json): "
                         "run the same train.fitting.cv command again until every member is trained")
    cv = json.loads((run / "cv.json").read_text())
    missing = [k for k in kinds if k not in cv.get("out_of_fold", {})]
    if missing:
        raise SystemExit(f"error: {run} has no out-of-fold {', '.join(missing)} ensemble (its cv.json): run its "
                         "train.fitting.cv command again with every kind, or compare only what it has with --kinds")
    times = dict(cv.get("wall_time_seconds", {}))
    for kind in kinds:
        members = sorted(run.glob(f"{kind}_fold*/member.json"))
        times[f"{kind}_members"] = round(sum(json.loads(f.read_text())["train_seconds"] for f in members), 1)
    times["total"] = round(sum(times.values()), 1)
    return Run(run.name, read_logits(run / "oof_logits.csv"),
               {k: cv["out_of_fold"][k]["temperature"] for k in kinds},
               {"split_block": cv.get("split_block"), "backbone": cv.get("arch", ARCH),
                **{k: v for k, v in cv.get("recipe", {}).items() if k in ("mel_margin_weight", "follow_up_weight")}},
               times, cv.get("device", "unknown"))


def compare(runs: list[Run], folds: pd.DataFrame, n_boot: int = 1000, seed: int = 0, kinds=MODEL_KEYS) -> dict:
    """Per kind (of kinds, which must hold the criterion's fusion) and run: each metric with its
    CI; per kind and run after the first, each metric's paired difference against the first with
    its CI. Every run must hold the same images."""
    if "fusion" not in kinds:
        raise ValueError("the criterion reads the fusion ensembles: kinds must include fusion")
    ids = sorted(runs[0].logits.loc[runs[0].logits["model"] == kinds[0], "image_id"])
    for r in runs[1:]:
        for kind in kinds:
            if sorted(r.logits.loc[r.logits["model"] == kind, "image_id"]) != ids:
                raise SystemExit(f"error: {r.name} scores other images than {runs[0].name} ({kind}): "
                                 "the runs must use the same folds")
    table = folds.set_index("image_id").loc[ids]
    y = table["dx"].map(CLASSES.index).to_numpy()
    samples = resample_rows(y, table["lesion_id"].to_numpy(), n_boot, seed)
    out = {"n_images": len(ids), "n_lesions": int(table["lesion_id"].nunique()), "n_boot": len(samples), "kinds": {}}
    for kind in kinds:
        probs = [r.probabilities(kind, ids) for r in runs]
        values = {r.name: {} for r in runs}
        diffs = {r.name: {} for r in runs[1:]}
        for name, fn in METRICS.items():
            boot = np.array([[fn(y[idx], p[idx]) for p in probs] for idx in samples], dtype=float)
            for j, r in enumerate(runs):
                values[r.name][name] = [float(fn(y, probs[j])), *map(float, np.nanquantile(boot[:, j], [0.025, 0.975]))]
                if j:
                    d = boot[:, j] - boot[:, 0]
                    diffs[r.name][name] = [values[r.name][name][0] - values[runs[0].name][name][0],
                                           *map(float, np.nanquantile(d, [0.025, 0.975]))]
        out["kinds"][kind] = {"values": values, "paired_differences": diffs}
    out["criterion"] = SELECTION_CRITERION
    out["meets_criterion"] = {name: all(d[m][0] > 0 and d[m][2] >= 0 for m in CRITERION)
                              for name, d in out["kinds"]["fusion"]["paired_differences"].items()}
    out["runs"] = {r.name: {"recipe": r.recipe, "device": r.device, "wall_time_seconds": r.seconds} for r in runs}
    return out


def _cell(v, signed=False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return "–" if v[0] is None or v[0] != v[0] else f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def baseline_name(result: dict) -> str:
    """The run every paired difference is taken against (the first)."""
    return next(iter(result["kinds"]["fusion"]["values"]))


def kind_tables(result: dict, heading: str = "##") -> list[str]:
    """Markdown lines: per kind, every run's figures with CIs, then each paired difference."""
    baseline, lines = baseline_name(result), []
    for kind, r in result["kinds"].items():
        lines += [f"{heading} {kind.replace('_', '-')}", "", "| run | " + " | ".join(HEADERS.values()) + " |",
                  "|---|" + "---|" * len(HEADERS)]
        for name, v in r["values"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(v[m]) for m in METRICS) + " |")
        for name, d in r["paired_differences"].items():
            lines.append(f"| {name} − {baseline} | " + " | ".join(_cell(d[m], signed=True) for m in METRICS) + " |")
        lines.append("")
    return lines


def about(result: dict) -> str:
    return (f"{result['n_images']:,} images of {result['n_lesions']:,} lesions, each scored by the member of the fold "
            f"that never saw its lesion, at its run's own temperature; 95% CIs from {result['n_boot']} lesion "
            f"resamples shared by every run, so differences against **{baseline_name(result)}** are paired.")


def markdown(result: dict) -> str:
    lines = ["# Recipe variants, out-of-fold (issue 24)", "", about(result), ""]
    if set(result["kinds"]) != set(MODEL_KEYS):
        lines += [f"Only the {' and '.join(k.replace('_', '-') for k in result['kinds'])} ensembles are compared "
                  "(`--kinds`): the criterion reads the fusion ensembles alone. A run folder's wall times count "
                  "the members of those kinds only; the release's are its whole recipe's.", ""]
    lines += kind_tables(result)
    lines += ["## Wall time (seconds)", "", "| run | device | part | seconds |", "|---|---|---|---|"]
    for name, r in result["runs"].items():
        for part, s in r["wall_time_seconds"].items():
            lines.append(f"| {name} | {r['device']} | {part} | {s:,.0f} |")
    lines += ["", f"**Criterion** (fixed before the runs): {result['criterion']}.", ""]
    lines += [f"- {name}: its paired differences {'meet' if ok else 'do not meet'} it" for name, ok in
              result["meets_criterion"].items()]
    lines += ["", "The budgets are measured apart: serving by `python -m train.release.recipe_cost` and "
              "`python -m train.evaluation.benchmark`, training by the wall times above (which include any "
              "time the run shared the CPU or was paused)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("baseline", help=f"a train.fitting.cv folder, {SHIPPED!r} (the release) or {SHIPPED}@REV "
                                    "(the release as committed at git revision REV)")
    p.add_argument("runs", nargs="+", help="train.fitting.cv folders, compared against the baseline")
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--kinds", nargs="+", default=list(MODEL_KEYS), choices=MODEL_KEYS,
                   help="the ensembles to compare (default both); the criterion reads fusion, so it must be one")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "variants.md")
    a = p.parse_args(argv)
    if "fusion" not in a.kinds:
        p.error("--kinds must include fusion: the criterion reads the fusion ensembles")
    kinds = tuple(k for k in MODEL_KEYS if k in a.kinds)
    runs = [load_run(s, kinds) for s in (a.baseline, *a.runs)]
    if len({r.name for r in runs}) != len(runs):
        p.error("two runs have the same folder name; name each run's folder differently")
    result = compare(runs, load_folds(a.folds), a.n_boot, kinds=kinds)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.out.write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
