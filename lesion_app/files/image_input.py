"""Turns an uploaded file into a safe RGB image, or a clear InputError."""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32
MAX_PIXELS = 40_000_000      # a 6000x4500 photo is 27 MP; beyond this we refuse before decoding
WORKING_MAX_SIDE = 1024      # larger images are reduced at decode time; the model sees 256x192


class InputError(ValueError):
    """An upload the app cannot analyse; the message is shown to the user as is."""


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        # 16-bit samples span 0..65535 (as PNG prescribes): scale, never stretch, so a 16-bit
        # copy of an 8-bit image is analysed exactly as the 8-bit one.
        a = np.asarray(im, dtype=np.float64) / 257
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    elif im.mode in ("I", "F"):
        # 32-bit integer or float samples have no fixed range: stretch min..max to 0..255.
        a = np.asarray(im, dtype=np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) / span * 255 if span > 0 else np.zeros_like(a)
        im = Image.fromarray(np.round(a).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def _decode_data_url(url: str) -> bytes:
    """The bytes of a base64 `data:` URL; InputError for anything else."""
    header, _, body = url.partition(",")
    if not header.endswith(";base64"):
        raise InputError("The uploaded data is not a base64 image; please upload the image file instead.")
    try:
        return base64.b64decode("".join(body.split()), validate=True)  # line breaks are harmless
    except (binascii.Error, ValueError):
        raise InputError("The uploaded data is not valid base64 and cannot be read; "
                         "please upload the image file instead.") from None


def take_upload(payload, keep_digests: frozenset[str] = frozenset()) -> bytes:
    """Reads an upload into memory and deletes its file, so the image does not outlive the request.

    payload: a path, or Gradio's file payload ({"path": ..., "url": ...}) as the UI and the
    API send it; a payload without a path may carry the image as a base64 `data:` URL.
    Files whose sha256 is in keep_digests (the bundled examples) are left alone. Raises
    InputError (a plain message) for no upload, a file that is gone, or a bad data URL.
    """
    return take_uploads([payload], keep_digests)[0]


def take_uploads(payloads, keep_digests: frozenset[str] = frozenset(),
                 raise_errors: bool = True) -> list[bytes | InputError]:
    """take_upload for every upload of one request: each file is read before any is deleted,
    the same file given twice (Gradio stores identical uploads at one path) is read once and
    answers for both, and every file read is deleted even when another is refused; then the
    first InputError, if any, is raised (raise_errors=False: each upload's bytes or its
    InputError, in order)."""
    data, read, error = [], {}, None
    for payload in payloads:
        try:
            data.append(_read_upload(payload, read))
        except InputError as e:
            data.append(e)
            error = error or e
    for path, content in read.items():
        if hashlib.sha256(content).hexdigest() not in keep_digests:
            path.unlink(missing_ok=True)
    if error is not None and raise_errors:
        raise error
    return data


def _read_upload(payload, read: dict[Path, bytes]) -> bytes:
    """One upload's bytes; a file already in `read` (path -> bytes) is not read again."""
    if payload is None:
        raise InputError("Please upload a dermoscopic image first.")
    if isinstance(payload, dict):
        url = payload.get("url") or ""
        if payload.get("path") is None and url.startswith("data:"):
            return _decode_data_url(url)
        payload = payload.get("path")
    path = Path(str(payload))
    if path not in read:
        try:
            read[path] = path.read_bytes()
        except OSError:
            raise InputError("The uploaded file is no longer available; please upload the image again.") from None
    return read[path]


def load_upload(source: str | Path | bytes | None) -> Image.Image:
    """Opens, checks and normalises an uploaded image (a path or the file's bytes) to RGB.

    Refuses: no file, not an image, truncated/corrupt files, more than MAX_PIXELS pixels
    (checked from the header, before decoding), and images under MIN_SIDE px on a side.
    Converts grayscale, palette, RGBA, CMYK and 16-bit images, and applies EXIF rotation.
    """
    if source is None:
        raise InputError("Please upload a dermoscopic image first.")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise InputError("The uploaded file is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"The image is too large ({w}x{h} pixels, over "
                                 f"{MAX_PIXELS // 1_000_000} megapixels). Please upload a smaller image.")
            if min(w, h) < MIN_SIDE:
                raise InputError(f"The image is too small ({w}x{h} pixels); at least {MIN_SIDE} "
                                 "pixels are needed on each side.")
            if max(w, h) > WORKING_MAX_SIDE and im.format == "JPEG":
                im.draft("RGB", (WORKING_MAX_SIDE, WORKING_MAX_SIDE))  # decode at reduced scale
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("The image is too large to decode safely. Please upload a smaller image.") from None
    except UnidentifiedImageError:
        raise InputError("The file is not an image this app can read (use JPEG, PNG, TIFF, BMP or WebP).") from None
    except (OSError, SyntaxError, ValueError):
        # PIL's own text (decoder codes, byte offsets) means nothing to the user; it is not shown.
        raise InputError("The image file is damaged or truncated and cannot be read. "
                         "Please upload the original file again.") from None
    if max(im.size) > WORKING_MAX_SIDE:
        im.thumbnail((WORKING_MAX_SIDE, WORKING_MAX_SIDE), Image.Resampling.LANCZOS)
    return im
