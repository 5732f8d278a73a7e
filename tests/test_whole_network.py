"""Any recipe can ship (issue 24): bundles of whole-network members, of members over a shared trunk at
split block 4, and of the two kinds mixed, written by train.release.bundle's own code, load through
the real Predictor and analyse an example as the shipped weights do; a member that the manifest
describes differently from its file refuses to start, naming the file."""
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import REPO, add_mirrored_copies, run_module
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.manifest import MODEL_KEYS, WEIGHTS_DIR, Manifest, WeightsError
from lesion_app.classifier.models import ARCH, WHOLE_NETWORK, LesionClassifier, imagenet_state_dict
from lesion_app.classifier.preprocess import flip_views
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import held_split, sha256_file
from lesion_app.evidence.gradcam import CAM_METHODS, TOP_TWO
from lesion_app.files.image_input import load_upload
from train.release import bundle

EXAMPLES = REPO / "lesion_app" / "examples"
SIZE = (192, 256)
METADATA = (55, "male", "back")
EXTRAS = ("ood", "archive", "segmentation", "reader_cases", "shift")   # the shipped files a bundle keeps
LITE2 = "tf_efficientnet_lite2"
SHIPPED_SPLIT = Manifest.load(WEIGHTS_DIR).member_split("fusion")   # where the shipped members' own stages start
OTHER_SPLIT = 5 if SHIPPED_SPLIT == 4 else 4


# ----------------------------------------------------------------------------- building bundles

@pytest.fixture(scope="module")
def imagenet():
    return {k: v for k, v in imagenet_state_dict().items() if not k.startswith("classifier.")}


@pytest.fixture(scope="module")
def images():
    ids = pd.read_csv(EXAMPLES / "metadata.csv")["image_id"]
    return [load_upload(EXAMPLES / "images" / f"{i}.jpg") for i in ids[:2]]


@pytest.fixture(scope="module")
def shipped():
    return Predictor()


def not_dermoscopic() -> Image.Image:
    """A colourful synthetic picture that the OOD check flags by its feature distance."""
    size = (256, 192)
    return Image.merge("RGB", (Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size),
                               Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 60)))


def ood_warnings(analysis) -> list[str]:
    return [w for w in analysis.warnings if "does not look like" in w]


@pytest.fixture(scope="module")
def expected(shipped, images):
    """The shipped weights' analyses of the first example and of a picture that is not dermoscopic."""
    return shipped.analyze(images[0], *METADATA), shipped.analyze(not_dermoscopic(), *METADATA)


def member(imagenet, head: str, seed: int, split, arch: str = ARCH) -> LesionClassifier:
    """A member as training might leave it: ImageNet weights, every tensor above its frozen lower
    stages nudged by seeded noise (so each member's own stages matter), a seeded random head."""
    torch.manual_seed(seed)
    m = LesionClassifier(head, arch=arch, pretrained=False, split_block=split)
    m.backbone.load_state_dict(imagenet)
    with torch.no_grad():
        for name, t in m.named_parameters():
            if name.startswith("backbone.") and not m.is_lower_key(name):
                t.add_(0.05 * t.std().nan_to_num(0) * torch.randn_like(t))
    return m.eval()


def write_run(run, kind: str, models: list, declared, whole_file: bool, arch: str | None = None) -> None:
    """One kind's fold folders in train.fitting.cv's layout. whole_file: the whole state dict in fp32,
    as train.fitting.full's save_model writes it; else what train.fitting.cv writes (fp16, without
    the frozen lower stages)."""
    for fold, m in enumerate(models):
        d = run / f"{kind}_fold{fold}"
        d.mkdir(parents=True)
        state = {k: (v if whole_file or not v.is_floating_point() else v.half()).contiguous()
                 for k, v in m.state_dict().items() if whole_file or not m.is_lower_key(k)}
        save_file(state, d / "member.safetensors")
        (d / "member.json").write_text(json.dumps({"kind": kind, "fold": fold, "split_block": declared,
                                                   "n_train": 100, "train_seconds": 1.0,
                                                   "oof_balanced_accuracy": 0.5, **({"arch": arch} if arch else {})}))


