"""The CAM methods offered in the selector: one wrapper and one empty-map rule for each, and
each method the library's own (checked against its formula on a case where they must differ)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_grad_cam import HiResCAM
from pytorch_grad_cam.utils.image import scale_cam_image

from lesion_app.classifier.ensemble import Ensemble
from lesion_app.evidence.gradcam import (CAM_METHODS, DEFAULT_CAM_METHOD, FINE_STAGE_BLOCK, FixedMetadata,
    ImageSizedCAM, gradcam)
from conftest import model_with_class0_weight
from lesion_app.classifier.models import LesionClassifier
from lesion_app.classifier.segmenter import STAGES, lower_with_stages
from lesion_app.classifier.vocab import CLASSES

SIZE = (192, 256)
METHODS = list(CAM_METHODS)
LIBRARY = ["Grad-CAM", "Grad-CAM++", "LayerCAM"]   # the library's methods as they are (one target layer a member)
FINE = "LayerCAM (fine)"


def test_the_selector_offers_grad_cam_first_three_library_methods_and_a_finer_layercam():
    assert METHODS[0] == DEFAULT_CAM_METHOD == "Grad-CAM"
    assert METHODS == [*LIBRARY, FINE]
    with pytest.raises(ValueError, match="method must be one of"):
        gradcam(Ensemble([model_with_class0_weight(1.0)]).eval(), torch.zeros(1, 112, 12, 16), None, 0, SIZE,
                method="ScoreCAM")


def trunk_output(ens: Ensemble, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return ens.lower(torch.randn(1, 3, *SIZE))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_an_image_sized_map_in_0_1(method):
    ens = Ensemble([model_with_class0_weight(+1.0), model_with_class0_weight(+1.0)]).eval()
    heat, empty = gradcam(ens, trunk_output(ens), None, 0, SIZE, method=method)
    assert heat.shape == SIZE and not empty
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reports_all_negative_evidence_as_an_empty_map(method):
    # Pooled features are post-ReLU6 (>= 0); with every weight negative, no position counts
    # for class 0 under any method: the map is empty and flagged, never a blank image.
    ens = Ensemble([model_with_class0_weight(-1.0)]).eval()
    heat, empty = gradcam(ens, trunk_output(ens), None, 0, SIZE, method=method)
    assert empty and not heat.any() and heat.shape == SIZE


def test_default_is_grad_cam_and_hirescam_would_add_nothing_here():
    # With global average pooling and a linear head every position gets the same gradient,
    # so HiResCAM (gradient x activation) is exactly Grad-CAM: why it is not offered.
    torch.manual_seed(1)
    m = LesionClassifier("concat", pretrained=False).eval()
    ens = Ensemble([m]).eval()
    low, meta = trunk_output(ens, 1), torch.randn(1, m.head.meta[0].in_features)
    k = CLASSES.index("mel")
    default, _ = gradcam(ens, low, meta, k, SIZE)
    grad_cam, _ = gradcam(ens, low, meta, k, SIZE, method="Grad-CAM")
    assert np.array_equal(default, grad_cam)

    class HiRes(ImageSizedCAM, HiResCAM):
        pass
    with torch.enable_grad(), HiRes(FixedMetadata(ens, meta), ens.cam_target_layers(), SIZE) as cam:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        hires = cam(low, targets=[ClassifierOutputTarget(k)])[0]
    assert np.allclose(hires, grad_cam, atol=1e-5)


class ToyMember(nn.Module):
    """A member whose 'last activation' is its input: 3 channels on a 4x4 grid, averaged and
    weighted linearly (class 0: +1, +1, -1), so each method's map has a closed form."""
    head_kind, split_block, uses_metadata = "image_only", 5, False

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.fc = nn.Linear(3, len(CLASSES), bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0] = torch.tensor([1.0, 1.0, -1.0])

    def upper(self, low):
        return self.act(low).mean((2, 3))

    def head(self, pooled, meta):
        return self.fc(pooled)

    def cam_target_layer(self):
        return self.act


def normalised(cam):
    cam = np.maximum(cam, 0)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


