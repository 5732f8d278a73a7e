"""Bad and odd input, privacy, determinism and load, against the real running app."""
import hashlib

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import EXAMPLES, AppServer, REPO
from inputs import bad_files, example_image, odd_but_valid_files
from train.evaluation.load_benchmark import run_load

META = (52, "male", "back")


def report(client, path, age=META[0], sex=META[1], site=META[2]):
    return client.predict(handle_file(str(path)), age, sex, site, api_name="/report")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return odd_but_valid_files(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize("name", ["not_an_image", "empty", "truncated_jpeg", "corrupt_png",
                                  "bomb_header", "huge_pixel_count", "tiny"])
def test_bad_files_get_a_clear_message_and_the_server_keeps_serving(client, bad, name):
    path, fragment = bad[name]
    with pytest.raises(AppError) as e:
        report(client, path)
    assert fragment in str(e.value) and "Traceback" not in str(e.value)
    assert report(client, EXAMPLES / "images" / "ISIC_0024394.jpg")["fusion"]["top"]


@pytest.mark.parametrize("age,fragment", [(-3, "between 0 and 120"), (121, "between 0 and 120"),
                                          ("sixty", "must be a number")])
def test_bad_age_gets_a_clear_message(client, age, fragment):
    with pytest.raises(AppError, match=fragment):
        report(client, EXAMPLES / "images" / "ISIC_0024394.jpg", age=age)


def probabilities(r: dict) -> np.ndarray:
    """Both models' probabilities, in class order: fusion then image-only."""
    return np.array([*r["fusion"]["probabilities"].values(), *r["image_only"]["probabilities"].values()])


def reference(name: str, odd: dict) -> tuple[Image.Image, float]:
    """The RGB image the app must analyse in place of odd[name], and the tolerance on each probability.

    Lossless cases must give the same pixels, hence the same analysis (1e-6: float printing only).
    Lossy ones are held to the RGB original within what JPEG noise moves these models: re-encoding
    the original as JPEG (q75-q95) moves a probability by up to 0.06, while a colour mistake moves
    it by 0.26 (inverted colours) to 0.89 (BGR for RGB).
    """
    rgb = example_image()
    if name in ("grayscale", "16bit"):
        # The file itself has no colour (16bit: the same grey levels x 257), so the best any
        # reader can do is the original's grey, replicated to RGB; not the colour original.
        return rgb.convert("L").convert("RGB"), 1e-6
    with Image.open(odd[name]) as im:
        if name == "rgba":  # as the browser shows it on a white page
            return Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB"), 1e-6
        if name == "palette":  # the file's own colours (the adaptive palette already lost some)
            return im.convert("RGB"), 1e-6
    if name == "cmyk":  # the RGB original: RGB -> CMYK is lossless, the JPEG (q75) is not
        return rgb, 0.05
    if name == "photo_6000x4500":  # upscaled 30x, JPEG q90, then reduced again at decode time
        return rgb, 0.10
    raise KeyError(name)


@pytest.mark.parametrize("name", ["grayscale", "16bit", "rgba", "palette", "cmyk", "photo_6000x4500"])
def test_odd_but_valid_images_are_analysed_as_their_rgb_reference(client, odd, name, tmp_path):
    ref, tol = reference(name, odd)
    ref_path = tmp_path / "reference.png"
    ref.save(ref_path)  # lossless
    got, want = probabilities(report(client, odd[name])), probabilities(report(client, ref_path))
    assert np.abs(got - want).max() <= tol, f"{name}: {np.round(got, 3)} vs reference {np.round(want, 3)}"


def test_exif_rotation_is_applied(client, odd, tmp_path):
    upright = tmp_path / "upright.jpg"
    example_image().save(upright, quality=95)
    a, b = report(client, odd["exif_rotated"]), report(client, upright)
    # Same picture once the EXIF rotation is applied (JPEG re-encoding aside).
    assert np.allclose(list(a["fusion"]["probabilities"].values()),
                       list(b["fusion"]["probabilities"].values()), atol=0.03)


def test_same_input_same_output(client):
    path = EXAMPLES / "images" / "ISIC_0025089.jpg"
    assert report(client, path) == report(client, path)


def test_uploads_do_not_outlive_the_request(client, app_server, tmp_path):
    # A patient image that is not one of the bundled examples.
    im = example_image().transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    path = tmp_path / "patient.png"
    im.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report(client, path)
    client.predict(handle_file(str(path)), *META, "Predicted class (each model's own)", "90% specificity",
                   api_name="/analyze")
    left = [p for p in app_server.temp_dir.rglob("*") if p.is_file()
            and hashlib.sha256(p.read_bytes()).hexdigest() == digest]
    assert left == [], f"the upload is still on disk: {left}"
    assert not any(p.suffix in (".png", ".webp") and "patient" in p.name
                   for p in app_server.temp_dir.rglob("*"))


def test_twelve_concurrent_users_three_calls_each_without_errors(app_server):
    r = run_load(app_server.url, users=12, calls=3)
    assert r["errors"] == [] and len(r["latencies"]) == 36


def test_non_dermoscopic_images_are_flagged_and_examples_are_not(client, tmp_path):
    from train.data.synthetic_images import non_dermoscopic_images
    flagged = 0
    synth = non_dermoscopic_images()
    for name, im in synth.items():
        p = tmp_path / f"{name}.png"
        im.save(p)
        warnings = report(client, p)["warnings"]
        flagged += any("does not look like" in w for w in warnings)
    assert flagged >= 0.9 * len(synth), f"only {flagged}/{len(synth)} flagged"
    for p in sorted((EXAMPLES / "images").glob("*.jpg")):
        assert report(client, p)["warnings"] == [], p.name


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_app_refuses_to_start_with_damaged_weights(tmp_path, damage):
    import shutil
    weights = tmp_path / "weights"
    shutil.copytree(REPO / "weights", weights)
    target = weights / "image_only_fold2.safetensors"
    if damage == "corrupt":
        data = bytearray(target.read_bytes())
        data[1000] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(RuntimeError) as e:
        AppServer({"LESION_APP_WEIGHTS": str(weights)}, startup_timeout=90)
    msg = str(e.value)
    assert "exited with 1" in msg and target.name in msg and "git checkout -- weights/" in msg