def bundle_into(run, out, drop=()) -> Manifest:
    """train.release.bundle.ship's members and trunk, with the shipped manifest's other entries (the
    OOD check, archive, segmenter and reader cases, their files copied), saved into out."""
    out.mkdir()
    members, splits, trunk = bundle.ship(run, out)
    base = Manifest.load(WEIGHTS_DIR)
    extras = {key: None for key in drop}
    for key in set(EXTRAS) - set(drop):
        shutil.copyfile(WEIGHTS_DIR / getattr(base, key)["file"], out / getattr(base, key)["file"])
    manifest = dataclasses.replace(
        base, trunk=trunk, **extras,
        architecture={**base.architecture, "backbone": bundle.run_arch(run),
                      "frozen_lower_stages": bundle.frozen_lower_stages(trunk and trunk["split_block"], splits)},
        models={k: {**base.models[k], "split_block": splits[k], "members": members[k]} for k in MODEL_KEYS})
    manifest.save(out)
    return manifest


@pytest.fixture(scope="module")
def runs(tmp_path_factory, imagenet):
    """Run folders: whole-network fusion members from a cv run fine-tuned from blocks[0] (their frozen
    stem not in the file), whole-network image-only members as train.fitting.full writes them (5: the
    shipped archive embeds 5 members' features), members over a trunk split at blocks[4], and the
    shipped fusion members; and Lite2 members over a Lite2 trunk split at blocks[5] (variant b)."""
    root = tmp_path_factory.mktemp("runs")
    lite2 = {k: v for k, v in imagenet_state_dict(LITE2).items() if not k.startswith("classifier.")}
    for k, head in (("fusion", "concat"), ("image_only", "image_only")):
        write_run(root / "lite2", k, [member(lite2, head, 40 + f, 5, LITE2) for f in range(2)], 5, False, LITE2)
    write_run(root / "whole", "fusion", [member(imagenet, "concat", 10 + f, 0) for f in range(2)], 0, False)
    whole_image_only = [member(imagenet, "image_only", 20 + f, WHOLE_NETWORK) for f in range(5)]
    write_run(root / "whole", "image_only", whole_image_only, WHOLE_NETWORK, True)
    for k, head in (("fusion", "concat"), ("image_only", "image_only")):
        write_run(root / "split4", k, [member(imagenet, head, 30 + f, 4) for f in range(2)], 4, False)
    for f in range(5):
        shutil.copytree(root / "whole" / f"image_only_fold{f}", root / "mixed" / f"image_only_fold{f}")
    for f, entry in enumerate(Manifest.load(WEIGHTS_DIR).members("fusion")):
        d = root / "mixed" / f"fusion_fold{f}"
        d.mkdir()
        shutil.copyfile(WEIGHTS_DIR / entry["file"], d / "member.safetensors")
        (d / "member.json").write_text(json.dumps({"split_block": SHIPPED_SPLIT,
                                                   "n_train": 1, "train_seconds": 1.0,
                                                   "oof_balanced_accuracy": 0.5}))
    return root


@pytest.fixture(scope="module")
def bundles(runs):
    """The bundles, each a weights folder: "whole" (no trunk), "split4" (a trunk split at blocks[4]; no
    archive, which was built for 5 image-only members) and "mixed" (the shipped fusion members and
    trunk, whole-network image-only members)."""
    bundle_into(runs / "whole", runs / "whole_weights")
    bundle_into(runs / "split4", runs / "split4_weights", drop=("archive",))
    bundle_into(runs / "mixed", runs / "mixed_weights")
    bundle_into(runs / "lite2", runs / "lite2_weights", drop=("archive",))
    return {name: runs / f"{name}_weights" for name in ("whole", "split4", "mixed", "lite2")}


@pytest.fixture(scope="module")
def whole(bundles):
    return Predictor(bundles["whole"])


