"""train.fitting.recipe: the recipe every training path shares (the cached-feature member here;
the whole-network path in test_full.py, the command lines in test_cv.py and test_full.py)."""
import numpy as np
import pytest
import torch

from conftest import run_module
from lesion_app.classifier.metadata import META_DIM
from lesion_app.classifier.models import LesionClassifier
from train.fitting.recipe import Config, ResumeMismatch, train_member
from train.fitting.curriculum import within_class_rank
from train.data.features import N_VIEWS

N = 24


@pytest.fixture(scope="module")
def cases():
    """Lower-stage outputs of random images in the cache's shape, metadata rows and labels."""
    torch.manual_seed(0)
    lower = LesionClassifier("concat", pretrained=False).eval()
    with torch.no_grad():
        low = lower.lower(torch.randn(N * N_VIEWS, 3, 48, 64))
    feats = low.reshape(N, N_VIEWS, *low.shape[1:]).numpy().astype(np.float16)
    y = np.arange(N) % 7
    meta = torch.randn(N, META_DIM)
    rank = within_class_rank(np.random.default_rng(0).random(N), y)
    return feats, meta, y, torch.zeros(META_DIM), rank


def member(cases, out, cfg=None, **kw):
    feats, meta, y, unknown, rank = cases
    cfg = cfg or Config(epochs=2, batch=8, threads=1)
    return train_member(cfg, feats, meta, y, unknown, out, rank=rank, **kw)


def test_interrupted_and_resumed_member_equals_an_uninterrupted_one(cases, tmp_path):
    straight = member(cases, tmp_path / "straight")
    assert len(straight.history) == 2 and all(np.isfinite(r["train_loss"]) for r in straight.history)
    assert member(cases, tmp_path / "resumed", stop_after=1) is None
    resumed = member(cases, tmp_path / "resumed", resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_resume_with_other_settings_is_refused(cases, tmp_path):
    member(cases, tmp_path / "run", stop_after=1)
    with pytest.raises(ResumeMismatch, match="same settings"):
        member(cases, tmp_path / "run", Config(epochs=3, batch=8, threads=1), resume=True)


def test_film_without_curriculum_still_trains(cases, tmp_path):
    model = member(cases, tmp_path / "run", Config(fusion="film", sampler="none", epochs=1, batch=8, threads=1))
    assert "head.film.weight" in model.state_dict() and len(model.history) == 1


def test_image_only_member_has_the_image_only_head(cases, tmp_path):
    model = member(cases, tmp_path / "run", Config(model="image_only", epochs=1, batch=8, threads=1))
    assert not model.uses_metadata and not any(k.startswith("head.meta") for k in model.state_dict())


def test_unknown_sampler_or_loss_is_a_clear_cli_error(example_folder, tmp_path):
    for module in ("train.fitting.cv", "train.fitting.full"):
        for flag, value in (("--sampler", "oversample"), ("--loss", "hinge")):
            r = run_module(module, "--data", example_folder, "--out", tmp_path / "run", flag, value)
            assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr
