"""train.data.augment: training and evaluation views keep their shapes and value ranges."""
import numpy as np
import pytest
import torch
from PIL import Image

from lesion_app.classifier.preprocess import InputSpec, to_tensor
from train.data.augment import Augment, Normalise, shades_of_gray, train_view, warp, eval_view

SPEC = InputSpec(128, 96)


def picture(w, h, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (120, 60, 40)   # a brown "lesion"
    return Image.fromarray(a)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5       # the default Normalise's inverse


@pytest.mark.parametrize("size", [(200, 150), (600, 450), (300, 300), (90, 160), (20, 15)])
@pytest.mark.parametrize("sog", [0.0, 6.0])
def test_train_view_has_the_input_shape_and_pixels_in_range(size, sog):
    for seed in range(3):
        x = train_view(picture(*size), SPEC, Augment(), torch.Generator().manual_seed(seed), sog=sog)
        assert x.shape == (3, SPEC.height, SPEC.width) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and unit(x).min() >= 0 and unit(x).max() <= 1


def test_a_view_is_a_function_of_its_seed():
    draw = lambda s: train_view(picture(200, 150), SPEC, Augment(), torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_warp_without_crop_or_rotation_is_a_flip_of_the_image():
    x = torch.rand(3, 96, 128)
    still = Augment(min_area=1.0, aspect_jitter=0.0, degrees=0.0)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    for seed in range(8):
        y = warp(x, 128, 96, still, torch.Generator().manual_seed(seed))
        assert min((y - f).abs().max() for f in flips) < 1e-5


def test_eval_view_is_the_apps_preprocessing():
    image = picture(600, 450)
    assert torch.equal(eval_view(image, SPEC), to_tensor(image, SPEC))
    x = eval_view(image, SPEC, Normalise((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), sog=6.0)
    assert x.shape == (3, 96, 128) and torch.isfinite(x).all()


def test_shades_of_gray_neutralises_a_colour_cast():
    scene = torch.rand(3, 50, 60)
    cast = (scene * torch.tensor([1.0, 0.7, 0.4])[:, None, None]).clamp(0, 1)
    out = shades_of_gray(cast, 6.0)
    assert out.shape == cast.shape and out.min() >= 0 and out.max() <= 1
    means = out.mean((1, 2))
    assert (means.max() - means.min()) < 0.05 < (cast.mean((1, 2)).max() - cast.mean((1, 2)).min())
