"""Caches the frozen lower backbone's output for every image, once.

    python -m train.data.features [--data DIR] [--cache .cache/features]

The lower stages (conv_stem .. blocks[split_block-1]) never change during training, so
their output for each image and each augmentation view is computed once and stored as
one fp16 array of shape (N, VIEWS, C, H, W): the one shared frozen trunk of every ensemble
member. Training then runs only the upper stages. Resumable: rows are written in order and
the count of finished rows is kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from train.data.dataset import DEFAULT_DATA, folder_image, load_metadata
from lesion_app.classifier.models import ARCH, SPLIT_BLOCK, LesionClassifier
from lesion_app.classifier.preprocess import InputSpec, flip_views, to_tensor
from train.data.augment import carry_view
from train import REPO

DEFAULT_CACHE = REPO / ".cache" / "features"
ZOOM = 0.85  # the second scale: a centre crop keeping 85% of each side
N_VIEWS = 8   # 4 flips of the full image, then 4 flips of the zoomed crop
TTA_VIEWS = 4  # evaluation averages over the flips of the full image only


def zoom(image: Image.Image, keep: float = ZOOM) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * keep), round(h * keep)
    return image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


VIEW_KINDS = ("flips", "carry")   # what the cached views are (image_views)


def image_views(image: Image.Image, spec: InputSpec, kind: str = "flips", seed: int = 0) -> torch.Tensor:
    """(N_VIEWS, 3, H, W). The first TTA_VIEWS are always the flips of the app's input (what
    evaluation averages over). kind "flips" (the shipped recipe): then the flips of the zoomed
    centre. kind "carry" (issue 37): then TTA_VIEWS random carry views (train.data.augment.carry_view:
    another light, zoom, rotation, a round field of view, lower resolution, JPEG), drawn from seed."""
    if kind == "carry":
        g = torch.Generator().manual_seed(seed)
        drawn = [carry_view(image, spec, g) for _ in range(N_VIEWS - TTA_VIEWS)]
        return torch.cat([flip_views(to_tensor(image, spec)[None])[0], torch.stack(drawn)])
    if kind != "flips":
        raise ValueError(f"unknown view kind {kind!r}; use one of {VIEW_KINDS}")
    x = torch.stack([to_tensor(image, spec), to_tensor(zoom(image), spec)])
    return flip_views(x).flatten(0, 1)


def view_seed(image_id: str) -> int:
    """A carry view's seed from its image id, so a resumed cache draws the same views."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16)


def cache_dir(cache: Path, image_ids, spec: InputSpec, split_block: int = SPLIT_BLOCK, arch: str = ARCH,
              kind: str = "flips", aspect: float | None = None) -> Path:
    key = [arch, split_block, N_VIEWS, ZOOM, spec.to_dict(), list(image_ids)]
    if kind != "flips":   # the shipped recipe's caches keep their keys
        key.append(kind)
    if aspect is not None:
        key.append(["aspect", aspect])
    return Path(cache) / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def cache_seconds(cache: Path, image_ids, spec: InputSpec = InputSpec(), split_block: int = SPLIT_BLOCK,
                  arch: str = ARCH, kind: str = "flips") -> float:
    """Wall time the cache of these images took to build (0 when unknown)."""
    f = cache_dir(cache, list(image_ids), spec, split_block, arch, kind) / "progress.json"
    return float(json.loads(f.read_text()).get("seconds", 0.0)) if f.is_file() else 0.0


