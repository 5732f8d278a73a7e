import numpy as np
import pytest
import torch

from lesion_app.classifier.ensemble import Ensemble
from lesion_app.classifier.vocab import CLASSES
from lesion_app.evidence.gradcam import (CAM_METHODS, TOP_TWO, ContrastTarget, FixedMetadata, gradcam, gradcam_from_kept,
    gradcam_overlay)
from lesion_app.classifier.metadata import META_DIM
from conftest import EXAMPLES, model_with_class0_weight
from lesion_app.classifier.models import LesionClassifier

SIZE = (192, 256)


def cam(model: LesionClassifier, x, meta, cls):
    """Grad-CAM through a one-member ensemble, from the trunk output, as the Predictor calls it."""
    ens = Ensemble([model]).eval()
    with torch.no_grad():
        low = ens.lower(x)
    return gradcam(ens, low, meta, cls, SIZE)


def test_map_is_normalised_and_image_sized():
    heat, empty = cam(model_with_class0_weight(+1.0), torch.randn(1, 3, *SIZE), None, 0)
    assert heat.shape == SIZE and not empty
    assert heat.min() >= 0 and heat.max() > 0.99


def test_all_negative_gradients_give_an_empty_map_flagged_as_such():
    # Pooled features are post-ReLU6 (>= 0); with every weight negative the map is <= 0.
    heat, empty = cam(model_with_class0_weight(-1.0), torch.randn(1, 3, *SIZE), None, 0)
    assert empty and not heat.any()


def test_fusion_heatmap_follows_the_metadata_when_the_model_makes_it_matter():
    # FiLM scales each image feature by the metadata, so the class-score gradients at the
    # CAM layer, and the map, depend on what was entered: a wrapper that dropped or fixed
    # the metadata would give the same map twice.
    torch.manual_seed(0)
    m = LesionClassifier("film", pretrained=False).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.head.film.weight, std=0.5)
    x = torch.randn(1, 3, *SIZE)
    a, b = torch.zeros(1, META_DIM), torch.zeros(1, META_DIM)
    a[0, [0, 2, 5]], b[0, [1, 3, 12]] = 1.0, 1.0
    heat_a, _ = cam(m, x, a, 3)
    heat_b, _ = cam(m, x, b, 3)
    assert heat_a.shape == SIZE
    assert np.abs(heat_a - heat_b).max() > 0.05


def test_ensemble_map_takes_one_cam_per_member_layer():
    members = [model_with_class0_weight(+1.0), model_with_class0_weight(+1.0)]
    ens = Ensemble(members).eval()
    assert ens.cam_target_layers() == [members[0].backbone.bn2, members[1].backbone.bn2]
    with torch.no_grad():
        low = ens.lower(torch.randn(1, 3, *SIZE))
    heat, empty = gradcam(ens, low, None, 0, SIZE)
    single, _ = gradcam(Ensemble(members[:1]).eval(), low, None, 0, SIZE)
    assert not empty and np.allclose(heat, single, atol=1e-5)   # identical members: the same map


def test_overlay_keeps_the_image_when_the_map_is_empty():
    rgb = np.full((192, 256, 3), 120, np.uint8)
    assert gradcam_overlay(rgb, np.zeros((192, 256), np.float32)) is rgb
    over = gradcam_overlay(rgb, np.ones((192, 256), np.float32))
    assert over.shape == rgb.shape and over.dtype == np.uint8 and not np.array_equal(over, rgb)


# On the bundled ensembles and the app's examples.

@pytest.fixture(scope="module")
def predictor():
    from lesion_app.analysis.predictor import Predictor
    return Predictor()


def example(image_id: str):
    from lesion_app.files.image_input import load_upload
    return load_upload(EXAMPLES / "images" / f"{image_id}.jpg")


def ranked(r) -> list[str]:
    return sorted(r.probabilities, key=r.probabilities.get, reverse=True)


def test_the_contrast_target_is_the_real_ensembles_logit_difference(predictor):
    x = predictor.image_tensor(example("ISIC_0024449"))[None]
    low = predictor.trunk_features(x)[:1].clone()
    meta = predictor.encode(55, "male", "back")[None]
    a, b = CLASSES.index("mel"), CLASSES.index("nv")
    for key, ens in predictor.models.items():
        m = meta if ens.uses_metadata else None
        with torch.no_grad():
            out = FixedMetadata(ens, m)(low)                 # what the CAM's target is called on
            logits = ens.head_logits(ens.pooled(low), m)[0]  # the ensemble's own mean logits
        target = ContrastTarget(a, b)
        assert target(out[0]).item() == pytest.approx((logits[a] - logits[b]).item(), abs=1e-5)   # per image
        assert target(out).shape == (1,)                                                          # and batched
        assert abs((logits[a] - logits[b]).item()) > 0.1   # a real difference, not 0 = 0