@pytest.fixture(scope="module")
def split4(bundles):
    return Predictor(bundles["split4"])


@pytest.fixture(scope="module")
def mixed(bundles):
    return Predictor(bundles["mixed"])


@pytest.fixture(scope="module")
def lite2(bundles):
    return Predictor(bundles["lite2"])


# ----------------------------------------------------------------------------- what the tests recompute

def own_probabilities(p: Predictor, image, metadata) -> dict[str, np.ndarray]:
    """Each ensemble's calibrated probabilities recomputed from its files alone: every member
    rebuilt from the bundle (its whole network, or the bundle's trunk file plus its upper stages),
    run on the 4 flip views, the logits averaged over members and views, / T, softmax."""
    m = p.manifest
    root = p.weights_dir
    trunk = load_file(root / m.trunk["file"]) if m.trunk else {}
    x = flip_views(p.image_tensor(image)[None])[0]
    meta = p.encode(*metadata)[None].expand(len(x), -1)
    out = {}
    for k in MODEL_KEYS:
        split = m.member_split(k)
        logits = []
        for entry in m.members(k):
            model = LesionClassifier(m.head(k), arch=m.backbone, pretrained=False, split_block=split)
            state = {**(trunk if split != WHOLE_NETWORK else {}), **load_file(root / entry["file"])}
            model.load_state_dict({n: v.float() if v.is_floating_point() else v for n, v in state.items()})
            with torch.no_grad():
                logits.append(model.eval()(x, meta if model.uses_metadata else None))
        out[k] = torch.softmax(torch.stack(logits).mean((0, 1)) / m.temperature(k), 0).numpy()
    return out


def assert_map(heat, empty):
    assert heat.shape == SIZE and not empty
    assert 0 <= heat.min() and heat.max() <= 1 and heat.std() > 0.01   # a map, not a constant


def assert_analysis(p: Predictor, shipped: Predictor, expected, image):
    a = p.analyze(image, *METADATA)
    own = own_probabilities(p, image, METADATA)
    for k, r in (("fusion", a.fusion), ("image_only", a.image_only)):
        probs = np.array([r.probabilities[c] for c in CLASSES])
        assert probs.sum() == pytest.approx(1, abs=1e-5)
        assert np.allclose(probs, own[k], atol=2e-5), k
        assert_map(r.cam, r.cam_empty)
    assert a.shap.base + sum(a.shap.contributions.values()) == pytest.approx(a.shap.value, abs=1e-6)
    assert any(abs(v) > 1e-4 for v in a.shap.contributions.values())
    # The segmenter and the OOD check read the frozen ImageNet trunk, as for the shipped weights.
    x = shipped.image_tensor(image)[None]
    assert torch.allclose(p.frozen_features(x), shipped.frozen_features(x), atol=1e-4)
    assert a.lesion is not None and np.array_equal(a.lesion.mask, expected[0].lesion.mask)
    assert not ood_warnings(a) and not ood_warnings(expected[0])
    odd = ood_warnings(p.analyze(not_dermoscopic(), *METADATA))
    assert odd and odd == ood_warnings(expected[1]) and "feature distance" in odd[0]
    return a


# ----------------------------------------------------------------------------- the bundle

