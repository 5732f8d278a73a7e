"""The recipe's melanoma options (issue 24, variant c): the margin between each melanoma and the
batch's hard negatives (nevi and keratoses confirmed by histology or consensus), follow-up nevi
down-weighted in the main loss, and both reaching train.fitting.cv and train.fitting.gpu_cv
through the one recipe (Config, its flags, recipe.recipe_loss), with the defaults leaving today's
recipe as it was."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import run_module
from lesion_app.classifier.vocab import CLASSES
from test_recipe import cases, member  # noqa: F401  (cases is a fixture)
from test_gpu_cv import command, tiny_folder
from train.data.dataset import load_metadata
from train.data.splits import load_folds, load_heldout
from train.fitting import gpu_cv
from train.fitting.recipe import Config, recipe_loss
from train.fitting.objectives import (FOLLOW_UP_NEVUS, HARD_NEGATIVE, OTHER, case_roles, class_weights, loss_fn,
                                      mel_margin_term)

MEL = CLASSES.index("mel")
OPTIONS = ("mel_margin_weight", "mel_margin", "follow_up_weight")


def codes(*dx):
    return torch.tensor([CLASSES.index(d) for d in dx])


def log_p_mel(row) -> float:
    """log softmax(row)[mel], in float64."""
    row = [float(v) for v in row]
    top = max(row)
    return row[MEL] - top - math.log(sum(math.exp(v - top) for v in row))


def margin_by_pairs(logits, y, role, margin) -> float:
    """The formula, pair by pair: mean over (melanoma i, hard negative j) of max(0, margin - (s_i - s_j))."""
    s = [log_p_mel(r) for r in logits]
    pairs = [(i, j) for i in range(len(y)) if y[i] == MEL for j in range(len(y)) if role[j] == HARD_NEGATIVE]
    return sum(max(0.0, margin - (s[i] - s[j])) for i, j in pairs) / len(pairs) if pairs else 0.0


# ----------------------------------------------------------------------------- the objective

def test_hard_negatives_are_nevi_and_keratoses_confirmed_by_histology_or_consensus():
    dx = ["nv", "nv", "nv", "bkl", "bkl", "bkl", "mel", "df", "akiec", "nv"]
    how = ["histo", "consensus", "follow_up", "histo", "consensus", "confocal", "histo", "histo", "consensus", "confocal"]
    roles = case_roles(codes(*dx).numpy(), np.array(how, dtype=object))
    assert list(roles) == [HARD_NEGATIVE] * 2 + [FOLLOW_UP_NEVUS] + [HARD_NEGATIVE] * 2 + [OTHER] * 5


def test_margin_term_is_zero_when_every_melanoma_clears_every_hard_negative_by_the_margin():
    dx = ["mel", "mel", "nv", "bkl", "nv", "df"]
    role = torch.from_numpy(case_roles(codes(*dx).numpy(), np.array(["histo", "histo", "histo", "consensus",
                                                                     "follow_up", "histo"], dtype=object)))
    logits = torch.zeros(len(dx), len(CLASSES))
    logits[:2, MEL] = 6.0       # melanomas: p(mel) near 1
    logits[2:4, MEL] = -6.0     # hard negatives: p(mel) near 0, so s_i - s_j is about 12
    logits[4:, MEL] = 9.0       # not hard negatives: their high p(mel) does not count
    y = codes(*dx)
    assert margin_by_pairs(logits, y, role, 1.0) == 0.0
    assert mel_margin_term(logits, y, role, 1.0).item() == 0.0
    # The same logits under a margin wider than the gap: every pair counts.
    wide = margin_by_pairs(logits, y, role, 20.0)
    assert wide > 0 and mel_margin_term(logits, y, role, 20.0).item() == pytest.approx(wide, rel=1e-5)


def test_margin_term_equals_the_formula_over_pairs_and_is_positive_when_violated():
    g = torch.Generator().manual_seed(0)
    dx = ["mel", "nv", "mel", "bkl", "nv", "bcc", "mel", "nv"]
    how = ["histo", "histo", "histo", "consensus", "follow_up", "histo", "histo", "consensus"]
    y, role = codes(*dx), torch.from_numpy(case_roles(codes(*dx).numpy(), np.array(how, dtype=object)))
    for margin in (0.5, 1.0, 3.0):
        logits = torch.randn(len(dx), len(CLASSES), generator=g) * 2
        logits.requires_grad_(True)
        term = mel_margin_term(logits, y, role, margin)
        assert term.item() > 0
        assert term.item() == pytest.approx(margin_by_pairs(logits.detach(), y, role, margin), rel=1e-5)
        term.backward()
        # It trains: a melanoma in a violated pair has its mel logit pushed up, and only then.
        s = [log_p_mel(r) for r in logits.detach()]
        hard = [j for j in range(len(dx)) if role[j] == HARD_NEGATIVE]
        for i in (i for i in range(len(dx)) if dx[i] == "mel"):
            violated = any(margin - (s[i] - s[j]) > 0 for j in hard)
            assert (logits.grad[i, MEL] < 0).item() == violated


def test_margin_term_is_zero_without_a_melanoma_or_without_a_hard_negative():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, len(CLASSES), generator=g)
    no_mel = codes("nv", "bkl", "nv", "df")
    role = torch.from_numpy(case_roles(no_mel.numpy(), np.array(["histo"] * 4, dtype=object)))
    assert (role == HARD_NEGATIVE).sum() == 3 and mel_margin_term(logits, no_mel, role, 5.0).item() == 0.0
    no_hard = codes("mel", "nv", "bkl", "mel")
    role = torch.from_numpy(case_roles(no_hard.numpy(), np.array(["histo", "follow_up", "confocal", "histo"],
                                                                  dtype=object)))
    assert (role == HARD_NEGATIVE).sum() == 0 and mel_margin_term(logits, no_hard, role, 5.0).item() == 0.0
    # The loss is then exactly the main loss.
    w = class_weights(np.arange(14) % 7)
    with_margin = loss_fn("wce", w, mel_margin_weight=2.0, mel_margin=5.0)(logits, no_hard, role)
    assert torch.equal(with_margin, F.cross_entropy(logits, no_hard, weight=w))


def test_loss_adds_weight_times_the_margin_term():
    g = torch.Generator().manual_seed(2)
    dx = ["mel", "nv", "bkl", "mel", "vasc", "nv"]
    how = ["histo", "histo", "histo", "histo", "consensus", "follow_up"]
    y, role = codes(*dx), torch.from_numpy(case_roles(codes(*dx).numpy(), np.array(how, dtype=object)))
    logits = torch.randn(len(dx), len(CLASSES), generator=g)
    w = class_weights(np.array([0, 1, 2, 3, 4, 4, 5, 5, 5, 6]))
    got = loss_fn("wce", w, mel_margin_weight=0.5, mel_margin=2.0)(logits, y, role).item()
    expected = F.cross_entropy(logits, y, weight=w).item() + 0.5 * margin_by_pairs(logits, y, role, 2.0)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ["ce", "wce", "focal"])
def test_follow_up_weight_scales_follow_up_nevi_in_the_weighted_mean(loss):
    """sum_i c_i w_i l_i / sum_i c_i w_i, c_i the weight for follow-up nevi and 1 otherwise."""
    g = torch.Generator().manual_seed(3)
    dx = ["nv", "nv", "nv", "mel", "bkl", "nv", "df"]
    how = ["follow_up", "histo", "follow_up", "histo", "consensus", "follow_up", "histo"]
    y, role = codes(*dx), torch.from_numpy(case_roles(codes(*dx).numpy(), np.array(how, dtype=object)))
    logits = torch.randn(len(dx), len(CLASSES), generator=g) * 2
    w = class_weights(np.array([0, 1, 2, 2, 3, 4, 5, 5, 5, 5, 6]))
    logp = F.log_softmax(logits.double(), 1)[torch.arange(len(dx)), y]
    per_case = -(1 - logp.exp()) ** 2.0 * logp if loss == "focal" else -logp
    class_w = torch.ones(len(dx), dtype=torch.float64) if loss == "ce" else w.double()[y]
    for c in (0.25, 1.0, 3.0):
        weight = class_w * torch.tensor([c if h == "follow_up" else 1.0 for h in how], dtype=torch.float64)
        expected = ((weight * per_case).sum() / weight.sum()).item()
        got = loss_fn(loss, w, follow_up_weight=c)(logits, y, role).item()
        assert got == pytest.approx(expected, rel=1e-5), c
    down = loss_fn(loss, w, follow_up_weight=0.25)(logits, y, role)
    assert not torch.isclose(down, loss_fn(loss, w)(logits, y, role))


@pytest.mark.parametrize("loss", ["ce", "wce", "focal"])
def test_the_defaults_compute_todays_loss_exactly(loss):
    """The recipe's loss at the options' defaults, role given or not, is bit for bit the formula the
    recipe used before they existed."""
    g = torch.Generator().manual_seed(4)
    y_train = np.array([0, 1, 2, 2, 3, 4, 4, 5, 5, 5, 5, 6])
    w = class_weights(y_train)
    logits, y = torch.randn(9, len(CLASSES), generator=g), torch.tensor([4, 5, 5, 2, 4, 0, 6, 5, 1])
    role = torch.tensor([OTHER, HARD_NEGATIVE, FOLLOW_UP_NEVUS, HARD_NEGATIVE, OTHER, OTHER, OTHER, HARD_NEGATIVE,
                         OTHER])
    if loss == "focal":
        logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        before = (-(1 - logp.exp()) ** 2.0 * logp * w[y]).sum() / w[y].sum()
    else:
        before = F.cross_entropy(logits, y, weight=w if loss == "wce" else None)
    criterion = recipe_loss(Config(loss=loss), y_train)
    assert torch.equal(criterion(logits, y, role), before) and torch.equal(criterion(logits, y), before)


def test_the_options_refuse_to_run_without_roles_or_out_of_range():
    logits, y = torch.zeros(2, len(CLASSES)), codes("mel", "nv")
    for kw in ({"mel_margin_weight": 0.1}, {"follow_up_weight": 0.5}):
        with pytest.raises(ValueError, match="role"):
            loss_fn("wce", torch.ones(len(CLASSES)), **kw)(logits, y)
    for kw in ({"mel_margin_weight": -0.1}, {"follow_up_weight": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            loss_fn("wce", torch.ones(len(CLASSES)), **kw)


# ----------------------------------------------------------------------------- one member (train.fitting.recipe)

def test_a_member_with_the_options_trains_differently_and_at_the_defaults_ignores_roles(cases, tmp_path):  # noqa: F811
    """One batch of every case (sampler none), so each option meets its cases in the one step."""
    feats, meta, y, unknown, rank = cases
    nv_or_bkl = np.isin(y, [CLASSES.index("nv"), CLASSES.index("bkl")])
    hard = np.where(nv_or_bkl, HARD_NEGATIVE, OTHER)
    follow_up = np.where(y == CLASSES.index("nv"), FOLLOW_UP_NEVUS, OTHER)
    run = dict(epochs=1, batch=len(y), sampler="none", threads=1)
    plain = member(cases, tmp_path / "plain", Config(**run)).state_dict()
    given = member(cases, tmp_path / "given", Config(**run), role=hard).state_dict()
    assert all(torch.equal(plain[k], given[k]) for k in plain)
    for name, cfg, role in (("margin", Config(**run, mel_margin_weight=1.0), hard),
                            ("follow_up", Config(**run, follow_up_weight=0.2), follow_up)):
        other = member(cases, tmp_path / name, cfg, role=role)
        assert np.isfinite(other.history[0]["train_loss"])
        assert any(not torch.equal(plain[k], v) for k, v in other.state_dict().items()), name


def test_a_checkpoint_from_before_the_options_resumes(cases, tmp_path):  # noqa: F811
    straight = member(cases, tmp_path / "straight").state_dict()
    assert member(cases, tmp_path / "resumed", stop_after=1) is None
    ckpt = tmp_path / "resumed" / "checkpoint.pt"
    st = torch.load(ckpt, weights_only=False)
    assert set(OPTIONS) <= st["config"].keys()
    for k in OPTIONS:      # as written by the recipe before the options existed
        del st["config"][k]
    torch.save(st, ckpt)
    resumed = member(cases, tmp_path / "resumed", resume=True).state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


# ----------------------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """14 images, 2 per class, 2 folds with a held-out slice; the mirrored nevus is a follow-up
    nevus, every other nevus and keratosis is histology-confirmed (the examples' own dx_type)."""
    root = tmp_path_factory.mktemp("mel_margin")
    t = tiny_folder(root, 2)
    md = pd.read_csv(t["data"] / "metadata.csv")
    md.loc[(md["dx"] == "nv") & md["image_id"].str.endswith("_flip"), "dx_type"] = "follow_up"
    md.to_csv(t["data"] / "metadata.csv", index=False)
    return {**t, "cache": root / "cache", "root": root}


def cv(tiny, out, *extra):
    r = run_module("train.fitting.cv", "--data", tiny["data"], "--folds", tiny["folds"], "--cache", tiny["cache"],
                   "--out", out, "--epochs", 1, "--batch", 4, "--threads", 1, "--sampler", "none", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def training_roles(tiny, fold):
    """The roles of fold's training cases: every fold but its own, minus the held-out slice."""
    md = load_metadata(tiny["data"]).merge(load_folds(tiny["folds"])[["image_id", "fold"]], on="image_id")
    held = set(load_heldout(tiny["folds"])["image_id"])
    train = md[(md["fold"] != fold) & ~md["image_id"].isin(held)]
    y = train["dx"].map(CLASSES.index).to_numpy()
    return y, case_roles(y, train["dx_type"].to_numpy(dtype=object))


def test_cv_with_the_defaults_given_equals_cv_without_the_flags_and_the_margin_trains(tiny):
    """--sampler none: each tiny fold's training cases form one batch, so a fold with a melanoma
    and a hard negative has a pair in every step."""
    root = tiny["root"]
    plain = cv(tiny, root / "plain")
    defaults = cv(tiny, root / "defaults", "--mel-margin-weight", 0, "--mel-margin", 1.0, "--follow-up-weight", 1)
    margin = cv(tiny, root / "margin", "--mel-margin-weight", 0.5, "--mel-margin", 2.0)
    for name in ("oof_logits.csv", "heldout_logits.csv"):
        assert (plain / name).read_bytes() == (defaults / name).read_bytes()
    with_pairs = 0
    for d in sorted(p for p in plain.iterdir() if p.is_dir()):
        a = (d / "member.safetensors").read_bytes()
        assert a == (defaults / d.name / "member.safetensors").read_bytes(), d.name
        info = json.loads((margin / d.name / "member.json").read_text())
        assert info["config"]["mel_margin_weight"] == 0.5 and info["config"]["mel_margin"] == 2.0
        assert json.loads((plain / d.name / "member.json").read_text())["config"]["mel_margin_weight"] == 0.0
        y, role = training_roles(tiny, info["fold"])
        pairs = (y == MEL).any() and (role == HARD_NEGATIVE).any()
        with_pairs += pairs
        # With a pair the margin moves the member; without one the term is 0 and the member is today's.
        assert (a != (margin / d.name / "member.safetensors").read_bytes()) == pairs, d.name
    assert with_pairs >= 1
    recipe = json.loads((margin / "cv.json").read_text())["recipe"]
    assert {k: recipe[k] for k in OPTIONS} == {"mel_margin_weight": 0.5, "mel_margin": 2.0, "follow_up_weight": 1.0}


def test_cv_down_weights_follow_up_nevi_only_where_a_member_trains_on_one(tiny):
    root = tiny["root"]
    plain = root / "plain" if (root / "plain" / "cv.json").exists() else cv(tiny, root / "plain")
    follow = cv(tiny, root / "follow_up", "--follow-up-weight", 0.25)
    moved = 0
    for d in sorted(p for p in plain.iterdir() if p.is_dir()):
        info = json.loads((follow / d.name / "member.json").read_text())
        assert info["config"]["follow_up_weight"] == 0.25
        _, role = training_roles(tiny, info["fold"])
        a, b = (np.load(run / d.name / "logits.npz")["oof"] for run in (plain, follow))
        if (role == FOLLOW_UP_NEVUS).any():
            moved += 1
            assert np.abs(a - b).max() > 1e-3, d.name
        else:   # the same loss in other operations: equal up to rounding
            assert np.allclose(a, b, atol=1e-4), d.name
    assert moved >= 1


def test_cv_with_the_options_on_a_folder_without_dx_type_says_so(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    pd.read_csv(data / "metadata.csv").drop(columns="dx_type").to_csv(data / "metadata.csv", index=False)
    r = run_module("train.fitting.cv", "--data", data, "--folds", tiny["folds"], "--out", tmp_path / "cv",
                   "--mel-margin-weight", 0.5)
    assert r.returncode == 2 and "dx_type" in r.stderr and "Traceback" not in r.stderr


def test_gpu_cv_takes_the_same_options_and_continues_a_run_recorded_before_them(tiny, tmp_path):
    args = ("--data", tiny["data"], "--folds", tiny["folds"], "--kinds", "fusion", "--sampler", "none",
            "--epochs", 1, "--batch", 8, "--threads", 1, "--workers", 1)
    plain, margin = tmp_path / "plain", tmp_path / "margin"
    assert command(gpu_cv.main, *args, "--out", plain) == 0
    assert command(gpu_cv.main, *args, "--out", margin, "--mel-margin-weight", 0.5) == 0
    runs = [json.loads((d / "run.json").read_text()) for d in (plain, margin)]
    assert runs[0]["recipe"]["mel_margin_weight"] == 0.0 and runs[1]["recipe"]["mel_margin_weight"] == 0.5
    for fold in (0, 1):
        name = f"fusion_fold{fold}"
        assert runs[1]["members"][name]["config"]["mel_margin_weight"] == 0.5
        y, role = training_roles(tiny, fold)
        pairs = (y == MEL).any() and (role == HARD_NEGATIVE).any()
        assert (runs[0]["members"][name]["sha256"] != runs[1]["members"][name]["sha256"]) == pairs, name

    # A run folder written before the options existed (its recipe without them) is continued.
    old = tmp_path / "old"
    assert command(gpu_cv.main, *args, "--out", old, "--members", 1) == 3
    run = json.loads((old / "run.json").read_text())
    for k in OPTIONS:
        del run["recipe"][k]
    (old / "run.json").write_text(json.dumps(run))
    assert command(gpu_cv.main, *args, "--out", old) == 0
    assert json.loads((old / "run.json").read_text())["members"]["fusion_fold1"]["sha256"] == \
        runs[0]["members"]["fusion_fold1"]["sha256"]