def test_maps_from_the_kept_last_activations_are_the_maps_from_the_trunk_output(predictor):
    # An analysis keeps each member's last activation and draws its maps from them (pooling and
    # heads only). Every method that targets only that activation gives the same map as a pass of
    # the upper stages from the trunk's output, for a class and for a contrast; the fine method,
    # which targets the trunk's stages too, is refused.
    image, meta = example("ISIC_0024449"), (55, "male", "back")
    a = predictor.analyze(image, *meta)
    x = predictor.image_tensor(image)[None]
    low = predictor.trunk_features(x)[:1].clone()
    m = predictor.encode(*meta)[None]
    size = (predictor.spec.height, predictor.spec.width)
    library = [name for name, kind in CAM_METHODS.items() if not kind.trunk_stages]
    assert len(library) == 3
    for key, ens in predictor.models.items():
        kept, mk = a.features.kept[key], m if ens.uses_metadata else None
        assert kept.shape[:2] == (len(ens.members), 1)
        shown = getattr(a, key)
        heat, empty = gradcam(ens, low, mk, CLASSES.index(shown.cam_class), size)
        assert not empty and np.allclose(shown.cam, heat, atol=1e-6), key   # what the analysis shows
        for method in library:
            for cls, versus in ((CLASSES.index("mel"), None), (CLASSES.index("mel"), CLASSES.index("nv"))):
                want, want_empty = gradcam(ens, low, mk, cls, size, method, versus)
                got, got_empty = gradcam_from_kept(ens, kept, mk, cls, size, method, versus)
                assert got_empty == want_empty and np.allclose(got, want, atol=1e-6), (key, method, versus)
        with pytest.raises(ValueError, match="also targets the trunk's stages"):
            gradcam_from_kept(ens, kept, mk, 0, size, "LayerCAM (fine)")


def high_frequency_share(cam: np.ndarray, grid: tuple[int, int]) -> float:
    """The share of the map's power (its mean removed) at spatial frequencies above the Nyquist
    limit of a (rows, columns) grid over it: detail that a map upsampled from that grid cannot hold."""
    power = np.abs(np.fft.fft2(cam - cam.mean())) ** 2
    fy, fx = np.abs(np.fft.fftfreq(cam.shape[0]))[:, None], np.abs(np.fft.fftfreq(cam.shape[1]))[None]
    high = (fy > grid[0] / (2 * cam.shape[0])) | (fx > grid[1] / (2 * cam.shape[1]))
    return float(power[high].sum() / power.sum())


def test_the_fine_method_draws_detail_that_grad_cams_grid_cannot_hold(predictor, example_metadata):
    # Grad-CAM's maps are upsampled from the last stage's grid (stride 32, 8x6 cells): almost all
    # their power lies below that grid's Nyquist limit. The fine maps hold several times more above it.
    grid = (predictor.spec.height // 32, predictor.spec.width // 32)
    for r in example_metadata.itertuples():
        image, meta = example(r.image_id), (r.age, r.sex, r.localization)
        coarse = predictor.analyze(image, *meta)
        fine = predictor.analyze(image, *meta, cam_method="LayerCAM (fine)")
        assert fine.features.stage is not None
        for kind in ("fusion", "image_only"):
            f, g = getattr(fine, kind), getattr(coarse, kind)
            assert f.cam_method == "LayerCAM (fine)" and not f.cam_empty and f.cam.max() > 0.99, (r.image_id, kind)
            assert high_frequency_share(f.cam, grid) > 2 * high_frequency_share(g.cam, grid), (r.image_id, kind)


def test_top_two_maps_each_models_first_class_rather_than_its_second(predictor):
    image = example("ISIC_0024449")
    a = predictor.analyze(image, 55, "male", "back", cam_class=TOP_TWO)
    for r in (a.fusion, a.image_only):
        assert [r.cam_class, r.cam_versus] == ranked(r)[:2] and not r.cam_empty
    assert a.shap.cls == a.fusion.top and a.top_shap is None   # Shapley values stay for the fusion top class
    plain = predictor.with_metadata(a, 55, "male", "back")
    assert plain.fusion.cam_versus is None and plain.fusion.cam_class == a.fusion.cam_class
    assert not np.allclose(plain.fusion.cam, a.fusion.cam, atol=0.05)
    again = predictor.with_metadata(plain, 55, "male", "back", cam_class=TOP_TWO)
    assert np.allclose(again.image_only.cam, a.image_only.cam) and again.image_only.cam_versus == a.image_only.cam_versus
    with pytest.raises(ValueError, match="cam_class must be one of"):
        predictor.analyze(image, cam_class="top three")


def test_contrast_map_gives_the_fusion_models_top_two_map_for_the_case_report(predictor):
    image = example("ISIC_0024449")
    contrast = predictor.analyze(image, 55, "male", "back", cam_class=TOP_TWO, cam_method="LayerCAM")
    cam, first, second = predictor.contrast_map(contrast)
    assert cam is contrast.fusion.cam and (first, second) == (contrast.fusion.cam_class, contrast.fusion.cam_versus)
    plain = predictor.with_metadata(contrast, 55, "male", "back", cam_method="LayerCAM")   # each model's top class
    cam, first, second = predictor.contrast_map(plain)
    assert [first, second] == ranked(plain.fusion)[:2] and np.allclose(cam, contrast.fusion.cam, atol=1e-6)
    assert plain.fusion.cam_versus is None   # the analysis itself is unchanged
