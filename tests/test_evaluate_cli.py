"""The evaluation CLI contract, on a small folder made from the committed examples."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_module
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES

METRIC_KEYS = {"balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "per_class",
               "confusion_matrix", "ece"}


@pytest.fixture
def folder(example_folder):
    """The 7 examples plus a flipped copy of each (new image ids, one lesion each)."""
    md = pd.read_csv(example_folder / "metadata.csv")
    extra = md.copy()
    extra["image_id"] = extra["image_id"] + "_flip"
    for src, dst in zip(md["image_id"], extra["image_id"]):
        with Image.open(example_folder / "images" / f"{src}.jpg") as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(example_folder / "images" / f"{dst}.jpg")
    pd.concat([md, extra]).to_csv(example_folder / "metadata.csv", index=False)
    return example_folder


def test_evaluate_writes_the_json_and_csv_contract(folder, tmp_path):
    out, preds = tmp_path / "metrics.json", tmp_path / "predictions.csv"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", out, "--predictions", preds)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(out.read_text())
    for k in ("fusion", "image_only"):
        m = metrics[k]
        assert METRIC_KEYS <= m.keys()
        assert set(m["per_class"]) == set(CLASSES)
        assert all({"precision", "recall", "f1", "auc", "support"} <= v.keys() for v in m["per_class"].values())
        cm = np.array(m["confusion_matrix"]["rows_true_cols_pred"])
        assert cm.shape == (7, 7) and cm.sum() == 14 and m["confusion_matrix"]["labels"] == list(CLASSES)
        assert 0 <= m["balanced_accuracy"] <= 1 and 0 <= m["ece"] <= 1
    df = pd.read_csv(preds)
    assert list(df.columns) == ["image_id", "model", *CLASSES]
    # The similar cases' vote is a third model, knn, scored and written like the other two.
    assert len(df) == 42 and set(df["model"]) == {"fusion", "image_only", "knn"}
    assert df.groupby("model")["image_id"].apply(set).map(len).tolist() == [14, 14, 14]
    assert np.allclose(df[list(CLASSES)].sum(axis=1), 1.0, atol=1e-4)
    assert METRIC_KEYS <= metrics["knn"].keys()
    # The CLI's numbers are the app's numbers: the same Predictor, the same calibration.
    md = pd.read_csv(folder / "metadata.csv").iloc[0]
    with Image.open(folder / "images" / f"{md.image_id}.jpg") as im:
        direct = Predictor().probabilities([im.convert("RGB")], [(md.age, md.sex, md.localization)])
    row = df[(df.image_id == md.image_id) & (df.model == "fusion")][list(CLASSES)].to_numpy()
    assert np.allclose(row, direct["fusion"], atol=1e-5)
    # knn rows are the vote the app shows for that image (default k, no filters).
    with Image.open(folder / "images" / f"{md.image_id}.jpg") as im:
        shown = Predictor().analyze(im.convert("RGB"), md.age, md.sex, md.localization).similar_cases.vote
    knn = df[(df.image_id == md.image_id) & (df.model == "knn")][list(CLASSES)].to_numpy()[0]
    assert np.allclose(knn, [shown[c] for c in CLASSES], atol=1e-6)


def test_evaluate_on_a_wrong_folder_says_what_is_wrong(tmp_path):
    r = run_module("train.evaluation.evaluate", "--data", tmp_path, "--out", tmp_path / "m.json",
                   "--predictions", tmp_path / "p.csv")
    assert r.returncode == 2 and "metadata.csv not found" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_sets_writes_one_row_per_image_model_and_level(folder, tmp_path):
    out, preds, sets = tmp_path / "metrics.json", tmp_path / "predictions.csv", tmp_path / "sets.csv"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", out, "--predictions", preds, "--sets", sets)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(sets, dtype={"level": str}, keep_default_na=False)
    assert list(df.columns) == ["image_id", "model", "level", "set"]
    assert len(df) == 14 * 2 * 2 and set(df["level"]) == {"0.9", "0.95"}
    for s in df["set"]:
        assert s == "" or set(s.split("|")) <= set(CLASSES)
    # A 95% set holds its 90% set, and the CLI's sets are the app's.
    wide = df.pivot_table(index=["image_id", "model"], columns="level", values="set", aggfunc="first")
    assert all(set(a.split("|")) - {""} <= set(b.split("|")) for a, b in zip(wide["0.9"], wide["0.95"]))
    md = pd.read_csv(folder / "metadata.csv").iloc[0]
    with Image.open(folder / "images" / f"{md.image_id}.jpg") as im:
        a = Predictor().analyze(im.convert("RGB"), md.age, md.sex, md.localization)
    for k in ("fusion", "image_only"):
        row = df[(df.image_id == md.image_id) & (df.model == k) & (df.level == "0.9")]["set"].iloc[0]
        assert row.split("|") == a.prediction_sets["0.9"][k] or (row == "" and not a.prediction_sets["0.9"][k])
    # The other outputs are as without --sets.
    assert len(pd.read_csv(preds)) == 42 and json.loads(out.read_text())["fusion"]["confusion_matrix"]


def test_by_lesion_writes_one_row_per_lesion_from_all_of_its_images(folder, tmp_path):
    """Each example and its flipped copy become one lesion: 7 rows per model, named by the first
    image id, each the app's combined answer for both images."""
    md = pd.read_csv(folder / "metadata.csv")
    md.loc[md["image_id"].str.endswith("_flip"), "lesion_id"] = md["lesion_id"].iloc[:7].to_numpy()
    md.to_csv(folder / "metadata.csv", index=False)
    out, preds = tmp_path / "metrics.json", tmp_path / "predictions.csv"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", out, "--predictions", preds, "--by-lesion")
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(preds)
    assert list(df.columns) == ["image_id", "model", *CLASSES]
    assert len(df) == 21 and set(df["image_id"]) == set(md["image_id"].iloc[:7])  # "X" sorts before "X_flip"
    metrics = json.loads(out.read_text())
    assert metrics["data"]["n_lesions"] == 7 and metrics["data"]["n_images"] == 14
    first = md.iloc[0]
    images = []
    for name in (first.image_id, first.image_id + "_flip"):
        with Image.open(folder / "images" / f"{name}.jpg") as im:
            images.append(im.convert("RGB"))
    shown = Predictor().analyze(images, first.age, first.sex, first.localization)
    row = df[(df.image_id == first.image_id) & (df.model == "fusion")][list(CLASSES)].to_numpy()[0]
    assert np.allclose(row, [shown.fusion.probabilities[c] for c in CLASSES], atol=1e-5)


def test_masks_out_writes_each_images_outline_at_its_own_size(folder, tmp_path):
    """--masks-out: <image_id>_segmentation.png, 0/255, the image's own size (a wide copy included);
    with the folder's own masks, metrics.json scores them."""
    from lesion_app.classifier.manifest import Manifest
    if not Manifest.load().segmentation:
        pytest.skip("these weights ship no lesion segmenter")
    md = pd.read_csv(folder / "metadata.csv")
    first = md["image_id"].iloc[0]
    with Image.open(folder / "images" / f"{first}.jpg") as im:      # 400x150: wider than 4:3
        wide = Image.new("RGB", (400, 150), (230, 190, 170))
        wide.paste(im, (100, 0))
        wide.save(folder / "images" / f"{first}.jpg")
    (folder / "masks").mkdir(exist_ok=True)
    for i in md["image_id"]:
        with Image.open(folder / "images" / f"{i}.jpg") as im:
            Image.new("L", im.size, 0).save(folder / "masks" / f"{i}_segmentation.png")
    out = tmp_path / "masks"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", tmp_path / "m.json",
                   "--predictions", tmp_path / "p.csv", "--masks-out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    for i in md["image_id"]:
        with Image.open(folder / "images" / f"{i}.jpg") as im, Image.open(out / f"{i}_segmentation.png") as m:
            a = np.asarray(m)
            assert m.size == im.size and set(np.unique(a)) <= {0, 255} and (a == 255).any()
    wide_mask = np.asarray(Image.open(out / f"{first}_segmentation.png"))
    assert not wide_mask[:, :100].any() and not wide_mask[:, 300:].any()   # outside the centre crop
    seg = json.loads((tmp_path / "m.json").read_text())["segmentation"]
    assert seg["n"] == len(md) and seg["dice"] == 0.0    # empty true masks, a lesion found in each image


