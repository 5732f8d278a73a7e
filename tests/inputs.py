"""Odd and broken upload files, made on the fly from the committed example images."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parent.parent / "lesion_app" / "examples" / "images" / "ISIC_0024449.jpg"


def example_image() -> Image.Image:
    with Image.open(EXAMPLE) as im:
        return im.convert("RGB")


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (the classic bomb header)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the error message must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = EXAMPLE.read_bytes()
    files = {
        "not_an_image": (b"%PDF-1.4 this is a document, not an image\n" * 20, "not an image"),
        "empty": (b"", "empty"),
        "truncated_jpeg": (jpeg[:len(jpeg) // 3], "damaged or truncated"),
        "corrupt_png": (None, "damaged or truncated"),
        "bomb_header": (_png_claiming(60000, 60000), "too large"),
        "tiny": (None, "too small"),
        "huge_pixel_count": (None, "too large"),
    }
    out = {}
    for name, (data, msg) in files.items():
        path = folder / f"{name}.png"
        if name == "tiny":
            example_image().resize((20, 24)).save(path)
        elif name == "corrupt_png":  # valid header, garbage in the middle of the pixel data
            buf = io.BytesIO()
            example_image().save(buf, format="PNG")
            data = bytearray(buf.getvalue())
            mid = len(data) // 2
            data[mid:mid + 400] = bytes(range(200)) * 2
            path.write_bytes(bytes(data))
        elif name == "huge_pixel_count":  # 54 MP, a few KB on disk: refused from the header
            Image.new("1", (9000, 6000)).save(path)
        else:
            path.write_bytes(data)
        out[name] = (path, msg)
    return out


def odd_but_valid_files(folder: Path) -> dict[str, Path]:
    """Images in other modes, bit depths and orientations that must be analysed correctly."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = example_image()
    out = {}
    rgb.convert("L").save(out.setdefault("grayscale", folder / "grayscale.png"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(out.setdefault("rgba", folder / "rgba.png"))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(out.setdefault("palette", folder / "palette.png"))
    rgb.convert("CMYK").save(out.setdefault("cmyk", folder / "cmyk.jpg"))
    sixteen = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(sixteen).save(out.setdefault("16bit", folder / "16bit.png"))
    # Stored rotated 90 degrees with EXIF orientation 6 ("rotate 90 CW to display").
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(out.setdefault("exif_rotated", folder / "exif_rotated.jpg"),
                                                  exif=exif, quality=95)
    rgb.resize((6000, 4500), Image.Resampling.BICUBIC).save(out.setdefault("photo_6000x4500",
                                                                           folder / "photo_6000x4500.jpg"),
                                                            quality=90)
    return out