def test_the_bundle_ships_each_kind_of_member_and_refuses_a_mixed_up_run(runs, tmp_path, imagenet):
    out = tmp_path / "out"
    out.mkdir()
    # A member fine-tuned from blocks[0] becomes a whole network: its file plus the frozen ImageNet stem.
    src = runs / "whole" / "fusion_fold0" / "member.safetensors"
    assert held_split(load_file(src)) == 0
    assert bundle.ship_member(src, out / "a.safetensors", 0) == WHOLE_NETWORK
    shipped_state = load_file(out / "a.safetensors")
    assert {**load_file(src), **bundle.trunk_state(0)}.keys() == shipped_state.keys()
    assert torch.equal(shipped_state["backbone.conv_stem.weight"].float(), imagenet["conv_stem.weight"])
    assert all(v.dtype == torch.float16 for v in shipped_state.values() if v.is_floating_point())
    # A whole network in fp32 is shipped in fp16; members over the trunk are copied byte for byte.
    src = runs / "whole" / "image_only_fold0" / "member.safetensors"
    assert bundle.ship_member(src, out / "b.safetensors", WHOLE_NETWORK) == WHOLE_NETWORK
    assert all(torch.equal(v.half(), load_file(out / "b.safetensors")[k]) for k, v in load_file(src).items()
               if v.is_floating_point())
    src = runs / "mixed" / "fusion_fold0" / "member.safetensors"
    assert bundle.ship_member(src, out / "c.safetensors", SHIPPED_SPLIT) == SHIPPED_SPLIT
    assert (out / "c.safetensors").read_bytes() == src.read_bytes()
    # What member.json says must match the file; an ensemble's members must agree.
    with pytest.raises(SystemExit, match=rf"fusion_fold0/member.safetensors holds the upper stages from "
                                         rf"blocks\[{SHIPPED_SPLIT}\], but its member.json says split_block {OTHER_SPLIT}"):
        bundle.ship_member(src, out / "d.safetensors", OTHER_SPLIT)
    bad = tmp_path / "bad"
    shutil.copytree(runs / "split4", bad)
    shutil.copyfile(runs / "whole" / "image_only_fold0" / "member.safetensors",
                    bad / "image_only_fold1" / "member.safetensors")
    (bad / "image_only_fold1" / "member.json").write_text(json.dumps({"n_train": 1, "train_seconds": 1,
                                                                      "oof_balanced_accuracy": 0.5}))
    with pytest.raises(SystemExit, match="image_only members .* hold different parts"):
        bundle.ship(bad, tmp_path / "bad_out")
    # Members over trunks of different splits cannot share one trunk.
    with pytest.raises(SystemExit, match="different blocks"):
        bundle.trunk_split({"fusion": 4, "image_only": 5})


# ----------------------------------------------------------------------------- serving

def test_a_whole_network_bundle_analyses_an_example_as_its_members_compute_it(whole, shipped, expected, images,
                                                                              bundles):
    manifest = json.loads((bundles["whole"] / "manifest.json").read_text())
    assert manifest.get("trunk") is None and not (bundles["whole"] / "trunk.safetensors").exists()
    assert {manifest["models"][k]["split_block"] for k in MODEL_KEYS} == {WHOLE_NETWORK}
    assert not whole.has_shared_trunk and all(m.whole_network for m in whole.models.values())
    a = assert_analysis(whole, shipped, expected, images[0])
    assert a.similar_cases is not None and len(a.similar_cases.cases) == 8
    # The members really differ, so the mean is not one member's answer.
    x = flip_views(whole.image_tensor(images[0])[None].to(whole.device))[0]
    with torch.no_grad():
        logits = [m(x) for m in whole.models["image_only"].members]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


def test_every_heatmap_method_and_the_contrastive_map_draw_for_whole_network_members(whole, images):
    maps = {}
    for method in CAM_METHODS:
        a = whole.analyze(images[0], *METADATA, cam_method=method)
        for r in (a.fusion, a.image_only):
            assert r.cam_method == method
            assert_map(r.cam, r.cam_empty)
        maps[method] = a.image_only.cam
    assert np.abs(maps["LayerCAM (fine)"] - maps["LayerCAM"]).max() > 0.05   # the finer stages count
    assert np.abs(maps["Grad-CAM"] - maps["Grad-CAM++"]).max() > 0.01
    a = whole.analyze(images[0], *METADATA)
    contrast = whole.contrast_map(a)
    top2 = whole.analyze(images[0], *METADATA, cam_class=TOP_TWO)
    ranked = sorted(top2.fusion.probabilities, key=top2.fusion.probabilities.get, reverse=True)
    assert (top2.fusion.cam_class, top2.fusion.cam_versus) == tuple(ranked[:2])
    if top2.fusion.cam_empty:
        assert contrast is None
    else:
        heat, first, second = contrast
        assert (first, second) == tuple(ranked[:2]) and np.allclose(heat, top2.fusion.cam, atol=1e-6)
        assert_map(heat, False)


