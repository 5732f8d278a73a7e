"""Cross-validation: the committed folds, the shipped ensembles, and a tiny end-to-end run."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import DATA, REPO, add_mirrored_copies, needs_dataset, run_module
from lesion_app.files.image_input import load_upload
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import MODEL_KEYS, WEIGHTS_DIR, load_manifest
from train.data.splits import DEFAULT_FOLDS, heldout_path, load_folds, load_heldout

EXAMPLES = REPO / "lesion_app" / "examples"


def test_committed_folds_never_split_a_lesion_and_hold_every_image_once():
    folds = load_folds(DEFAULT_FOLDS)
    assert list(folds.columns) == ["image_id", "lesion_id", "dx", "fold"]
    assert folds["image_id"].is_unique and len(folds) == 8480
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (folds.groupby("lesion_id")["fold"].nunique() == 1).all()
    # Stratified: every class is in every fold, in about the same share.
    share = pd.crosstab(folds["dx"], folds["fold"], normalize="index")
    assert (share > 0.15).all().all() and (share < 0.25).all().all()


def test_heldout_slice_is_whole_lesions_and_the_examples_come_from_it():
    folds, held = load_folds(DEFAULT_FOLDS), load_heldout(DEFAULT_FOLDS)
    assert len(held) > 300 and set(held["dx"]) == set(CLASSES)
    lesions = set(held["lesion_id"])
    assert set(folds.loc[folds["lesion_id"].isin(lesions), "image_id"]) == set(held["image_id"])
    examples = pd.read_csv(EXAMPLES / "metadata.csv", dtype=str)
    assert set(examples["image_id"]) <= set(held["image_id"])
    assert sorted(examples["dx"]) == sorted(CLASSES)


@needs_dataset
def test_folds_cover_exactly_the_shared_dataset():
    md = pd.read_csv(DATA / "metadata.csv", dtype=str)
    folds = load_folds(DEFAULT_FOLDS).set_index("image_id")
    assert set(md["image_id"]) == set(folds.index)
    assert (md.set_index("image_id")["lesion_id"] == folds.loc[md["image_id"], "lesion_id"]).all()


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def test_manifest_names_every_member_the_folds_and_the_ensemble_rule(predictor):
    m = load_manifest(WEIGHTS_DIR)
    assert m["folds_file"] == "train/splits/ham10000_folds.csv"
    from lesion_app.classifier.weights import sha256_file
    assert m["folds_sha256"] == sha256_file(REPO / m["folds_file"])
    assert m["heldout_sha256"] == sha256_file(heldout_path(REPO / m["folds_file"]))
    sizes = []
    for k in MODEL_KEYS:
        e = m["models"][k]
        assert [x["fold"] for x in e["members"]] == [0, 1, 2, 3, 4] and "mean" in e["ensemble"]
        assert 0.1 <= e["temperature"] <= 10 and e["temperature_fitted_on"].startswith("out-of-fold")
        assert len(predictor.models[k].members) == 5
        sizes += [(WEIGHTS_DIR / x["file"]).stat().st_size for x in e["members"]]
    sizes.append((WEIGHTS_DIR / m["trunk"]["file"]).stat().st_size)
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert max(sizes) <= 10_000_000 and total <= 80_000_000
    assert {"feature_cache", "fusion_members", "image_only_members", "total"} <= m["training_wall_time_seconds"].keys()


def test_ensemble_logits_are_the_mean_of_its_members(predictor):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 192, 256)
    meta = torch.stack([predictor.encode(60, "male", "back"), predictor.encode(None, "female", "face")])
    for k in MODEL_KEYS:
        ens = predictor.models[k]
        m = meta if ens.uses_metadata else None
        with torch.no_grad():
            members = torch.stack([member(x, m) for member in ens.members])
            assert not torch.allclose(members[0], members[1])   # the members really differ
            assert torch.allclose(ens(x, m), members.mean(0), atol=1e-5)


def test_the_trunk_runs_once_per_analysis_for_all_ten_members(predictor):
    calls = []
    hooks = [member.backbone.conv_stem.register_forward_hook(lambda *_: calls.append(1))
             for ens in predictor.models.values() for member in ens.members]
    upper = []
    hooks += [member.backbone.blocks[-1].register_forward_hook(lambda *_: upper.append(1))
              for ens in predictor.models.values() for member in ens.members]
    try:
        image = load_upload(EXAMPLES / "images" / f"{pd.read_csv(EXAMPLES / 'metadata.csv').image_id[0]}.jpg")
        predictor.analyze(image, 50, "male", "back")
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 1                # one batched pass of the 4 flip views, shared by everyone
    assert len(upper) == 10               # each member's blocks once: Grad-CAM starts from their kept output


def weights_copy(tmp_path):
    dst = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, dst)
    return dst


def start_app(weights) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LESION_APP_WEIGHTS": str(weights),
           "GRADIO_SERVER_PORT": "1"}   # never reached: the weights are refused first
    return subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_corrupted_or_missing_member_refuses_to_start_naming_the_file_and_the_fix(tmp_path):
    weights = weights_copy(tmp_path)
    path = weights / "fusion_fold3.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = start_app(weights)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "fusion_fold3.safetensors" in r.stderr and "corrupted" in r.stderr and "git checkout" in r.stderr
    path.unlink()
    r = start_app(weights)
    assert r.returncode != 0 and "fusion_fold3.safetensors is missing" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def tiny(example_folder, tmp_path):
    """The 7 examples plus a flipped copy of each as another lesion: 14 images, 2 per class."""
    add_mirrored_copies(example_folder)
    folds = tmp_path / "folds.csv"
    r = run_module("train.data.make_folds", "--data", example_folder, "--out", folds, "--folds", 2,
                   "--heldout-share", 0.3)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"data": example_folder, "folds": folds, "cache": tmp_path / "cache", "out": tmp_path / "cv"}


def cv(tiny, *extra):
    r = run_module("train.fitting.cv", "--data", tiny["data"], "--folds", tiny["folds"], "--cache", tiny["cache"],
                   "--out", tiny["out"], "--epochs", 1, "--batch", 4, "--threads", 1, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_tiny_cross_validation_writes_out_of_fold_predictions_for_every_image(tiny):
    folds = load_folds(tiny["folds"])
    held = load_heldout(tiny["folds"])
    assert (folds.groupby("lesion_id")["fold"].nunique() == 1).all() and len(held) > 0
    r = cv(tiny)
    oof = pd.read_csv(tiny["out"] / "oof_logits.csv")
    for k in MODEL_KEYS:
        rows = oof[oof["model"] == k]
        assert sorted(rows["image_id"]) == sorted(folds["image_id"])
        assert (rows.set_index("image_id").loc[folds["image_id"], "fold"].to_numpy() == folds["fold"]).all()
        assert np.isfinite(rows[[f"logit_{c}" for c in CLASSES]].to_numpy()).all()
    summary = json.loads((tiny["out"] / "cv.json").read_text())
    assert set(summary["out_of_fold"]) == set(MODEL_KEYS)
    assert all(0.05 <= summary["out_of_fold"][k]["temperature"] <= 10 for k in MODEL_KEYS)
    # No member trained on its own fold or on the held-out slice.
    for k in MODEL_KEYS:
        for f in (0, 1):
            info = json.loads((tiny["out"] / f"{k}_fold{f}" / "member.json").read_text())
            train = folds[(folds["fold"] != f) & ~folds["image_id"].isin(held["image_id"])]
            assert info["n_train"] == len(train)
            assert (tiny["out"] / f"{k}_fold{f}" / "member.safetensors").is_file()
    held_logits = pd.read_csv(tiny["out"] / "heldout_logits.csv")
    assert set(held_logits["member"]) == {0, 1} and set(held_logits["image_id"]) == set(held["image_id"])
    assert "image_only fold 0" in r.stdout and "out-of-fold balanced accuracy" in r.stdout

    # Resumable per member: a finished run trains nothing again.
    before = {p: p.stat().st_mtime_ns for p in tiny["out"].glob("*/member.safetensors")}
    again = cv(tiny)
    assert "trained in" not in again.stdout
    assert before == {p: p.stat().st_mtime_ns for p in tiny["out"].glob("*/member.safetensors")}


def test_a_lite2_run_caches_its_own_trunk_and_records_its_backbone(tiny):
    """Variant b of issue 24: --arch trains on Lite2's frozen stages (from its packaged ImageNet
    weights), in a cache of its own, and every record names the backbone the bundle must serve."""
    from safetensors.torch import load_file
    from lesion_app.classifier.models import LesionClassifier
    from train.release import bundle
    cv(tiny, "--arch", "tf_efficientnet_lite2")
    caches = [np.load(f, mmap_mode="r") for f in tiny["cache"].glob("*/lower.npy")]
    assert [c.shape[2:] for c in caches] == [(120, 12, 16)]   # Lite2's blocks[4]: 120 channels (lite0: 112)
    assert json.loads((tiny["out"] / "cv.json").read_text())["arch"] == "tf_efficientnet_lite2"
    for k in MODEL_KEYS:
        assert json.loads((tiny["out"] / f"{k}_fold0" / "member.json").read_text())["arch"] == "tf_efficientnet_lite2"
    lite2 = LesionClassifier("image_only", arch="tf_efficientnet_lite2", pretrained=False)
    assert load_file(tiny["out"] / "image_only_fold0" / "member.safetensors").keys() == \
        {k for k in lite2.state_dict() if not lite2.is_lower_key(k)}
    assert bundle.run_arch(tiny["out"]) == "tf_efficientnet_lite2"
    # The lite0 cache is another folder: a lite0 run beside it does not read Lite2's features.
    tiny["out"] = tiny["out"].with_name("cv_lite0")
    cv(tiny, "--kinds", "image_only")
    assert sorted(np.load(f, mmap_mode="r").shape[2] for f in tiny["cache"].glob("*/lower.npy")) == [112, 120]


def test_cv_without_a_folds_file_says_how_to_make_one(tmp_path, example_folder):
    r = run_module("train.fitting.cv", "--data", example_folder, "--folds", tmp_path / "none.csv", "--out", tmp_path / "cv")
    assert r.returncode == 2 and "python -m train.data.make_folds" in r.stderr and "Traceback" not in r.stderr


def test_a_carry_run_caches_the_apps_input_first_and_records_its_input_spec(tiny):
    """Issue 37's recipe option: --views carry caches, per image, the 4 flips of the app's input (with
    the run's colour constancy, field of view and source width) and then 4 random views of other
    devices' looks, in a cache of its own; cv.json records the spec the app must serve it with."""
    from lesion_app.classifier.models import LesionClassifier
    from lesion_app.classifier.preprocess import InputSpec, flip_views, to_tensor
    from train.data.dataset import load_image, load_metadata
    cv(tiny, "--kinds", "fusion", "--views", "carry", "--colour-constancy", 6, "--field-of-view",
       "--source-width", 200)
    summary = json.loads((tiny["out"] / "cv.json").read_text())
    spec = InputSpec(**summary["input_spec"])
    assert spec == InputSpec(source_width=200, field_of_view=True, colour_constancy=6.0) and summary["views"] == "carry"
    assert summary["carry_views"]["carry"]["vignette"] == 0.25 and summary["carry_views"]["augment"]["min_area"] == 0.4
    (cache,) = [np.load(f, mmap_mode="r") for f in tiny["cache"].glob("*/lower.npy")]
    ids = pd.read_csv(tiny["out"] / "oof_logits.csv")["image_id"].unique()
    order = list(load_metadata(tiny["data"]).merge(load_folds(tiny["folds"])[["image_id"]], on="image_id")["image_id"])
    trunk = LesionClassifier("image_only").eval()
    first = order[0]
    with torch.inference_mode():
        expected = trunk.lower(flip_views(to_tensor(load_image(tiny["data"], first), spec)[None])[0]).numpy()
    assert np.allclose(cache[0, :4].astype(np.float32), expected, atol=0.02)
    assert not np.allclose(cache[0, 4:].astype(np.float32), expected, atol=0.02)
    assert len(ids) == len(order)
    # The shipped recipe's cache is another folder: a flips run beside it does not read carry views.
    tiny["out"] = tiny["out"].with_name("cv_flips")
    cv(tiny, "--kinds", "fusion")
    assert len(list(tiny["cache"].glob("*/lower.npy"))) == 2


def test_a_runs_members_score_another_folder_before_the_bundle_as_its_heldout_logits_say(tiny, tmp_path):
    """train.release.run_transfer (issue 37: recipes compared on another clinic's images before
    they ship): a carry run's fusion members, finished while its image-only members are not, score a
    folder through the run's own input spec; on the run's own held-out images that gives the
    held-out logits the run recorded (mean over members, the run's temperature), and the paired
    figures are those of the two prediction sets."""
    from train.evaluation.metrics import balanced_accuracy, softmax
    from train.data.dataset import labels, load_metadata
    cv(tiny, "--kinds", "fusion", "--views", "carry", "--colour-constancy", 6, "--field-of-view",
       "--source-width", 200)
    summary = json.loads((tiny["out"] / "cv.json").read_text())
    held = pd.read_csv(tiny["out"] / "heldout_logits.csv")
    held = held[held["model"] == "fusion"]
    folder = tmp_path / "other"
    (folder / "images").mkdir(parents=True)
    md = load_metadata(tiny["data"])
    for i in md["image_id"]:
        shutil.copy(tiny["data"] / "images" / f"{i}.jpg", folder / "images" / f"{i}.jpg")
    md.to_csv(folder / "metadata.csv", index=False)
    # What it is compared against: another set of predictions of the same images (here the run's
    # out-of-fold ones, each image from the member that did not train on it).
    oof = pd.read_csv(tiny["out"] / "oof_logits.csv")
    oof = oof[oof["model"] == "fusion"].set_index("image_id").loc[md["image_id"]]
    against = softmax(oof[[f"logit_{c}" for c in CLASSES]].to_numpy(), 1.0)
    pd.DataFrame(against, columns=list(CLASSES)).assign(image_id=md["image_id"], model="fusion").to_csv(
        tmp_path / "against.csv", index=False)
    r = run_module("train.release.run_transfer", "--cv", tiny["out"], "--other", folder,
                   "--against", tmp_path / "against.csv", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "t.json").read_text())
    probs = pd.read_csv(tmp_path / "t.csv").set_index("image_id").loc[md["image_id"], list(CLASSES)]
    ids = sorted(held["image_id"].unique())
    z = np.mean([held[held["member"] == k].set_index("image_id").loc[ids, [f"logit_{c}" for c in CLASSES]]
                 for k in sorted(held["member"].unique())], axis=0)
    expected = softmax(z, summary["out_of_fold"]["fusion"]["temperature"])
    assert result["members"] == 2 and np.allclose(probs.loc[ids], expected, atol=0.01)   # the run scored a fp16 cache
    y, got = labels(md), probs.to_numpy()
    d = result["paired_difference"]["balanced_accuracy"]
    assert d["difference"] == pytest.approx(balanced_accuracy(y, got) - balanced_accuracy(y, against), abs=1e-6)
    # Asked for a kind the run has not finished, it says what to run.
    r = run_module("train.release.run_transfer", "--cv", tiny["out"], "--kind", "image_only", "--other", folder,
                   "--against", tmp_path / "against.csv", "--out", tmp_path / "t2")
    assert r.returncode == 2 and "--kinds image_only" in r.stderr


