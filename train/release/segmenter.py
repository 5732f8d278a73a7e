"""Ships the lesion segmenter: its decoder beside the weights, its entry in the manifest.

    python -m train.release.segmenter --run runs/seg [--weights weights]
        [--measures reports/lesion_measures.json] [--attention reports/attention.json]

Copies the run's final decoder (train.fitting.segmentation) to weights/segmenter.safetensors and
records, in the manifest's `segmentation` entry: its sha256 (checked at start like every
member), the architecture, the out-of-fold and held-out Dice and Jaccard, the wall times, the
archive's quartiles of each lesion measure by class (train.evaluation.lesion_measures: what the
page shows beside a lesion's measures) and the attention warning's threshold
(train.evaluation.attention). The model card gains its section.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.segmenter import STAGES, THRESHOLD
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from lesion_app.paths import REPO
from train.release.model_card import model_card

FILE = "segmenter.safetensors"


def segmentation_entry(run: dict, digest: str, measures: dict | None, attention: dict | None) -> dict:
    entry = {"file": FILE, "sha256": digest, "stages": list(STAGES), "threshold": THRESHOLD,
             "architecture": run["architecture"], "out_of_fold": run["out_of_fold"], "heldout": run["heldout"],
             "n_out_of_fold": run["n_out_of_fold"], "n_heldout": run["n_heldout"],
             "out_of_fold_views": run.get("out_of_fold_views", 4), "heldout_views": run.get("heldout_views", 4),
             "training_wall_time_seconds": run["wall_time_seconds"], "training_command": run["command"]}
    if measures:
        entry["reference"] = measures["reference"]
        entry["reference_from"] = ("the archive's training images, each measured on its out-of-fold outline "
                                   f"({measures['command']})")
    if attention:
        entry["attention"] = {"threshold": attention["threshold"], "ratio_under": attention.get("ratio_under"),
                              "rule": attention["rule"], "from": attention["command"]}
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--measures", type=Path, default=REPO / "reports" / "lesion_measures.json")
    p.add_argument("--attention", type=Path, default=REPO / "reports" / "attention.json")
    a = p.parse_args(argv)
    run = json.loads((a.run / "segmentation.json").read_text())
    manifest = Manifest.load(a.weights)
    if run["architecture"]["input"] != manifest.input_spec.to_dict():
        p.error(f"the run's input {run['architecture']['input']} is not the shipped trunk's "
                f"{manifest.input_spec.to_dict()}")
    dst = a.weights / FILE
    shutil.copyfile(a.run / "final.safetensors", dst)
    read = lambda f: json.loads(f.read_text()) if f.is_file() else None  # noqa: E731
    entry = segmentation_entry(run, sha256_file(dst), read(a.measures), read(a.attention))
    manifest = manifest.with_segmentation(entry)
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and the manifest's segmentation entry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
