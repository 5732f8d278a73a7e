"""Clearly non-dermoscopic images, made from code, for measuring the out-of-distribution check."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _plain(rgb):
    return Image.new("RGB", (400, 300), rgb)


def _gradient(a, b, vertical):
    t = np.linspace(0, 1, 300 if vertical else 400)
    line = (np.outer(1 - t, a) + np.outer(t, b)).astype(np.uint8)
    arr = np.repeat(line[:, None], 400, 1) if vertical else np.repeat(line[None], 300, 0)
    return Image.fromarray(arr)


def _text(seed):
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (400, 300), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=22)
    words = "patient report invoice meeting agenda total amount screenshot settings".split()
    for row in range(10):
        d.text((12, 8 + row * 28), " ".join(rng.choice(words, 4)), fill="black", font=font)
    return im


def _scene(seed):
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (400, 300), (110, 170, 235))          # sky
    d = ImageDraw.Draw(im)
    d.rectangle((0, 190, 400, 300), fill=(70, 140, 60))          # grass
    d.ellipse((300, 20, 360, 80), fill=(250, 220, 60))           # sun
    x = int(rng.integers(40, 200))
    d.rectangle((x, 120, x + 110, 200), fill=(180, 60, 50))      # house
    d.polygon([(x - 10, 120), (x + 55, 70), (x + 120, 120)], fill=(90, 50, 40))
    d.rectangle((x + 45, 160, x + 65, 200), fill=(60, 40, 30))
    return im


def _checker(n):
    arr = (np.indices((300, 400)) // n).sum(0) % 2 * 255
    return Image.fromarray(np.stack([arr] * 3, -1).astype(np.uint8))


def _noise(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8))


def non_dermoscopic_images() -> dict[str, Image.Image]:
    """About 40 named images: plain colours, gradients, text, cartoon scenes, patterns, noise."""
    out = {}
    for name, rgb in {"white": (255, 255, 255), "black": (0, 0, 0), "red": (220, 30, 30),
                      "green": (30, 200, 60), "blue": (30, 60, 220), "grey": (128, 128, 128),
                      "yellow": (240, 230, 40), "purple": (120, 40, 160)}.items():
        out[f"plain_{name}"] = _plain(rgb)
    pairs = [((0, 0, 0), (255, 255, 255)), ((255, 0, 0), (0, 0, 255)), ((0, 255, 0), (255, 255, 0)),
             ((20, 20, 80), (240, 200, 200))]
    for k, (a, b) in enumerate(pairs):
        out[f"gradient_h{k}"] = _gradient(a, b, False)
        out[f"gradient_v{k}"] = _gradient(a, b, True)
    for k in range(8):
        out[f"text_{k}"] = _text(k)
        out[f"scene_{k}"] = _scene(k)
    for n in (10, 25, 50):
        out[f"checker_{n}"] = _checker(n)
    for k in range(3):
        out[f"noise_{k}"] = _noise(k)
    return out
