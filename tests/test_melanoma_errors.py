"""The out-of-fold melanoma error study on a small synthetic logits frame (no shared data needed)."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from lesion_app.classifier.vocab import CLASSES
from train.data.logits import logits_frame, write_logits
from train.evaluation import melanoma_errors
from train.evaluation.melanoma_errors import markdown, study
from train.evaluation.stats import weighted_aucs

# image: (dx, site, top class, p(top), p(mel)); the rest of the mass spread evenly over the others.
CASES = {
    "m1": ("mel", "face", "mel", 0.90, 0.90), "m2": ("mel", "back", "mel", 0.60, 0.60),
    "m3": ("mel", "face", "nv", 0.60, 0.30), "m4": ("mel", "back", "nv", 0.70, 0.20),
    "m5": ("mel", "face", "bkl", 0.55, 0.35), "m6": ("mel", "back", "mel", 0.80, 0.80),
    "n1": ("nv", "face", "nv", 0.90, 0.05), "n2": ("nv", "face", "nv", 0.85, 0.10),
    "n3": ("nv", "face", "nv", 0.50, 0.40), "n4": ("nv", "face", "mel", 0.55, 0.55),
    "n5": ("nv", "back", "nv", 0.95, 0.02), "n6": ("nv", "back", "nv", 0.70, 0.25),
    "n7": ("nv", "back", "nv", 0.80, 0.15), "n8": ("nv", "back", "nv", 0.90, 0.05),
    "b1": ("bkl", "back", "bkl", 0.80, 0.10), "b2": ("bkl", "back", "bkl", 0.60, 0.30),
}


def _probs(top, p_top, p_mel):
    p = np.zeros(len(CLASSES))
    p[CLASSES.index("mel")] = p_mel
    p[CLASSES.index(top)] = p_top
    rest = [i for i in range(len(CLASSES)) if p[i] == 0]
    p[rest] = (1 - p.sum()) / len(rest)
    return p


def _synthetic():
    ids = list(CASES)
    md = pd.DataFrame({"lesion_id": [("L_n12" if i in ("n1", "n2") else f"L_{i}") for i in ids], "image_id": ids,
                       "dx": [CASES[i][0] for i in ids], "dx_type": "histo",
                       "age": [35.0 + 3 * k for k in range(len(ids))],
                       "sex": ["male", "female"] * (len(ids) // 2), "localization": [CASES[i][1] for i in ids]})
    fold = [0, 1, 2, 3, 4, 0, 1, 1, 2, 3, 4, 0, 2, 3, 4, 0]   # n1 and n2 (one lesion) share fold 1
    z = np.log(np.stack([_probs(*CASES[i][2:]) for i in ids]))  # softmax(z / 1) gives the table back
    frames = [logits_frame(z + (0.1 if kind == "image_only" else 0), image_id=ids, fold=fold, model=kind)
              for kind in ("fusion", "image_only")]
    return md, frames


def test_weighted_aucs_are_the_auc_of_the_rows_repeated_by_their_counts():
    rng = np.random.default_rng(0)
    pos, score = rng.random(60) < 0.3, np.round(rng.random(60), 1)   # rounded: ties
    W = rng.integers(0, 3, (4, 60)).astype(float)
    expected = [roc_auc_score(np.repeat(pos, w.astype(int)), np.repeat(score, w.astype(int))) for w in W]
    assert np.allclose(weighted_aucs(pos, score, W), expected)


def test_the_study_counts_the_missed_melanomas_and_the_face_auc_by_hand(monkeypatch):
    monkeypatch.setattr(melanoma_errors, "MIN_MEL_AUC", 3)   # the face has 3 melanomas
    md, frames = _synthetic()
    r = study(md, pd.concat(frames), {"fusion": 1.0, "image_only": 1.0}, n_boot=30)
    missed = r["missed"]["fusion"]["top_class"]
    # Top class not mel: m3 and m4 (nv), m5 (bkl): 3 of 6, nv takes 2/3.
    assert missed["n_missed"] == 3 and r["missed"]["fusion"]["n_mel"] == 6
    assert missed["taken_by"]["nv"]["n"] == 2 and missed["taken_by"]["nv"]["share"][0] == pytest.approx(2 / 3)
    assert missed["taken_by"]["bkl"]["n"] == 1
    assert r["overall"]["fusion"]["mel_recall"][0] == pytest.approx(0.5)
    # Face: melanomas p = .90, .30, .35 against nevi .05, .10, .40, .55:
    # .90 beats 4, .30 and .35 beat 2 each -> 8 of 12 pairs.
    face = next(row for row in r["subgroups"]["site"] if row["group"] == "face")
    assert (face["n"], face["n_mel"]) == (7, 3)
    assert face["fusion"]["auc_within_group"][0] == pytest.approx(8 / 12)
    assert face["fusion"]["recall"][0] == pytest.approx(1 / 3)
    assert face["fusion"]["top_class_misses_taken_by"] == {"nv": 1, "bkl": 1}
    # The one false melanoma at the top class is the nevus n4.
    false = r["false_melanomas"]["fusion"]["top_class"]
    assert false["n_false_mel"] == 1 and false["by_true_class"][0]["dx"] == "nv"
    text = markdown(r)
    assert "### 2a. By body site" in text and "| face | 7 | 3 (3) | fusion | 0.333" in text
    json.dumps(r, allow_nan=False)   # plain numbers, no NaN


def test_the_command_writes_the_json_and_the_markdown(tmp_path):
    md, frames = _synthetic()
    (tmp_path / "data" / "images").mkdir(parents=True)
    md.to_csv(tmp_path / "data" / "metadata.csv", index=False)
    for i in md["image_id"]:
        Image.new("RGB", (4, 3)).save(tmp_path / "data" / "images" / f"{i}.jpg")
    write_logits(frames, tmp_path / "oof.csv")
    out = tmp_path / "out" / "melanoma_errors.md"
    assert melanoma_errors.main(["--data", str(tmp_path / "data"), "--oof", str(tmp_path / "oof.csv"),
                                 "--folds", str(tmp_path / "none.csv"), "--out", str(out), "--n-boot", "20"]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    # The shipped temperatures rescale p but keep each image's top class.
    assert r["missed"]["fusion"]["top_class"]["n_missed"] == 3
    assert out.read_text().startswith("# Melanoma errors, out-of-fold")
