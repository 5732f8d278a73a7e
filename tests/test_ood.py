"""The out-of-distribution check: its mechanics on constructed features, and the bundled
detector on real photographs (the evaluation set of train/data/real_photos.py, shipped inside
installed packages) and on the committed dermoscopic examples."""

import numpy as np
import pytest
import torch
from PIL import Image

from lesion_app.classifier.manifest import Manifest
from lesion_app.evidence.ood import FEATURES, OODDetector
from lesion_app.classifier.weights import WEIGHTS_DIR
from tests.conftest import EXAMPLES
from train.data.real_photos import EVALUATION, TUNING, SOURCES, available, real_photos


def test_distance_is_mahalanobis_to_the_fitted_gaussian():
    rng = np.random.default_rng(0)
    scale = np.array([10.0, 1.0, 0.1])
    x = rng.normal(size=(20000, 3)) * scale + 5
    det = OODDetector.fit(x, shrink=0.0)
    probe = torch.tensor([[5.0 + 10, 5, 5], [5, 5 + 1, 5], [5, 5, 5 + 0.1], [5, 5, 5]])
    # One standard deviation along any axis is distance 1, however large that axis's spread.
    assert np.allclose(det.score(probe).numpy(), [1, 1, 1, 0], atol=0.03)


def test_flags_far_features_and_colourless_images_and_says_why():
    rng = np.random.default_rng(1)
    det = OODDetector.fit(rng.normal(size=(500, 8)))
    det.threshold, det.min_saturation = 6.0, 0.1
    near, far = torch.zeros(1, 8), torch.full((1, 8), 5.0)
    skin = torch.tensor([0.8, 0.55, 0.45]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert det.flags(torch.cat([near, far, near]), torch.cat([skin, skin, grey])).tolist() == [False, True, True]
    assert det.warning(near, skin) is None
    assert "feature distance" in det.warning(far, skin)
    assert "almost no colour" in det.warning(near, grey)


def test_trunk_features_average_positions_and_the_views_of_each_image():
    n, v, c = 2, 4, 3
    low = torch.zeros(n * v, c, 2, 2)
    low[:v, 0] = 1.0                           # image 0's views: channel 0 on everywhere
    low[v + 1, 2, 0, 0] = 8.0                  # image 1's second view: one position of channel 2
    f = OODDetector.trunk_features(low, n)
    assert f.shape == (n, c)
    assert torch.allclose(f, torch.tensor([[1.0, 0, 0], [0, 0, 0.5]]))


def test_save_load_round_trip(tmp_path):
    det = OODDetector.fit(np.random.default_rng(2).normal(size=(100, 5)), k=3)
    det.threshold, det.min_saturation = 4.5, 0.07
    det.save(tmp_path / "ood.safetensors")
    back = OODDetector.load(tmp_path / "ood.safetensors")
    assert type(back) is OODDetector and back.threshold == 4.5 and back.min_saturation == pytest.approx(0.07)
    x = torch.randn(6, 5)
    assert torch.allclose(back.score(x), det.score(x))


def test_real_photo_sets_are_split_by_photo_and_cover_every_kind():
    tuning = {s.name for s in SOURCES if s.set == TUNING}
    evaluation = {s.name for s in SOURCES if s.set == EVALUATION}
    assert tuning and evaluation and not tuning & evaluation
    kinds = {s.kind for s in SOURCES if s.set == EVALUATION}
    assert {"scene", "animal", "person", "object", "microscopy", "astronomy"} <= kinds
    # gradio, scikit-learn and matplotlib are runtime requirements: their photos are always here
    assert {"lion", "grace_hopper", "china_palace", "eiffel_tower", "dahlia"} <= {s.name for s in available()}


def bundled_detector():
    ood = Manifest.load(WEIGHTS_DIR).ood
    if not ood or ood.get("features") != FEATURES:
        pytest.skip("the bundled OOD detector predates the trunk-feature check: run python -m train.release.fit_ood")
    from lesion_app.analysis.predictor import Predictor
    return Predictor(WEIGHTS_DIR)


def flags(predictor, images):
    det = OODDetector.load(WEIGHTS_DIR / "ood.safetensors")
    x = torch.stack([predictor.image_tensor(im) for im in images])
    with predictor._lock:
        low = predictor.frozen_features(x)   # the frozen ImageNet trunk's output, whatever the split
    from lesion_app.classifier.preprocess import unnormalise
    return det.flags(OODDetector.trunk_features(low, len(x)), unnormalise(x, predictor.spec)).tolist()


def test_bundled_detector_flags_every_real_photo_of_the_evaluation_set():
    predictor = bundled_detector()
    photos = real_photos(EVALUATION)
    got = flags(predictor, [im for _, im in photos.values()])
    missed = [name for name, f in zip(photos, got) if not f]
    assert not missed, f"real non-dermoscopic photos not flagged: {missed}"


def test_bundled_detector_passes_the_committed_dermoscopic_examples():
    predictor = bundled_detector()
    paths = sorted((EXAMPLES / "images").glob("*.jpg"))
    assert len(paths) >= 7
    got = flags(predictor, [Image.open(p) for p in paths])
    assert not any(got), [p.name for p, f in zip(paths, got) if f]


def test_a_detector_fitted_on_other_features_is_refused_with_the_fix(tmp_path):
    from safetensors.torch import save_file
    from lesion_app.classifier.weights import WeightsError
    t = {"mean": torch.zeros(4), "projection": torch.eye(4), "threshold": torch.tensor([1.0]),
         "min_saturation": torch.tensor([0.1]), "class_means": torch.zeros(7, 4)}
    save_file(t, tmp_path / "ood.safetensors")      # the previous format: no features recorded
    with pytest.raises(WeightsError, match="train.release.fit_ood"):
        OODDetector.load(tmp_path / "ood.safetensors")


def test_the_threshold_is_the_highest_candidate_that_still_flags_every_tuning_photo_with_margin():
    """fit_ood --percentile 98 99 99.5 (reports/transfer/criterion.md): a candidate passes when every
    synthetic image and tuning photo stays flagged with its threshold 25% higher; the highest that
    passes is kept, and the evaluation photos play no part."""
    from train.release.fit_ood import choose_percentile, measure
    det = OODDetector.fit(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32))
    held = det.score(torch.from_numpy(np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32))).numpy()
    t98, t99 = np.percentile(held, [98, 99])
    step = torch.zeros(1, 8)
    step[0, 0] = 1.0
    unit = float(det.score(det.mean[None] + step))

    def at(distance):     # one image whose features lie this far from the fitted Gaussian
        return det.mean[None] + step * distance / unit

    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0       # fully saturated: never flagged for lack of colour
    for tuning_distance, expected in ((1.25 * t99 + 0.01, 99), (1.25 * t98 + 0.01, 98), (1.0, 98)):
        sets = {"synthetic": (["s"], None, at(100.0), red), "tuning": (["t"], SOURCES[:1], at(tuning_distance), red),
                "evaluation": (["e"], SOURCES[:1], at(0.0), red), "sources_missing": []}
        chosen, rows = choose_percentile(det, held, sets, [99.5, 98, 99], 1.25)
        assert chosen == expected, (tuning_distance, rows)
        assert [r["percentile"] for r in rows] == [98, 99, 99.5]
        assert [r["passes_with_margin"] for r in rows][:2] == [tuning_distance > 1.25 * t98, tuning_distance > 1.25 * t99]
    det.threshold = float(t98)
    m = measure(det, sets)       # an evaluation photo the threshold misses changed no choice above
    assert m["evaluation"]["flagged"] == 0 and m["synthetic"]["flagged"] == 1 and m["tuning"]["missed"] == ["t"]