def squashed_other_clinic(tiny, folder):
    """The tiny folder's images as another clinic's, stored squashed to 256x256 as ISIC 2017's are,
    with ids of their own and no body site."""
    from train.data.dataset import load_metadata
    (folder / "images").mkdir(parents=True)
    md = load_metadata(tiny["data"])
    md = md.assign(image_id="OTHER_" + md["image_id"], lesion_id="OTHER_" + md["lesion_id"], localization="unknown")
    for src, dst in zip(load_metadata(tiny["data"])["image_id"], md["image_id"]):
        with Image.open(tiny["data"] / "images" / f"{src}.jpg") as im:
            im.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS).save(folder / "images" / f"{dst}.jpg")
    md.to_csv(folder / "metadata.csv", index=False)
    return md


def test_a_second_source_trains_every_member_on_its_fit_half_and_is_scored_on_the_other(tiny, tmp_path):
    """Issue 37, point 2: --second-source adds another clinic's fit half (train.data.make_halves) to
    every member's training rows, restored to 4:3 and cached; the out-of-fold figures stay
    HAM10000's; run_transfer scores such a run only on the half it never trained on."""
    from lesion_app.classifier.models import LesionClassifier
    from lesion_app.classifier.preprocess import InputSpec, flip_views, to_tensor
    from train.data.dataset import folder_image, load_image
    from train.data.splits import load_halves
    other = squashed_other_clinic(tiny, tmp_path / "other")
    halves_file = tmp_path / "halves.csv"
    r = run_module("train.data.make_halves", "--data", tmp_path / "other", "--out", halves_file)
    assert r.returncode == 0, r.stderr[-2000:]
    halves = load_halves(halves_file)
    fit = halves.loc[halves["half"] == "fit", "image_id"]
    assert len(fit) == 7 and sorted(halves.loc[halves["half"] == "fit", "dx"]) == sorted(CLASSES)
    again = run_module("train.data.make_halves", "--data", tmp_path / "other", "--out", halves_file)
    assert again.returncode != 0 and "--force" in again.stderr          # the committed file is never overwritten

    r = cv(tiny, "--second-source", tmp_path / "other", "--second-halves", halves_file, "--second-aspect", "4:3")
    assert "second source: 7 images" in r.stdout
    folds, held = load_folds(tiny["folds"]), load_heldout(tiny["folds"])
    for f in (0, 1):
        info = json.loads((tiny["out"] / f"fusion_fold{f}" / "member.json").read_text())
        ham = folds[(folds["fold"] != f) & ~folds["image_id"].isin(held["image_id"])]
        assert info["n_train"] == len(ham) + 7 and info["n_train_second_source"] == 7
        assert len(np.load(tiny["out"] / f"rank_fold{f}.npy")) == info["n_train"]   # the curriculum ranked them too
    oof = pd.read_csv(tiny["out"] / "oof_logits.csv")
    assert set(oof["image_id"]) == set(folds["image_id"])                  # scored out of fold: HAM10000's only
    record = json.loads((tiny["out"] / "cv.json").read_text())["second_source"]
    assert record["n_fit"] == 7 and record["aspect"] == "4:3" and record["halves_file"] == str(halves_file)

    # Its cache holds the fit half's flips, restored to 4:3 (not the squashed square).
    (cache,) = [np.load(f, mmap_mode="r") for f in tiny["cache"].glob("*/lower.npy") if np.load(f, mmap_mode="r").shape[0] == 7]
    trunk = LesionClassifier("image_only").eval()
    first = fit.iloc[0]
    with torch.inference_mode():
        lower = lambda im: trunk.lower(flip_views(to_tensor(im, InputSpec())[None])[0]).numpy()  # noqa: E731
        restored, squashed = lower(folder_image(tmp_path / "other", first, 4 / 3)), lower(load_image(tmp_path / "other", first))
    assert np.allclose(cache[0, :4].astype(np.float32), restored, atol=0.02)
    assert not np.allclose(cache[0, :4].astype(np.float32), squashed, atol=0.02)

    uniform = pd.DataFrame(np.full((len(other), len(CLASSES)), 1 / len(CLASSES)), columns=list(CLASSES))
    uniform.assign(image_id=other["image_id"], model="fusion").to_csv(tmp_path / "against.csv", index=False)
    r = run_module("train.release.run_transfer", "--cv", tiny["out"], "--other", tmp_path / "other", "--aspect", "4:3",
                   "--against", tmp_path / "against.csv", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "t.json").read_text())
    scored = set(pd.read_csv(tmp_path / "t.csv")["image_id"])
    assert result["n"] == 7 and scored == set(halves.loc[halves["half"] == "heldout", "image_id"])
    assert "held-out half" in result["images"]

    # Bundled, the weights say what they trained on, and evaluate scores that folder on the held-out half only.
    weights = tmp_path / "weights"
    r = run_module("train.release.bundle", "--cv", tiny["out"], "--data", tiny["data"], "--out", weights,
                   "--reports", tmp_path / "reports")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((weights / "manifest.json").read_text())["second_source"] == record
    assert f"also trained on the fit half of `{halves_file}`" in (weights / "MODEL_CARD.md").read_text()
    r = run_module("train.evaluation.evaluate", "--data", tmp_path / "other", "--aspect", "4:3", "--weights", weights,
                   "--out", tmp_path / "e.json", "--predictions", tmp_path / "e.csv")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(pd.read_csv(tmp_path / "e.csv")["image_id"]) == set(halves.loc[halves["half"] == "heldout", "image_id"])
    assert "held-out half" in json.loads((tmp_path / "e.json").read_text())["data"]["images"]

    # Continued without its second source, the run refuses (its members would mix two training sets).
    r = run_module("train.fitting.cv", "--data", tiny["data"], "--folds", tiny["folds"], "--cache", tiny["cache"],
                   "--out", tiny["out"], "--kinds", "fusion")
    assert r.returncode == 2 and "began with another second source" in r.stderr
    # A halves file changed since the run trained is refused by run_transfer: its held-out half is no longer sure.
    halves.assign(half=halves["half"].map({"fit": "heldout", "heldout": "fit"})).to_csv(halves_file, index=False)
    r = run_module("train.release.run_transfer", "--cv", tiny["out"], "--other", tmp_path / "other", "--aspect", "4:3",
                   "--against", tmp_path / "against.csv", "--out", tmp_path / "t3")
    assert r.returncode == 2 and "has changed since" in r.stderr and not (tmp_path / "t3.json").exists()


