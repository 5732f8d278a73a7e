"""Upload decoding and preprocessing: plain messages for bad input, the manifest's resize filter honoured."""
import base64
import io

import pytest
import torch
from PIL import Image

from inputs import bad_files, example_image
from lesion_app.files.image_input import InputError, load_upload, take_upload, take_uploads
from lesion_app.classifier.preprocess import InputSpec, to_tensor


def data_url(payload: str) -> dict:
    return {"path": None, "url": payload}


def test_a_base64_data_url_is_read():
    buf = io.BytesIO()
    example_image().save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert take_upload(data_url(url)) == buf.getvalue()


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo*not base64*",
                                 "data:image/png;base64,abc",            # bad padding
                                 "data:image/png,%89PNG"],               # not base64 at all
                         ids=["bad_characters", "bad_padding", "not_base64"])
def test_a_bad_data_url_is_an_input_error_with_a_plain_message(url):
    with pytest.raises(InputError) as e:
        take_upload(data_url(url))
    msg = str(e.value)
    assert "please upload the image file" in msg
    assert "Incorrect padding" not in msg and "Non-base64" not in msg and "binascii" not in msg


@pytest.mark.parametrize("name", ["truncated_jpeg", "corrupt_png"])
def test_a_damaged_file_gets_a_plain_message_without_pil_text(tmp_path, name):
    path, fragment = bad_files(tmp_path)[name]
    with pytest.raises(Exception) as raw:  # what PIL itself says about this file
        with Image.open(path) as im:
            im.load()
    raw_text = str(raw.value)
    assert raw_text
    with pytest.raises(InputError) as e:
        load_upload(path)
    msg = str(e.value)
    assert fragment in msg and raw_text not in msg and "(" not in msg


def test_the_spec_interpolation_is_used():
    im = example_image()  # 200x150 -> 256x192: an upscale, where the filters differ
    bicubic = to_tensor(im, InputSpec(interpolation="bicubic"))
    bilinear = to_tensor(im, InputSpec(interpolation="bilinear"))
    assert bicubic.shape == bilinear.shape == (3, 192, 256)
    assert (bicubic - bilinear).abs().max() > 0.01
    assert torch.equal(bicubic, to_tensor(im, InputSpec()))  # the default (and the manifest's) is bicubic
    expected = Image.Image.resize(im, (256, 192), Image.Resampling.BILINEAR)
    assert torch.allclose(bilinear, to_tensor(expected, InputSpec(interpolation="bicubic")), atol=1e-6)


def test_an_unknown_interpolation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'.*bicubic"):
        InputSpec(interpolation="cubic")


def test_the_same_file_given_twice_is_read_once_and_every_file_goes(tmp_path):
    """Gradio stores identical uploads at one path: both answer with its bytes, then it goes;
    a missing file is refused only after every other file was read and deleted."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"A"), b.write_bytes(b"B")
    assert take_uploads([str(a), {"path": str(a)}, str(b), str(b)]) == [b"A", b"A", b"B", b"B"]
    assert not a.exists() and not b.exists()
    a.write_bytes(b"A")
    with pytest.raises(InputError, match="no longer available"):
        take_uploads([str(tmp_path / "gone.png"), str(a), str(a)])
    assert not a.exists()
