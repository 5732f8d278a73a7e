"""Input steps for other devices' images (issues 36 and 37): the field of view, the training
images' scale, colour constancy at serving, and the "carry" training views."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lesion_app.classifier.colour import shades_of_gray
from lesion_app.classifier.field_of_view import field_of_view_box
from lesion_app.classifier.preprocess import InputSpec, fit_to_aspect, input_box, to_tensor
from train.data.augment import carry_view, vignette
from train.data.features import N_VIEWS, TTA_VIEWS, image_views


def skin(w=400, h=300, seed=0) -> Image.Image:
    """A pinkish textured field with a brown blob in the middle."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array([220, 170, 160]) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    ImageDraw.Draw(im).ellipse((w * 0.4, h * 0.4, w * 0.6, h * 0.6), fill=(110, 70, 50))
    return im


def test_a_round_black_field_of_view_is_cropped_to_lit_skin_only():
    im = vignette(skin(), 0.75)
    box = field_of_view_box(im)
    assert box is not None
    left, top, right, bottom = box
    inside = np.asarray(im.convert("L").crop(box))
    assert (inside < 40).mean() < 0.02                      # hardly any black left
    assert right - left > 0.5 * im.width and bottom - top > 0.5 * im.height   # most of the skin kept
    # No frame, no crop; a dark lesion in the middle is not a frame.
    assert field_of_view_box(skin()) is None
    dark = skin()
    ImageDraw.Draw(dark).ellipse((100, 60, 300, 240), fill=(10, 8, 8))
    assert field_of_view_box(dark) is None


def test_black_borders_left_and_right_are_cropped():
    im = Image.new("RGB", (500, 300))
    im.paste(skin(300, 300), (100, 0))
    left, top, right, bottom = field_of_view_box(im)
    assert 95 <= left <= 110 and 390 <= right <= 405 and top <= 5 and bottom >= 295


def test_the_input_box_maps_the_field_of_view_and_the_aspect_crop_to_the_image():
    im = vignette(skin(), 0.75)
    spec = InputSpec(field_of_view=True)
    box = input_box(im, spec)
    fov = field_of_view_box(im)
    assert fov[0] <= box[0] and fov[1] <= box[1] and box[2] <= fov[2] and box[3] <= fov[3]
    assert abs((box[2] - box[0]) / (box[3] - box[1]) - 4 / 3) < 0.02
    assert input_box(im, InputSpec()) == (0, 0, 400, 300)   # off: the whole 4:3 image