def test_a_second_source_with_halves_of_another_folder_is_refused_with_the_fix(tiny, tmp_path):
    squashed_other_clinic(tiny, tmp_path / "other")
    halves = tmp_path / "halves.csv"
    assert run_module("train.data.make_halves", "--data", tiny["data"], "--out", halves).returncode == 0
    r = run_module("train.fitting.cv", "--data", tiny["data"], "--folds", tiny["folds"], "--cache", tiny["cache"],
                   "--out", tiny["out"], "--second-source", tmp_path / "other", "--second-halves", halves)
    assert r.returncode == 2 and "python -m train.data.make_halves" in r.stderr and "Traceback" not in r.stderr
    assert not (tiny["out"] / "fusion_fold0").exists()


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "isic2017" / "metadata.csv").is_file(),
                    reason="../shared/data/isic2017 is absent (the committed halves are checked against it)")
def test_the_committed_isic2017_halves_are_the_half_the_ood_check_was_fitted_on():
    from train.data.dataset import load_metadata
    from train.data.splits import SECOND_SOURCE_HALVES, draw_fit_half, load_halves, make_halves
    md = load_metadata(REPO.parent / "shared" / "data" / "isic2017")
    halves = load_halves(SECOND_SOURCE_HALVES)
    assert halves.equals(make_halves(md))
    fit = set(halves.loc[halves["half"] == "fit", "image_id"])
    assert fit == set(draw_fit_half(md)["image_id"]) and len(fit) == len(md) // 2
    assert (halves.groupby("dx")["half"].apply(lambda h: (h == "fit").mean()) - 0.5).abs().max() < 0.01