def test_what_if_and_several_images_of_one_lesion_work_from_the_kept_features(whole, images):
    a = whole.analyze(images[0], *METADATA)
    again = whole.with_metadata(a, 30, "female", "face")
    fresh = whole.analyze(images[0], 30, "female", "face")
    for k in ("fusion", "image_only"):
        got, want = getattr(again, k), getattr(fresh, k)
        assert all(abs(got.probabilities[c] - want.probabilities[c]) < 1e-5 for c in CLASSES)
        assert np.allclose(got.cam, want.cam, atol=1e-5)
    both = whole.analyze(images, *METADATA)
    assert len(both.fusion.extra_cams) == 1 and len(both.image_only.extra_cams) == 1
    assert_map(*both.image_only.extra_cams[0])
    assert not np.allclose(both.image_only.extra_cams[0][0], both.image_only.cam, atol=0.05)


def test_a_bundle_split_at_block_4_serves_end_to_end(split4, shipped, expected, images, bundles):
    manifest = json.loads((bundles["split4"] / "manifest.json").read_text())
    assert manifest["trunk"]["split_block"] == 4 and manifest["architecture"]["frozen_lower_stages"] == \
        "conv_stem..blocks[3]"
    assert split4.frozen.split == 4 and split4.frozen.imagenet is not None   # blocks[4] for the OOD check
    assert_analysis(split4, shipped, expected, images[0])
    fine = split4.analyze(images[0], *METADATA, cam_method="LayerCAM (fine)")
    assert_map(fine.fusion.cam, fine.fusion.cam_empty)
    assert fine.fusion.cam.shape == SIZE


def test_a_lite2_bundle_serves_end_to_end_beside_the_lite0_reference_stages(lite2, shipped, expected, images, bundles):
    """Variant b: members over a Lite2 trunk. The segmenter, OOD check and archive keep reading
    the frozen lite0 stages they were fitted on, computed beside the Lite2 trunk."""
    manifest = json.loads((bundles["lite2"] / "manifest.json").read_text())
    assert manifest["architecture"]["backbone"] == LITE2 and manifest["trunk"]["split_block"] == 5
    assert load_file(bundles["lite2"] / manifest["trunk"]["file"])["backbone.blocks.4.0.conv_pwl.weight"].shape[0] == 120
    assert lite2.frozen.split == 0 and lite2.frozen.imagenet is not None and lite2.reference_channels == 112
    assert_analysis(lite2, shipped, expected, images[0])
    for method in CAM_METHODS:
        a = lite2.analyze(images[0], *METADATA, cam_method=method)
        assert_map(a.fusion.cam, a.fusion.cam_empty)
        assert_map(a.image_only.cam, a.image_only.cam_empty)


def test_a_mixed_bundle_serves_the_shipped_fusion_members_beside_whole_networks(mixed, shipped, expected, images,
                                                                                 bundles):
    assert mixed.has_shared_trunk and mixed.models["image_only"].whole_network
    trunk = load_file(bundles["mixed"] / "trunk.safetensors")
    shipped_trunk = load_file(WEIGHTS_DIR / "trunk.safetensors")
    assert trunk.keys() == shipped_trunk.keys() and all(torch.equal(trunk[k], shipped_trunk[k]) for k in trunk)
    a = assert_analysis(mixed, shipped, expected, images[0])
    assert all(abs(a.fusion.probabilities[c] - expected[0].fusion.probabilities[c]) < 1e-5 for c in CLASSES)
    assert np.allclose(a.fusion.cam, expected[0].fusion.cam, atol=1e-5)


# ----------------------------------------------------------------------------- refusing to start

def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst, json.loads((dst / "manifest.json").read_text())


