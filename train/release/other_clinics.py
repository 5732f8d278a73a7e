"""Records the ensembles' figures on another clinic's images in the manifest and the model card.

    python -m train.release.other_clinics --row "input path before=reports/transfer/isic2017_model_v3.json"
        --row "input path now=reports/transfer/isic2017_model_v3_served.json" [--weights weights]

Each --row is LABEL=FILE, FILE being train.evaluation.evaluate's --out JSON of one folder (e.g.
`evaluate --data ../shared/data/isic2017 --aspect 4:3 --out FILE`), in the order the table shows them:
earlier weights or an earlier input path first, the shipped weights last. Every row must score the
same folder; the last must be the shipped weights (its members' sha256 are the manifest's), so the
card never quotes another model's figures as this one's. Writes the "other_clinics" entry of
weights/manifest.json and the model card's "Other clinics' images" section (overwrites both).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR
from train import REPO
from train.release.model_card import model_card

FIGURES = ("balanced_accuracy", "mel_auc", "mel_vs_nv_auc")


def parse_row(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip() or not path.strip():
        raise ValueError(f"--row {text!r}: expected LABEL=FILE")
    return label.strip(), Path(path.strip())


def row_entry(label: str, path: Path, current: dict) -> dict:
    """One table row from evaluate's JSON: each kind's figures, its 90% sets, the weights it scored."""
    result = json.loads(path.read_text())
    kinds = {}
    for kind in MODEL_KEYS:
        k = result[kind]
        sets = (k.get("sets") or {}).get("0.9")
        kinds[kind] = {**{f: k.get(f) for f in FIGURES},
                       "sets_90": None if sets is None else {"coverage": sets["coverage"], "mean_size": sets["mean_size"]}}
    shipped = result["weights"]["sha256"] == current["sha256"]
    path = path.resolve()
    return {"label": label, "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "weights_version": result["weights"]["version"], "shipped_weights": shipped,
            "folder": Path(result["data"]["folder"]).name, "n": result["data"]["n_images"],
            "aspect": result["data"].get("aspect"), "classes_present": result["fusion"].get("classes_present"),
            **kinds}


def other_clinics_entry(rows: list[tuple[str, Path]], current: dict) -> dict:
    """The manifest entry; ValueError when the rows score different folders or the last row is not
    the shipped weights."""
    entries = [row_entry(label, path, current) for label, path in rows]
    if len({(e["folder"], e["n"]) for e in entries}) != 1:
        raise ValueError("the rows score different folders: " + ", ".join(f"{e['label']}: {e['folder']} ({e['n']})"
                                                                           for e in entries))
    if not entries[-1]["shipped_weights"]:
        raise ValueError(f"the last row ({entries[-1]['label']}, {entries[-1]['file']}) scored weights "
                         f"{entries[-1]['weights_version']} with other members than the manifest's: score the "
                         "shipped weights with train.evaluation.evaluate and give that file last")
    first = entries[0]
    return {"folder": first["folder"], "n": first["n"], "aspect": first["aspect"],
            "classes_present": first["classes_present"], "rows": entries}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", action="append", required=True, metavar="LABEL=FILE",
                   help="evaluate's JSON of one folder, labelled; the shipped weights' last")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    a = p.parse_args(argv)
    manifest = Manifest.load(a.weights)
    try:
        rows = [parse_row(r) for r in a.row]
        missing = [str(path) for _, path in rows if not path.is_file()]
        if missing:
            raise ValueError("not found: " + ", ".join(missing))
        entry = other_clinics_entry(rows, manifest.model_info)
    except (ValueError, KeyError) as e:
        p.error(str(e) if isinstance(e, ValueError) else f"not evaluate's JSON (no {e})")
    manifest = manifest.with_other_clinics(entry)
    manifest.save(a.weights)
    (a.weights / "MODEL_CARD.md").write_text(model_card(manifest))
    for r in entry["rows"]:
        f = r["fusion"]
        print(f"{entry['folder']} ({entry['n']}), {r['label']}: fusion balanced accuracy {f['balanced_accuracy']:.3f}, "
              f"melanoma AUC {f['mel_auc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
