import numpy as np
import torch

from lesion_app.gradcam import gradcam, gradcam_overlay
from lesion_app.metadata import META_DIM
from lesion_app.models import LesionClassifier


def model_with_class0_weight(sign: float) -> LesionClassifier:
    torch.manual_seed(0)
    m = LesionClassifier("none", pretrained=False).eval()
    with torch.no_grad():
        m.head.fc.weight.zero_()
        m.head.fc.weight[0] = sign  # class 0's logit rises (or falls) with every feature
    return m


def test_map_is_normalised_and_image_sized():
    heat, empty = gradcam(model_with_class0_weight(+1.0), torch.randn(1, 3, 192, 256), None, 0)
    assert heat.shape == (192, 256) and not empty
    assert heat.min() >= 0 and heat.max() > 0.99


def test_all_negative_gradients_give_an_empty_map_flagged_as_such():
    # Pooled features are post-ReLU6 (>= 0); with every weight negative the map is <= 0.
    heat, empty = gradcam(model_with_class0_weight(-1.0), torch.randn(1, 3, 192, 256), None, 0)
    assert empty and not heat.any()


def test_fusion_model_is_explained_with_its_metadata_fixed():
    torch.manual_seed(0)
    m = LesionClassifier("concat", pretrained=False).eval()
    x, meta = torch.randn(1, 3, 192, 256), torch.zeros(1, META_DIM)
    heat, _ = gradcam(m, x, meta, 3)
    assert heat.shape == (192, 256)


def test_overlay_keeps_the_image_when_the_map_is_empty():
    rgb = np.full((192, 256, 3), 120, np.uint8)
    assert gradcam_overlay(rgb, np.zeros((192, 256), np.float32)) is rgb
    over = gradcam_overlay(rgb, np.ones((192, 256), np.float32))
    assert over.shape == rgb.shape and over.dtype == np.uint8 and not np.array_equal(over, rgb)