@torch.inference_mode()
def build_cache(data: Path, image_ids, cache: Path = DEFAULT_CACHE, spec: InputSpec = InputSpec(),
                batch_images: int = 2, model: LesionClassifier | None = None,
                split_block: int = SPLIT_BLOCK, device: str = "cpu", workers: int = 0,
                arch: str = ARCH, kind: str = "flips", aspect: float | None = None) -> np.ndarray:
    """Returns the (N, N_VIEWS, C, h, w) fp16 array for image_ids, computing what is missing.

    arch: the backbone whose frozen lower stages are cached (one with packaged ImageNet weights,
    models.IMAGENET_PACKAGES); model, when given, must be that backbone split at split_block.
    workers > 0 decodes images in that many threads (for a GPU that outruns one decoder).
    kind: which views (image_views; "carry" draws each image's from its id, view_seed).
    aspect: a folder stored squashed is first restored to this aspect ratio (dataset.folder_image).
    """
    image_ids = list(image_ids)
    out = cache_dir(cache, image_ids, spec, split_block, arch, kind, aspect)
    out.mkdir(parents=True, exist_ok=True)
    progress_file, array_file = out / "progress.json", out / "lower.npy"
    done = json.loads(progress_file.read_text())["done"] if progress_file.exists() else 0
    if done == len(image_ids):
        return np.load(array_file, mmap_mode="r")
    model = (model or LesionClassifier("image_only", arch=arch, split_block=split_block)).eval()
    model = model.to(device, memory_format=torch.channels_last)
    c, h, w = model.lower(torch.zeros(1, 3, spec.height, spec.width, device=device)).shape[1:]
    mode = "r+" if done else "w+"
    arr = np.lib.format.open_memmap(array_file, mode=mode, dtype=np.float16,
                                    shape=(len(image_ids), N_VIEWS, c, h, w))
    t0 = time.time()
    bar = tqdm(range(done, len(image_ids), batch_images), desc="caching lower features",
               unit="batch", mininterval=10)
    pool = ThreadPoolExecutor(workers) if workers else None
    views_of = lambda i: image_views(folder_image(data, i, aspect), spec, kind, view_seed(i))  # noqa: E731
    for start in bar:
        ids = image_ids[start:start + batch_images]
        x = torch.cat(list(pool.map(views_of, ids)) if pool else [views_of(i) for i in ids])
        f = model.lower(x.to(device).contiguous(memory_format=torch.channels_last))
        arr[start:start + len(ids)] = f.reshape(len(ids), N_VIEWS, c, h, w).half().cpu().numpy()
        if (start // batch_images) % 50 == 0 or start + len(ids) == len(image_ids):
            arr.flush()
            progress_file.write_text(json.dumps({"done": start + len(ids)}))
    if pool:
        pool.shutdown()
    arr.flush()
    progress_file.write_text(json.dumps({"done": len(image_ids),
                                         "seconds": round(time.time() - t0, 1)}))
    del arr
    return np.load(array_file, mmap_mode="r")


@torch.inference_mode()
def cached_pooled(model: LesionClassifier, feats, batch: int = 128,
                  views: int = TTA_VIEWS) -> torch.Tensor:
    """Cached lower features (N, V, C, h, w), an array or a tensor on the model's device ->
    pooled upper features (N, views, F), on that device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(feats), batch):
        chunk = feats[s:s + batch, :views]
        f = (chunk if torch.is_tensor(chunk) else torch.from_numpy(np.asarray(chunk))).to(device).float()
        b, v = f.shape[:2]
        out.append(model.upper(f.flatten(0, 1).contiguous(memory_format=torch.channels_last)).view(b, v, -1))
    return torch.cat(out)


def build_pooled_imagenet(data: Path, image_ids, cache: Path = DEFAULT_CACHE,
                          spec: InputSpec = InputSpec(), batch_images: int = 32,
                          split_block: int = SPLIT_BLOCK, device: str = "cpu", arch: str = ARCH,
                          kind: str = "flips", aspect: float | None = None) -> np.ndarray:
    """(N, N_VIEWS, F) fp16 pooled features of the whole backbone (arch) at its ImageNet weights.

    What the study's heads train on: every arm sees the same frozen features, so arms
    differ only in their head, loss and sampling. Stored next to the lower-stage cache.
    """
    image_ids = list(image_ids)
    lower = build_cache(data, image_ids, cache, spec, split_block=split_block, device=device, arch=arch, kind=kind,
                        aspect=aspect)
    path = cache_dir(cache, image_ids, spec, split_block, arch, kind, aspect) / "pooled_imagenet.npy"
    if path.exists():
        return np.load(path)
    model = LesionClassifier("image_only", arch=arch, split_block=split_block).to(device, memory_format=torch.channels_last)
    out = np.empty((len(image_ids), N_VIEWS, model.backbone.num_features), np.float16)
    for s in tqdm(range(0, len(image_ids), batch_images), desc="pooling ImageNet features",
                  mininterval=10):
        out[s:s + batch_images] = cached_pooled(model, lower[s:s + batch_images], views=N_VIEWS).cpu().numpy()
    np.save(path.with_suffix(".tmp.npy"), out)
    path.with_suffix(".tmp.npy").replace(path)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    df = load_metadata(a.data)
    t = time.time()
    arr = build_cache(a.data, df["image_id"], a.cache)
    print(f"cached {arr.shape} in {time.time() - t:.0f} s at {cache_dir(a.cache, df['image_id'], InputSpec())}")


if __name__ == "__main__":
    main()