def test_a_member_that_the_manifest_describes_otherwise_refuses_to_start_naming_the_file(bundles, tmp_path):
    # Whole networks described as the upper stages over the shipped trunk.
    weights, m = copy_bundle(bundles["whole"], tmp_path / "a")
    shutil.copyfile(WEIGHTS_DIR / "trunk.safetensors", weights / "trunk.safetensors")
    m["trunk"] = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["trunk"]
    m["models"]["image_only"]["split_block"] = SHIPPED_SPLIT
    (weights / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=rf"image_only_fold0\.safetensors holds a whole network .* describes it as "
                                           rf"the upper stages from blocks\[{SHIPPED_SPLIT}\].*'whole_network'.*git checkout"):
        Predictor(weights)
    r = subprocess.run([sys.executable, "app.py"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LESION_APP_WEIGHTS": str(weights),
                            "GRADIO_SERVER_PORT": "1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "image_only_fold0.safetensors holds a whole network" in r.stderr

    # Upper stages (the shipped fusion members) described as whole networks.
    weights, m = copy_bundle(bundles["whole"], tmp_path / "b")
    for entry, src in zip(m["models"]["fusion"]["members"], Manifest.load(WEIGHTS_DIR).members("fusion")):
        shutil.copyfile(WEIGHTS_DIR / src["file"], weights / entry["file"])
        entry["sha256"] = sha256_file(weights / entry["file"])
    (weights / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=rf"fusion_fold0\.safetensors holds the upper stages from "
                                           rf"blocks\[{SHIPPED_SPLIT}\] .* describes it as a whole network.*"
                                           rf"split_block {SHIPPED_SPLIT}"):
        Predictor(weights)

    # A whole network whose file was replaced (another member's bytes): its hash says so.
    weights, m = copy_bundle(bundles["whole"], tmp_path / "c")
    shutil.copyfile(weights / "image_only_fold1.safetensors", weights / "image_only_fold3.safetensors")
    with pytest.raises(WeightsError, match=r"image_only_fold3\.safetensors is corrupted or was replaced"):
        Predictor(weights)

    # A split the trunk does not have, and an archive built for other members.
    weights, m = copy_bundle(bundles["split4"], tmp_path / "d")
    m["models"]["fusion"]["split_block"] = 5
    (weights / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=r"manifest.json lacks or mangles an entry .*models.fusion.split_block is 5 "
                                           r"but trunk.split_block is 4"):
        Predictor(weights)
    weights, m = copy_bundle(bundles["split4"], tmp_path / "e")
    m["archive"] = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["archive"]
    shutil.copyfile(WEIGHTS_DIR / "archive.safetensors", weights / "archive.safetensors")
    (weights / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match=r"archive\.safetensors embeds 6400 values .* these weights give 2560"):
        Predictor(weights)


# ----------------------------------------------------------------------------- the bundle command

def test_the_bundle_command_ships_a_cross_validated_run_of_whole_network_members(example_folder, tmp_path):
    """python -m train.release.bundle on a tiny cv run, and on the same run with every member file
    made a whole network (the frozen trunk's tensors in it too, fp32, member.json saying
    "whole_network", as train.fitting.gpu_cv --split-block whole writes): the second ships no trunk
    and scores the held-out slice through the Predictor exactly as the first."""
    add_mirrored_copies(example_folder)
    folds, cv = tmp_path / "folds.csv", tmp_path / "cv"
    for args in (("train.data.make_folds", "--data", example_folder, "--out", folds, "--folds", 2,
                  "--heldout-share", 0.3),
                 ("train.fitting.cv", "--data", example_folder, "--folds", folds, "--cache", tmp_path / "cache",
                  "--out", cv, "--epochs", 1, "--batch", 4, "--threads", 1)):
        r = run_module(*args)
        assert r.returncode == 0, r.stderr[-2000:]
    whole_cv = tmp_path / "cv_whole"
    shutil.copytree(cv, whole_cv)
    split = json.loads((cv / "cv.json").read_text())["split_block"]
    trunk = {k: v.float() for k, v in bundle.trunk_state(split).items()}
    for d in [d for d in whole_cv.glob("*_fold*") if d.is_dir()]:
        upper = {k: v.float() if v.is_floating_point() else v for k, v in load_file(d / "member.safetensors").items()}
        save_file({**trunk, **upper}, d / "member.safetensors")
        info = json.loads((d / "member.json").read_text())
        (d / "member.json").write_text(json.dumps({**info, "split_block": WHOLE_NETWORK}))
    manifests = {}
    for name, run in (("shared", cv), ("whole", whole_cv)):
        r = run_module("train.release.bundle", "--data", example_folder, "--cv", run, "--out", tmp_path / name,
                       "--reports", tmp_path / f"reports_{name}")
        assert r.returncode == 0, r.stderr[-2000:]
        manifests[name] = json.loads((tmp_path / name / "manifest.json").read_text())
    shared, whole = manifests["shared"], manifests["whole"]
    assert shared["trunk"]["split_block"] == 5 and (tmp_path / "shared" / "trunk.safetensors").is_file()
    assert "trunk" not in whole and not (tmp_path / "whole" / "trunk.safetensors").exists()
    assert whole["architecture"]["frozen_lower_stages"].startswith("none: every member holds its whole network")
    for k in MODEL_KEYS:
        assert shared["models"][k]["split_block"] == 5 and whole["models"][k]["split_block"] == WHOLE_NETWORK
        a, b = shared["models"][k]["heldout_metrics"], whole["models"][k]["heldout_metrics"]
        assert a["n"] == b["n"] > 0 and a["confusion_matrix"] == b["confusion_matrix"]
        assert b["macro_auc"] == pytest.approx(a["macro_auc"], abs=1e-6)
    # Replacing the "shared" release by the whole-network run, chosen by compare_runs: the replaced
    # release's variants stay on record beside the new one, with the paired comparison.
    comparison = tmp_path / "variants.md"
    r = run_module("train.evaluation.compare_runs", cv, whole_cv, "--folds", folds, "--n-boot", 20, "--out", comparison)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle_whole = ("train.release.bundle", "--data", example_folder, "--cv", whole_cv, "--out", tmp_path / "shared",
                    "--reports", tmp_path / "reports_whole", "--compared", "shipped")
    r = run_module(*bundle_whole, "--comparison", comparison.with_suffix(".json"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "shared" / "manifest.json").read_text())
    assert [v["run"] for v in m["selection"]["variants_compared"]] == ["cv_whole", "cv"]
    assert m["selection"]["shipped"] == "cv_whole" and m["models"]["fusion"]["split_block"] == WHOLE_NETWORK
    paired = m["selection"]["comparison"]["kinds"]["fusion"]["paired_differences"]["cv_whole"]
    assert paired["balanced_accuracy"][0] == pytest.approx(0, abs=1e-9)   # the same members, whole
    r = run_module(*bundle_whole, "--comparison", comparison.with_suffix(".json"))   # the same run once more
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "shared" / "manifest.json").read_text())["selection"]["variants_compared"]
    assert [v["run"] for v in again] == ["cv_whole", "cv"]
    card = (tmp_path / "shared" / "MODEL_CARD.md").read_text()
    assert "| cv_whole − cv |" in card and "| cv | tf_efficientnet_lite0, blocks[5] |" in card
    # A comparison that never scored the run being shipped is refused, and so is `shipped` with
    # no release to take the variants from.
    other = shutil.copytree(cv, tmp_path / "cv_other")
    r = run_module("train.release.bundle", "--data", example_folder, "--cv", other, "--out", tmp_path / "other",
                   "--reports", tmp_path / "reports_other", "--comparison", comparison.with_suffix(".json"))
    assert r.returncode != 0 and "does not score cv_other" in r.stderr and "Traceback" not in r.stderr
    r = run_module(*bundle_whole[:6], tmp_path / "fresh", *bundle_whole[7:])
    assert r.returncode != 0 and "no bundled manifest" in r.stderr and "Traceback" not in r.stderr
