"""One file that carries a dataset to a machine that has neither ../shared nor the pip package of
the ImageNet weights (the lent GPU machine): the images' own JPEG bytes, the checked metadata, the
folds and the held-out slice, and the ImageNet backbone (lite0 unless --arch says otherwise; fp16,
which is lossless: the project rounds those weights to fp16 anyway,
lesion_app.classifier.models.imagenet_state_dict).

    python -m train.data.pack --data DIR --out runs/ham10000_pack.safetensors [--folds train/splits/ham10000_folds.csv]
                              [--arch tf_efficientnet_lite0]
                              [--second-source ../shared/data/isic2017 --second-aspect 4:3]

The shared HAM10000 folder packs into about 41 MB with lite0 (33 MB of JPEGs, 7 MB of weights, 1 MB
of tables); Lite2's weights are 9.7 MB rather than 6.8.
The file is a safetensors file: tensors `jpeg_bytes` (every image's bytes end to end),
`jpeg_offsets` (N + 1 offsets) and `imagenet.<timm key>`; the tables and the folds file's recorded
path and sha256 are in its string metadata. With --second-source (issue 37), the fit half of that
folder's halves file (train/splits/isic2017_halves.csv) travels too: `second.jpeg_bytes`,
`second.jpeg_offsets`, its metadata rows and its record (halves file, sha256, aspect). This module is its one writer and reader;
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
from train.data.dataset import DEFAULT_DATA, DatasetError, image_path, load_metadata, parse_aspect, restore_aspect
from train.data.splits import (DEFAULT_FOLDS, SECOND_SOURCE_HALVES, fit_half, fit_half_record, heldout_path, load_folds,
                               load_heldout)

FORMAT = "lesion-data-pack/1"
IMAGENET = "imagenet."   # key prefix of the backbone's tensors
# load_metadata's string columns, read back as strings (an id such as "0001" stays "0001").
STRINGS = {"lesion_id": str, "image_id": str, "dx": str, "dx_type": str, "sex": str, "localization": str}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _joined(jpegs: list) -> dict[str, torch.Tensor]:
    offsets = np.cumsum([0] + [len(b) for b in jpegs]).astype(np.int64)
    return {"jpeg_bytes": torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8),
            "jpeg_offsets": torch.from_numpy(offsets)}


def _split(blob: bytes, offsets: list) -> list:
    return [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _decode(jpeg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB")


def _read_metadata(text: str) -> pd.DataFrame:
    md = pd.read_csv(io.StringIO(text), dtype=STRINGS)
    md["age"] = pd.to_numeric(md["age"], errors="coerce")
    return md


@dataclass
class SecondPart:
    """A second source's fit half as training reads it (issue 37; train.fitting.cv --second-source):
    its metadata rows, their JPEG bytes, and its record (train.data.splits.fit_half_record: the halves
    file and its sha256, the aspect its images are restored to)."""
    metadata: pd.DataFrame
    jpegs: list
    record: dict

    @classmethod
    def from_folder(cls, data: Path, halves: Path = SECOND_SOURCE_HALVES, aspect: str | None = None) -> "SecondPart":
        parse_aspect(aspect)   # ValueError before anything is read
        fit = fit_half(data, halves)
        return cls(fit, [image_path(data, i).read_bytes() for i in fit["image_id"]],
                   fit_half_record(data, halves, aspect, fit))

    def image(self, row: int) -> Image.Image:
        """Row's image as train.data.dataset.folder_image gives it (restored to the recorded aspect)."""
        return restore_aspect(_decode(self.jpegs[row]), parse_aspect(self.record["aspect"]))


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
    second: SecondPart | None = None

    @classmethod
    def from_folder(cls, data: Path, folds_csv: Path = DEFAULT_FOLDS, with_imagenet: bool = False,
                    arch: str = ARCH, second: SecondPart | None = None) -> "PackedData":
        """A folder in the HAM10000 layout with its folds file (and the held-out slice beside it), and
        optionally a second source's fit half."""
        md = load_metadata(data)
        held = heldout_path(folds_csv)
        return cls(md, [image_path(data, i).read_bytes() for i in md["image_id"]], load_folds(folds_csv),
                   load_heldout(folds_csv), repo_relative(folds_csv), file_sha256(folds_csv),
                   file_sha256(held) if held.is_file() else "", str(data),
                   {k: v for k, v in imagenet_state_dict(arch).items() if not k.startswith("classifier.")}
                   if with_imagenet else None, arch, second)

    def save(self, path: Path) -> None:
        tensors = _joined(self.jpegs)
        if self.second is not None:
            tensors.update({f"second.{k}": v for k, v in _joined(self.second.jpegs).items()})
        tensors.update({IMAGENET + k: (v.half() if v.is_floating_point() else v).contiguous()
                        for k, v in (self.imagenet or {}).items()})
        meta = {"format": FORMAT, "metadata.csv": self.metadata.to_csv(index=False),
                "folds.csv": self.folds.to_csv(index=False), "heldout.csv": self.heldout.to_csv(index=False),
                "folds_file": self.folds_file, "folds_sha256": self.folds_sha256,
                "heldout_sha256": self.heldout_sha256, "source": self.source, "arch": self.arch,
                **({"second.metadata.csv": self.second.metadata.to_csv(index=False),
                    "second.record": json.dumps(self.second.record)} if self.second is not None else {})}
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
            jpegs = _split(f.get_tensor("jpeg_bytes").numpy().tobytes(), f.get_tensor("jpeg_offsets").tolist())
            imagenet = {k[len(IMAGENET):]: f.get_tensor(k) for k in f.keys() if k.startswith(IMAGENET)}
            second = None
            if "second.record" in meta:
                second = SecondPart(_read_metadata(meta["second.metadata.csv"]),
                                    _split(f.get_tensor("second.jpeg_bytes").numpy().tobytes(),
                                           f.get_tensor("second.jpeg_offsets").tolist()),
                                    json.loads(meta["second.record"]))
        return cls(_read_metadata(meta["metadata.csv"]), jpegs,
                   pd.read_csv(io.StringIO(meta["folds.csv"]), dtype={"image_id": str, "lesion_id": str,
                                                                      "dx": str, "fold": int}),
                   pd.read_csv(io.StringIO(meta["heldout.csv"]), dtype=str), meta["folds_file"],
                   meta["folds_sha256"], meta["heldout_sha256"], meta["source"],
                   {k: v.float() if v.is_floating_point() else v for k, v in imagenet.items()} or None,
                   meta.get("arch", ARCH), second)

    @classmethod
    def open(cls, data: Path, folds_csv: Path | None = None, second: SecondPart | None = None) -> "PackedData":
        """A pack file (its own folds and second source; folds_csv and second must then be None) or a
        folder with folds_csv (default: the committed folds) and second."""
        if Path(data).is_file():
            if folds_csv is not None:
                raise ValueError(f"{data} is a pack, which carries its own folds: leave out --folds")
            if second is not None:
                raise ValueError(f"{data} is a pack, which carries its own second source (or none): leave out "
                                 "--second-source, or pack one with python -m train.data.pack --second-source DIR")
            return cls.load(data)
        return cls.from_folder(data, folds_csv or DEFAULT_FOLDS, second=second)

    def image(self, row: int) -> Image.Image:
        """Row's image as RGB, decoded as train.data.dataset.load_image decodes the file."""
        return _decode(self.jpegs[row])

    def describe(self) -> dict:
        """What a run records about its data."""
        return {"source": self.source, "n_images": len(self.metadata), "folds_file": self.folds_file,
                "folds_sha256": self.folds_sha256, "heldout_sha256": self.heldout_sha256,
                "image_ids_sha256": hashlib.sha256(json.dumps(list(self.metadata["image_id"])).encode()).hexdigest(),
                **({"second_source": self.second.record} if self.second is not None else {})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=Path, default=DEFAULT_FOLDS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default=ARCH, choices=list(IMAGENET_PACKAGES), help="whose ImageNet weights to carry")
    p.add_argument("--second-source", type=Path, default=None, metavar="DIR",
                   help="also carry this folder's fit half (train.fitting.gpu_cv trains every member on it; issue 37)")
    p.add_argument("--second-halves", type=Path, default=SECOND_SOURCE_HALVES)
    p.add_argument("--second-aspect", default=None, metavar="W:H", help="its images' aspect to restore (isic2017: 4:3)")
    a = p.parse_args(argv)
    if not a.folds.is_file():
        p.error(f"{a.folds} not found: make it with python -m train.data.make_folds --data DIR --out {a.folds}")
    try:
        second = (SecondPart.from_folder(a.second_source, a.second_halves, a.second_aspect)
                  if a.second_source is not None else None)
        packed = PackedData.from_folder(a.data, a.folds, with_imagenet=True, arch=a.arch, second=second)
    except (ModuleNotFoundError, DatasetError, ValueError) as e:
        p.error(str(e))
    packed.save(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
