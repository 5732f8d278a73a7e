"""The page's uploads: which upload a payload is, and reading them (the image and up to
MAX_IMAGES - 1 further images of the same lesion) into memory, each file deleted once read
(lesion_app.files.image_input). An upload read before is taken from the session's memory, since
its file is gone."""
from __future__ import annotations

from PIL import Image

from ..analysis.pipeline import MAX_IMAGES
from ..files.image_input import InputError, load_upload, take_uploads

KEPT_UPLOADS = 2 * MAX_IMAGES   # the most uploads one page's session keeps decoded (at most about 3 MB each)


def upload_key(payload, extra=None):
    """Which upload a payload is: its server path (None when there is no image); with further
    images of the lesion, the tuple of all their paths."""
    key = payload.get("path") if isinstance(payload, dict) else payload
    extra = extra_payloads(extra)
    return key if not extra else (key, *(upload_key(e) for e in extra))


def further_image_name(payload, i: int) -> str:
    """How a message names the i-th further image: its file's name as uploaded, else its place."""
    name = payload.get("orig_name") if isinstance(payload, dict) else None
    return f"{name} (further image {i})" if name else f"Further image {i}"


def extra_payloads(extra) -> list:
    """The further images of the lesion as a list of payloads (blank: none)."""
    if extra is None or extra == "":
        return []
    return list(extra) if isinstance(extra, (list, tuple)) else [extra]


def read_uploads(payload, extra=None, keep: frozenset[str] = frozenset(), kept: dict | None = None) -> tuple:
    """(the upload as an in-memory image, with further images of the lesion the list of all; the
    uploads read, by server path, for SessionState.uploads; the first InputError, the images
    then None). Every file is read, then deleted, even when another is refused, unless its digest
    is in `keep` (the bundled examples); an upload in `kept` (read before: its file is gone) is
    taken from there. At most KEPT_UPLOADS are decoded: more are refused anyway, and their files
    deleted all the same."""
    kept = kept or {}
    extra = extra_payloads(extra)
    payloads = [payload, *extra]
    keys = [upload_key(p) for p in payloads]
    fresh = [k is None or k not in kept for k in keys]
    taken = iter(take_uploads([p for p, f in zip(payloads, fresh) if f], keep, raise_errors=False))
    images, read, error = [], {}, None
    for i, (p, k, f) in enumerate(zip(payloads, keys, fresh)):
        data = next(taken) if f else None
        if k is not None and k in read:
            images.append(read[k])
            continue
        if len(read) >= KEPT_UPLOADS:
            continue
        try:
            if isinstance(data, InputError):
                raise data
            image = load_upload(data) if f else kept[k]
        except InputError as e:
            error = error or (InputError(f"{further_image_name(p, i)}: {e}") if i else e)
            continue
        images.append(image)
        if k is not None:
            read[k] = image
    if len(extra) > MAX_IMAGES - 1:
        error = InputError(f"At most {MAX_IMAGES - 1} more images of the same lesion ({MAX_IMAGES} in all); "
                           f"{len(extra)} were given.")
    if error is not None:
        return None, read, error
    return (images if extra else images[0]), read, None


def decode_uploads(payload, extra=None, keep: frozenset[str] = frozenset()) -> Image.Image | list[Image.Image]:
    """The upload as an in-memory image (with further images of the lesion, the list of
    all); every file is read, then deleted, before any analysis runs. InputError for the first
    one that cannot be read, or too many."""
    images, _, error = read_uploads(payload, extra, keep)
    if error is not None:
        raise error
    return images
