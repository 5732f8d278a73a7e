import numpy as np
import torch

from lesion_app.classifier.ensemble import Ensemble
from lesion_app.evidence.gradcam import gradcam, gradcam_overlay
from lesion_app.classifier.metadata import META_DIM
from conftest import model_with_class0_weight
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