def test_methods_differ_where_their_definitions_do():
    a = np.zeros((3, 4, 4), np.float32)
    a[0, :, :2] = 8.0      # channel 0, class evidence: the whole left half, strongly (sum 64)
    a[1, 3, 3] = 2.0       # channel 1, class evidence: one weak spot at the bottom right (sum 2)
    a[2, 0, 0] = 6.0       # channel 2, counter-evidence: the top-left corner
    g = np.array([1.0, 1.0, -1.0]) / 16   # d(logit)/d(activation): the same at every position
    grad_cam = np.tensordot(g, a, 1)                                      # mean gradient x activation
    layer_cam = np.tensordot(np.maximum(g, 0), a, 1)                      # positive gradients only
    s = a.sum((1, 2))
    plus_plus = np.tensordot(np.maximum(g, 0) * 16 * g**2 / (2 * g**2 + s * g**3), a, 1)  # Grad-CAM++ eq. 19
    expected = {"Grad-CAM": grad_cam, "Grad-CAM++": plus_plus, "LayerCAM": layer_cam}
    ens = Ensemble([ToyMember()]).eval()
    got = {m: gradcam(ens, torch.from_numpy(a)[None], None, 0, (4, 4), method=m)[0] for m in LIBRARY}
    for m in LIBRARY:
        assert np.allclose(got[m], normalised(expected[m]), atol=1e-4), m
    # Where they must differ: Grad-CAM lets the counter-evidence cancel the top-left corner,
    # LayerCAM and Grad-CAM++ drop it; Grad-CAM++ lifts the weak lone spot that the others scale down.
    corner, spot = (0, 0), (3, 3)
    assert got["Grad-CAM"][corner] == pytest.approx(0.25, abs=1e-3)
    assert got["LayerCAM"][corner] == pytest.approx(1.0, abs=1e-3)
    assert got["Grad-CAM++"][corner] == pytest.approx(1.0, abs=1e-3)
    assert got["LayerCAM"][spot] == pytest.approx(0.25, abs=1e-3)
    assert got["Grad-CAM++"][spot] > 0.6
    for i, m in enumerate(LIBRARY):
        for n in LIBRARY[i + 1:]:
            assert np.abs(got[m] - got[n]).max() > 0.2, (m, n)


def layer_cam(activation: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """LayerCAM's formula for one layer, scaled to [0, 1] at the image size as the library does."""
    cam = np.maximum((torch.relu(grad) * activation).sum(1).detach().numpy(), 0)
    return scale_cam_image(cam, (SIZE[1], SIZE[0]))[0]


@pytest.mark.parametrize("from_stage", [True, False])
def test_fine_layercam_is_the_geometric_mean_of_the_last_stage_and_the_trunk_stages(from_stage):
    # Two members with different upper stages, so that pairing each layer's activation with its
    # own gradient matters; the maps by hand come from autograd, one layer at a time.
    torch.manual_seed(2)
    members = [LesionClassifier("image_only", pretrained=False).eval() for _ in range(2)]
    ens = Ensemble(members).eval()
    with torch.no_grad():
        low, stages = lower_with_stages(members[0], torch.randn(1, 3, *SIZE))
    stage = stages[STAGES.index(FINE_STAGE_BLOCK)]
    start = (stage if from_stage else low).clone().requires_grad_()
    trunk_out = members[0].backbone.blocks[FINE_STAGE_BLOCK + 1:members[0].split_block](start) if from_stage else start
    last = []
    hooks = [m.backbone.bn2.register_forward_hook(lambda mod, i, o: last.append(o)) for m in members]
    logit = ens.head_logits(ens.pooled(trunk_out), None)[0, 0]
    for h in hooks:
        h.remove()
    finer = [start, trunk_out] if from_stage else [trunk_out]
    grads = torch.autograd.grad(logit, finer + last)
    maps = [layer_cam(a, g) for a, g in zip(finer + last, grads)]
    assert not np.allclose(maps[-1], maps[-2], atol=0.05)   # the members' last stages differ
    fused = np.sqrt(np.mean(maps[len(finer):], 0) * np.mean(maps[:len(finer)], 0))
    expected = (fused - fused.min()) / (fused.max() - fused.min() + 1e-7)

    heat, empty = gradcam(ens, low, None, 0, SIZE, method=FINE, stage=stage if from_stage else None)
    assert not empty and np.allclose(heat, expected, atol=1e-4)
    other, _ = gradcam(ens, low, None, 0, SIZE, method=FINE, stage=None if from_stage else stage)
    assert not np.allclose(heat, other, atol=0.05)   # the kept stage is used when given, and only then
