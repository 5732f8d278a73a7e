"""One file that carries a dataset to a machine that has neither ../shared nor the pip package of
the ImageNet weights (the lent GPU machine): the images' own JPEG bytes, the checked metadata, the
folds and the held-out slice, and the ImageNet backbone (lite0 unless --arch says otherwise; fp16,
which is lossless: the project rounds those weights to fp16 anyway,
lesion_app.classifier.models.imagenet_state_dict).

    python -m train.data.pack --data DIR --out runs/ham10000_pack.safetensors [--folds train/splits/ham10000_folds.csv]
                              [--arch tf_efficientnet_lite0]

The shared HAM10000 folder packs into about 41 MB with lite0 (33 MB of JPEGs, 7 MB of weights, 1 MB
of tables); Lite2's weights are 9.7 MB rather than 6.8.
The file is a safetensors file: tensors `jpeg_bytes` (every image's bytes end to end),
`jpeg_offsets` (N + 1 offsets) and `imagenet.<timm key>`; the tables and the folds file's recorded
path and sha256 are in its string metadata. This module is its one writer and reader;
train.fitting.gpu_cv reads a pack or a folder alike through PackedData.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lesion_app.classifier.models import ARCH, IMAGENET_PACKAGES, imagenet_state_dict
from lesion_app.paths import repo_relative
from train.data.dataset import DEFAULT_DATA, image_path, load_metadata
from train.data.splits import DEFAULT_FOLDS, heldout_path, load_folds, load_heldout

FORMAT = "lesion-data-pack/1"
IMAGENET = "imagenet."   # key prefix of the backbone's tensors
# load_metadata's string columns, read back as strings (an id such as "0001" stays "0001").
STRINGS = {"lesion_id": str, "image_id": str, "dx": str, "dx_type": str, "sex": str, "localization": str}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class PackedData:
    """A dataset as training reads it: the metadata (load_metadata's checked frame, in the folder's
    order), each row's JPEG bytes, the folds and held-out slice, where the folds file is recorded
    (repo-relative) with its and the slice's sha256, and the ImageNet backbone (arch) when packed."""
    metadata: pd.DataFrame
    jpegs: list
    folds: pd.DataFrame
    heldout: pd.DataFrame
    folds_file: str
    folds_sha256: str
    heldout_sha256: str
    source: str
    imagenet: dict | None = None
    arch: str = ARCH

    @classmethod
    def from_folder(cls, data: Path, folds_csv: Path = DEFAULT_FOLDS, with_imagenet: bool = False,
                    arch: str = ARCH) -> "PackedData":
        """A folder in the HAM10000 layout with its folds file (and the held-out slice beside it)."""
        md = load_metadata(data)
        held = heldout_path(folds_csv)
        return cls(md, [image_path(data, i).read_bytes() for i in md["image_id"]], load_folds(folds_csv),
                   load_heldout(folds_csv), repo_relative(folds_csv), file_sha256(folds_csv),
                   file_sha256(held) if held.is_file() else "", str(data),
                   {k: v for k, v in imagenet_state_dict(arch).items() if not k.startswith("classifier.")}
                   if with_imagenet else None, arch)

    def save(self, path: Path) -> None:
        offsets = np.cumsum([0] + [len(b) for b in self.jpegs]).astype(np.int64)
        tensors = {"jpeg_bytes": torch.frombuffer(bytearray(b"".join(self.jpegs)), dtype=torch.uint8),
                   "jpeg_offsets": torch.from_numpy(offsets)}
        tensors.update({IMAGENET + k: (v.half() if v.is_floating_point() else v).contiguous()
                        for k, v in (self.imagenet or {}).items()})
        meta = {"format": FORMAT, "metadata.csv": self.metadata.to_csv(index=False),
                "folds.csv": self.folds.to_csv(index=False), "heldout.csv": self.heldout.to_csv(index=False),
                "folds_file": self.folds_file, "folds_sha256": self.folds_sha256,
                "heldout_sha256": self.heldout_sha256, "source": self.source, "arch": self.arch}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(".tmp")
        save_file(tensors, tmp, metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "PackedData":
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a data pack ({FORMAT}); make one with python -m train.data.pack")
            blob = f.get_tensor("jpeg_bytes").numpy().tobytes()
            offsets = f.get_tensor("jpeg_offsets").tolist()
            imagenet = {k[len(IMAGENET):]: f.get_tensor(k) for k in f.keys() if k.startswith(IMAGENET)}
        md = pd.read_csv(io.StringIO(meta["metadata.csv"]), dtype=STRINGS)
        md["age"] = pd.to_numeric(md["age"], errors="coerce")
        return cls(md, [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                   pd.read_csv(io.StringIO(meta["folds.csv"]), dtype={"image_id": str, "lesion_id": str,
                                                                      "dx": str, "fold": int}),
                   pd.read_csv(io.StringIO(meta["heldout.csv"]), dtype=str), meta["folds_file"],
                   meta["folds_sha256"], meta["heldout_sha256"], meta["source"],
                   {k: v.float() if v.is_floating_point() else v for k, v in imagenet.items()} or None,
                   meta.get("arch", ARCH))

    @classmethod
    def open(cls, data: Path, folds_csv: Path | None = None) -> "PackedData":
        """A pack file (its own folds; folds_csv must then be None) or a folder with folds_csv
        (default: the committed folds)."""
        if Path(data).is_file():
            if folds_csv is not None:
                raise ValueError(f"{data} is a pack, which carries its own folds: leave out --folds")
            return cls.load(data)
        return cls.from_folder(data, folds_csv or DEFAULT_FOLDS)

    def image(self, row: int) -> Image.Image:
        """Row's image as RGB, decoded as train.data.dataset.load_image decodes the file."""
        with Image.open(io.BytesIO(self.jpegs[row])) as im:
            return im.convert("RGB")

    def describe(self) -> dict:
        """What a run records about its data."""
        return {"source": self.source, "n_images": len(self.metadata), "folds_file": self.folds_file,
                "folds_sha256": self.folds_sha256, "heldout_sha256": self.heldout_sha256,
                "image_ids_sha256": hashlib.sha256(json.dumps(list(self.metadata["image_id"])).encode()).hexdigest()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default=ARCH, choices=list(IMAGENET_PACKAGES), help="whose ImageNet weights to carry")
    a = p.parse_args(argv)
    if not a.folds.is_file():
        p.error(f"{a.folds} not found: make it with python -m train.data.make_folds --data DIR --out {a.folds}")
    try:
        packed = PackedData.from_folder(a.data, a.folds, with_imagenet=True, arch=a.arch)
    except ModuleNotFoundError as e:
        p.error(str(e))
    packed.save(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
