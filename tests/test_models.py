import pytest
import torch

from lesion_app.classifier.metadata import META_DIM
from lesion_app.classifier.models import HEADS, SPLIT_BLOCK, LesionClassifier, imagenet_state_dict
from lesion_app.classifier.vocab import CLASSES


def test_imagenet_weights_pair_with_every_timm_tensor():
    import timm
    sd = imagenet_state_dict()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert sd.keys() == {k for k in ref if "num_batches_tracked" not in k}
    assert all(sd[k].shape == ref[k].shape for k in sd)
    assert sd["classifier.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("fusion", sorted(HEADS))
def test_forward_shapes(fusion):
    torch.manual_seed(0)
    model = LesionClassifier(fusion, pretrained=False).eval()
    x, meta = torch.randn(3, 3, 192, 256), torch.randn(3, META_DIM)
    with torch.no_grad():
        low = model.lower(x)
        pooled = model.upper(low)
        logits = model(x, meta)
    assert low.shape == (3, 112, 12, 16)
    assert pooled.shape == (3, model.backbone.num_features)
    assert logits.shape == (3, len(CLASSES))
    assert torch.allclose(logits, model.head(pooled, meta), atol=1e-5)


@pytest.mark.parametrize("fusion", ["concat", "film", "late"])
def test_fusion_output_depends_on_metadata(fusion):
    torch.manual_seed(0)
    model = LesionClassifier(fusion, pretrained=False).eval()
    for p in model.head.parameters():  # FiLM starts as the identity; give it some weight
        torch.nn.init.normal_(p, std=0.1)
    pooled = torch.randn(2, model.backbone.num_features)
    a = model.head(pooled, torch.zeros(2, META_DIM))
    b = model.head(pooled, torch.ones(2, META_DIM))
    assert not torch.allclose(a, b)


def test_image_only_ignores_metadata():
    model = LesionClassifier("image_only", pretrained=False).eval()
    pooled = torch.randn(2, model.backbone.num_features)
    assert torch.equal(model.head(pooled, None), model.head(pooled, torch.ones(2, META_DIM)))


def test_lower_parameters_are_the_stages_before_the_split():
    model = LesionClassifier("image_only", pretrained=False)
    lower = set(map(id, model.lower_parameters()))
    assert all(id(p) in lower for p in model.backbone.blocks[SPLIT_BLOCK - 1].parameters())
    assert not any(id(p) in lower for p in model.backbone.blocks[SPLIT_BLOCK].parameters())
    assert not any(id(p) in lower for p in model.head.parameters())


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        LesionClassifier("attention", pretrained=False)


@pytest.fixture(scope="module")
def imagenet_lite0():
    import timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(imagenet_state_dict())
    return model.eval()


def imagenet_top5(model, rgb) -> list[int]:
    """Top-5 ImageNet classes of an RGB uint8 photo, preprocessed as for lite0 (224, mean=std=0.5)."""
    import numpy as np
    from PIL import Image
    im = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BICUBIC)
    x = (torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        return model(x).topk(5).indices[0].tolist()


def test_converted_imagenet_network_names_real_photos_right(imagenet_lite0):
    # Pairing tensors by position would pass a shape check with swapped BatchNorm buffers or
    # mis-ordered layers; the network's own ImageNet answers would not survive that.
    # Photos bundled with scikit-image (offline): a cup of coffee and a cat.
    from skimage import data
    assert imagenet_top5(imagenet_lite0, data.coffee())[0] == 967          # espresso
    assert set(imagenet_top5(imagenet_lite0, data.chelsea())[:2]) & {281, 282, 283, 284, 285}  # a domestic cat