def test_a_folder_of_another_clinic_with_three_classes_is_scored_over_those_classes(folder, tmp_path):
    """ISIC 2017's layout (issue 36): mel, bkl and nv only, stored squashed to a square; --aspect
    4:3 un-squashes each image first; the transfer figures come out of the same predictions."""
    from sklearn.metrics import roc_auc_score
    md = pd.read_csv(folder / "metadata.csv")
    md = md[md["dx"].isin(["mel", "bkl", "nv"])]
    for i in md["image_id"]:
        p = folder / "images" / f"{i}.jpg"
        with Image.open(p) as im:
            im.convert("RGB").resize((256, 256)).save(p)
    md.to_csv(folder / "metadata.csv", index=False)
    out, preds, sets = tmp_path / "m.json", tmp_path / "p.csv", tmp_path / "s.csv"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", out, "--predictions", preds,
                   "--sets", sets, "--aspect", "4:3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "classes present: bkl, mel, nv" in r.stdout and "mel-vs-nv AUC" in r.stdout
    m = json.loads(out.read_text())
    assert m["data"]["aspect"] == "4:3"
    df = pd.read_csv(preds)
    y = md.set_index("image_id")["dx"]
    for k in ("fusion", "image_only"):
        f = m[k]
        assert f["classes_present"] == ["bkl", "mel", "nv"]
        rows = df[df["model"] == k]
        truth = y.loc[rows["image_id"]].to_numpy()
        pair = np.isin(truth, ["mel", "nv"])
        assert f["mel_vs_nv_auc"] == pytest.approx(roc_auc_score(truth[pair] == "mel", rows["mel"].to_numpy()[pair]), abs=1e-6)
        assert f["mel_auc"] == pytest.approx(roc_auc_score(truth == "mel", rows["mel"]), abs=1e-6)
        s = pd.read_csv(sets)
        s = s[(s["model"] == k) & (s["level"].astype(str) == "0.9")].set_index("image_id")
        covered = [y[i] in str(s.loc[i, "set"]).split("|") for i in s.index]
        assert len(covered) == len(md)
        assert f["sets"]["0.9"]["coverage"] == pytest.approx(np.mean(covered))
    # The image the models saw was the un-squashed one: 256x192, not a 4:3 crop of the square.
    i = md["image_id"].iloc[0]
    with Image.open(folder / "images" / f"{i}.jpg") as im:
        direct = Predictor().probabilities([im.convert("RGB").resize((256, 192), Image.Resampling.LANCZOS)],
                                           [tuple(md.iloc[0][["age", "sex", "localization"]])])
    row = df[(df.image_id == i) & (df.model == "fusion")][list(CLASSES)].to_numpy()
    assert np.allclose(row, direct["fusion"], atol=1e-5)


def test_a_bad_aspect_is_refused_with_the_form_it_takes(folder, tmp_path):
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", tmp_path / "m.json",
                   "--predictions", tmp_path / "p.csv", "--aspect", "wide")
    assert r.returncode == 2 and "--aspect takes W:H, such as 4:3" in r.stderr


def test_a_folder_of_two_classes_is_scored_over_those_two(folder, tmp_path):
    """A hospital set of nevi and melanomas only (issue 37's transfer table): balanced accuracy is the
    mean recall of the two, macro AUC the mean of their one-vs-rest AUCs, whatever the other five
    classes receive."""
    from sklearn.metrics import roc_auc_score
    md = pd.read_csv(folder / "metadata.csv")
    md = md[md["dx"].isin(["mel", "nv"])]
    md.to_csv(folder / "metadata.csv", index=False)
    out, preds = tmp_path / "m.json", tmp_path / "p.csv"
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", out, "--predictions", preds)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "classes present: mel, nv" in r.stdout
    m, df = json.loads(out.read_text()), pd.read_csv(preds)
    y = md.set_index("image_id")["dx"]
    for k in ("fusion", "image_only"):
        rows = df[df["model"] == k]
        truth, probs = y.loc[rows["image_id"]].to_numpy(), rows[list(CLASSES)].to_numpy()
        called = np.array(CLASSES)[probs.argmax(1)]
        recalls = [np.mean(called[truth == c] == c) for c in ("mel", "nv")]
        assert m[k]["classes_present"] == ["mel", "nv"]
        assert m[k]["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-6)
        aucs = [roc_auc_score(truth == c, probs[:, CLASSES.index(c)]) for c in ("mel", "nv")]
        assert m[k]["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)
        assert m[k]["mel_vs_nv_auc"] == pytest.approx(roc_auc_score(truth == "mel", rows["mel"]), abs=1e-6)


def test_heldout_half_scores_only_that_half_with_the_same_figures_as_those_rows(folder, tmp_path):
    """--heldout-half (issue 37): earlier weights scored on the images a second-source run never trained
    on, so the two rows of the model card cover the same images; a missing file is a message."""
    md = pd.read_csv(folder / "metadata.csv")
    halves = tmp_path / "halves.csv"    # by lesion: the first 3 lesions' images fit, the rest held out
    fit_lesions = sorted(md["lesion_id"].unique())[:3]
    md.assign(half=md["lesion_id"].isin(fit_lesions).map({True: "fit", False: "heldout"}))[
        ["image_id", "lesion_id", "dx", "half"]].to_csv(halves, index=False)
    held = set(md.loc[~md["lesion_id"].isin(fit_lesions), "image_id"])
    assert 0 < len(held) < len(md)
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", tmp_path / "h.json",
                   "--predictions", tmp_path / "h.csv", "--heldout-half", halves)
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(pd.read_csv(tmp_path / "h.csv")["image_id"]) == held
    metrics = json.loads((tmp_path / "h.json").read_text())
    assert metrics["data"]["n_images"] == len(held) and "held-out half" in metrics["data"]["images"]
    r = run_module("train.evaluation.evaluate", "--data", folder, "--out", tmp_path / "x.json",
                   "--predictions", tmp_path / "x.csv", "--heldout-half", tmp_path / "none.csv")
    assert r.returncode == 2 and "none.csv" in r.stderr and "Traceback" not in r.stderr