def test_a_wide_image_reaches_the_model_at_the_training_images_scale():
    big = skin(800, 600)
    spec = InputSpec(source_width=200)
    expected = big.resize((200, 150), Image.Resampling.LANCZOS).resize((256, 192), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(fit_to_aspect(big, spec)), np.asarray(expected))
    # A training-sized image, or one less than twice as wide (ISIC 2017's copy: 256 px), is not touched.
    for w in (200, 256, 399):
        small = skin(w, w * 3 // 4)
        assert torch.equal(to_tensor(small, spec), to_tensor(small, InputSpec()))
    assert not torch.equal(to_tensor(big, spec), to_tensor(big, InputSpec()))


def test_specs_written_before_the_new_fields_read_hash_and_compare_the_same():
    assert InputSpec().to_dict() == {"width": 256, "height": 192, "mean": 0.5, "std": 0.5, "interpolation": "bicubic"}
    on = InputSpec(source_width=200, field_of_view=True, colour_constancy=6.0)
    assert InputSpec(**on.to_dict()) == on
    with pytest.raises(ValueError, match="source_width"):
        InputSpec(source_width=0)


def test_colour_constancy_at_serving_turns_a_grey_card_under_a_coloured_light_grey():
    card = Image.new("RGB", (200, 150), (200, 150, 90))      # a grey card lit by a warm light
    x = to_tensor(card, InputSpec(colour_constancy=6.0)) * 0.5 + 0.5
    means = x.mean((1, 2))
    assert (means.max() - means.min()) < 0.01
    assert torch.allclose(shades_of_gray(torch.full((3, 4, 4), 0.5), 6.0), torch.full((3, 4, 4), 0.5))  # grey stays grey


def test_carry_views_start_with_the_apps_input_and_draw_the_rest_from_the_seed():
    spec = InputSpec(source_width=200, field_of_view=True, colour_constancy=6.0)
    im = skin(200, 150)
    views = image_views(im, spec, "carry", seed=3)
    assert views.shape == (N_VIEWS, 3, 192, 256)
    assert torch.equal(views[0], to_tensor(im, spec)) and torch.equal(views[1], to_tensor(im, spec).flip(-1))
    assert torch.equal(views, image_views(im, spec, "carry", seed=3))          # resumable: same seed, same views
    assert not torch.equal(views[TTA_VIEWS:], image_views(im, spec, "carry", seed=4)[TTA_VIEWS:])
    assert views.min() >= -1 and views.max() <= 1
    # Each drawn view differs from the app's input (another light, zoom, rotation, resolution).
    assert all(not torch.allclose(v, views[0], atol=0.05) for v in views[TTA_VIEWS:])


def test_a_carry_view_can_show_a_round_black_field_of_view():
    g = torch.Generator().manual_seed(0)
    from train.data.augment import Carry
    views = [carry_view(skin(200, 150), InputSpec(), g, carry=Carry(vignette=1.0, resolution=(1.0, 1.0), jpeg=0.0))
             for _ in range(4)]
    # Some corner of some view is black (the rotation and crop may move the disc's edge).
    corners = torch.stack([v[:, :8, :8].mean() for v in views] + [v[:, -8:, -8:].mean() for v in views])
    assert (corners < -0.8).any()


def test_the_skin_tone_angle_matches_cielab_on_synthetic_skin_of_known_colour():
    from skimage.color import rgb2lab
    from lesion_app.evidence.skin_tone import band_of, skin_ita, srgb_to_lab
    for rgb in ((255, 255, 255), (255, 0, 0), (224, 172, 150), (141, 85, 36), (60, 40, 30)):
        assert np.allclose(srgb_to_lab(np.array(rgb, np.uint8)), rgb2lab(np.array([[rgb]], np.uint8))[0, 0], atol=0.05)
    # Patches of uniform skin: the angle is arctan((L* - 50) / b*) of their colour, and the band follows it.
    for rgb, band in (((236, 205, 190), "very light"), ((200, 150, 120), "intermediate"), ((120, 80, 55), "brown")):
        patch = np.full((60, 80, 3), rgb, np.uint8)
        L, _, b = rgb2lab(patch[:1, :1])[0, 0]
        ita = skin_ita(patch, None)
        assert ita == pytest.approx(np.degrees(np.arctan((L - 50) / b)), abs=0.05)
        assert band_of(ita) == band


def test_the_skin_tone_reads_the_skin_outside_the_outline_and_any_black_frame():
    from lesion_app.evidence.skin_tone import skin_ita
    light = np.full((60, 80, 3), (236, 205, 190), np.uint8)
    img = light.copy()
    lesion = np.zeros((60, 80), bool)
    lesion[20:40, 25:55] = True
    img[lesion] = (60, 40, 30)                     # a dark lesion
    img[:, :6] = 0                                 # a black border
    assert skin_ita(img, lesion) == pytest.approx(skin_ita(light, None), abs=0.5)
    assert skin_ita(np.zeros((60, 80, 3), np.uint8), None) is None   # no skin: no angle


def test_a_4000_px_upload_and_a_100_px_one_take_the_scale_step_as_documented(tmp_path):
    """4000 px: decoded at most 1024 px (image_input), then brought to 200 px, then to the input size;
    100 px: never enlarged before the input size (only the final resize, as today)."""
    import io
    from lesion_app.files.image_input import load_upload
    spec = InputSpec(source_width=200)
    big = skin(4000, 3000)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=95)
    upload = load_upload(buf.getvalue())
    assert max(upload.size) == 1024
    expected = upload.resize((200, 150), Image.Resampling.LANCZOS).resize((256, 192), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(fit_to_aspect(upload, spec)), np.asarray(expected))
    small = skin(100, 75)
    assert np.array_equal(np.asarray(fit_to_aspect(small, spec)),
                          np.asarray(small.resize((256, 192), Image.Resampling.BICUBIC)))
