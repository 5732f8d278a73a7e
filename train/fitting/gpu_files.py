"""The files a GPU run (train.fitting.gpu_cv) returns, their one writer and reader, and the
command that unpacks them into the run folder train.fitting.cv writes.

    python -m train.fitting.gpu_files OUT [OUT2 ...] --to runs/cv_gpu

The lent GPU machine brings back at most MAX_FILES files of at most MAX_FILE_BYTES each, so a
run's folder holds only:
  members_<k>.safetensors   the members, packed greedily in training order into as few files as
                            fit: each member's fp16 tensors (what train.fitting.cv saves: the
                            fine-tuned stages and head; the whole network for a whole-network
                            member) under the prefix "<kind>_fold<f>/"
  run_arrays.safetensors    every member's out-of-fold and held-out logits with their rows, each
                            fold's curriculum rank, and each image's fold, label and held-out
                            flag (image ids in its metadata)
  run.json                  the recipe, the data, each member's record (its pack, training
                            history and wall time) and each invocation's wall time and device
A member counts as done once run.json names it (written last). Packs and run_arrays hold no
times, so a resumed run's files equal an uninterrupted run's byte for byte.

A run continued on a fresh machine needs only run.json and run_arrays.safetensors of the part
before (the members already returned are not sent again): it skips the members run.json names
and packs the new ones into files numbered after them. Unpacking then takes every part's folder.

The unpacked folder is train.fitting.cv's: <kind>_fold<f>/{member.safetensors, member.json,
logits.npz}, rank_fold<f>.npy, times.json, oof_logits.csv, heldout_logits.csv and cv.json,
written by cv's own collect(); train.release.bundle --cv and the evaluation scripts read it as
they read a CPU run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from lesion_app.classifier.models import ARCH
from lesion_app.paths import repo_path
from train.data.pack import file_sha256
from train.fitting.members import collect, member_dir

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2 ** 20
RUN_JSON = "run.json"
ARRAYS = "run_arrays.safetensors"
PACK_GLOB = "members_*.safetensors"


def member_name(kind: str, fold: int) -> str:
    return f"{kind}_fold{fold}"


def pack_name(index: int) -> str:
    return f"members_{index}.safetensors"


def pack_index(name: str) -> int:
    return int(name.removeprefix("members_").removesuffix(".safetensors"))


def _write(path: Path, data: bytes | str) -> None:
    """Atomically: a run stopped at any moment leaves each file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    tmp.replace(path)


def _load_arrays(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        return {}, {}
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


class RunFiles:
    """One run folder as train.fitting.gpu_cv writes it, loaded; add_member writes a member."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.run = json.loads((self.out / RUN_JSON).read_text()) if (self.out / RUN_JSON).is_file() else {}
        self.arrays, self.arrays_meta = _load_arrays(self.out / ARRAYS)

    @property
    def members(self) -> dict:
        return self.run.setdefault("members", {})

    def save_run(self) -> None:
        _write(self.out / RUN_JSON, json.dumps(self.run, indent=1))

    def save_arrays(self) -> None:
        _write(self.out / ARRAYS, save({k: v.contiguous() for k, v in self.arrays.items()}, self.arrays_meta))

    # ------------------------------------------------------------------ packing

    def _last_pack(self) -> int | None:
        """The highest pack index run.json names or the folder holds."""
        found = [pack_index(m["pack"]) for m in self.members.values()]
        found += [pack_index(p.name) for p in self.out.glob(PACK_GLOB)]
        return max(found) if found else None

    def place(self, name: str, state: dict[str, torch.Tensor]) -> str:
        """Writes the member's tensors into the last pack when they fit beside what it holds (any
        earlier copy of this member replaced), else into a new one; returns the pack's name."""
        tensors = {f"{name}/{k}": v.contiguous() for k, v in state.items()}
        own = save(tensors)
        if len(own) > MAX_FILE_BYTES:
            raise ValueError(f"{name} takes {len(own) / 2 ** 20:.1f} MiB, over the {MAX_FILE_BYTES // 2 ** 20} MiB "
                             "a returned file may hold")
        last = self._last_pack()
        if last is not None and (self.out / pack_name(last)).is_file():
            held = {k: v for k, v in load_file(self.out / pack_name(last)).items()
                    if not k.startswith(name + "/")}
            joined = save({**held, **tensors})
            if len(joined) <= MAX_FILE_BYTES:
                _write(self.out / pack_name(last), joined)
                return pack_name(last)
        index = 0 if last is None else last + 1
        _write(self.out / pack_name(index), own)
        return pack_name(index)

    def files_needed(self, member_bytes: list[int]) -> int:
        """How many files this folder will return once members of these sizes are added after what
        it holds (the same greedy packing as place, from each member's own file size)."""
        packs = sorted(self.out.glob(PACK_GLOB), key=lambda p: pack_index(p.name))
        count, room = len(packs), (MAX_FILE_BYTES - packs[-1].stat().st_size) if packs else -1
        for b in member_bytes:
            if b <= room:
                room -= b
            else:
                count, room = count + 1, MAX_FILE_BYTES - b
        return count + 2   # run_arrays and run.json

    def add_member(self, name: str, state: dict[str, torch.Tensor], arrays: dict[str, torch.Tensor],
                   record: dict) -> None:
        """The member's tensors into a pack, its arrays into run_arrays, then its record into
        run.json: the member is done only once all three are written."""
        pack = self.place(name, state)
        self.arrays.update({f"{name}.{k}": v.clone() for k, v in arrays.items()})
        self.save_arrays()
        self.members[name] = {**record, "pack": pack}
        self.save_run()


# ----------------------------------------------------------------------------- reading and unpacking

def read_parts(parts: list[Path]) -> tuple[dict, dict[str, torch.Tensor], dict[str, str], dict[str, Path]]:
    """The run as its parts' folders hold it: run.json (the part naming the most members, with every
    part's member records), the arrays, the image ids and where each pack file lies."""
    missing = [str(Path(p) / RUN_JSON) for p in parts if not (Path(p) / RUN_JSON).is_file()]
    if missing:
        raise FileNotFoundError(f"no run of train.fitting.gpu_cv here: {', '.join(missing)} not found")
    runs = [RunFiles(p) for p in parts]
    base = max(runs, key=lambda r: len(r.members))
    run = json.loads(json.dumps(base.run))
    arrays, meta = {}, {}
    for r in runs:
        run["members"].update(r.members)
        arrays.update(r.arrays)
        meta.update(r.arrays_meta)
    packs = {p.name: p for r in runs for p in r.out.glob(PACK_GLOB)}
    return run, arrays, meta, packs


def unpack(parts: list[Path], to: Path) -> dict:
    """Writes train.fitting.cv's run folder for the finished run in parts; returns its cv.json.
    ValueError when a member is missing or the folds file here is not the run's."""
    run, arrays, meta, packs = read_parts(parts)
    kinds, n_folds = run["kinds"], run["n_folds"]
    names = [member_name(k, f) for f in range(n_folds) for k in kinds]
    absent = [n for n in names if n not in run["members"]]
    if absent:
        raise ValueError(f"the run is not finished: {len(absent)} of {len(names)} members missing "
                         f"({', '.join(absent)}); run the same train.fitting.gpu_cv command again")
    lost = sorted({run["members"][n]["pack"] for n in names} - packs.keys())
    if lost:
        raise ValueError(f"{', '.join(lost)} not found in {', '.join(map(str, parts))}: pass every part's folder")
    folds_here = repo_path(run["data"]["folds_file"])
    if folds_here.is_file() and file_sha256(folds_here) != run["data"]["folds_sha256"]:
        raise ValueError(f"{folds_here} is not the folds file the run trained on (sha256 differs)")

    to = Path(to)
    stale = sorted(p.name for p in to.glob("*_fold*") if p.is_dir() and p.name not in names)
    if stale:
        raise ValueError(f"{to} holds members of another run ({', '.join(stale)}): unpack into a new folder")
    to.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in sorted({run["members"][n]["pack"] for n in names}):
        tensors.update(load_file(packs[name]))
    for n in names:
        rec = run["members"][n]
        d = member_dir(to, rec["kind"], rec["fold"])
        d.mkdir(parents=True, exist_ok=True)
        save_file({k.removeprefix(n + "/"): v for k, v in tensors.items() if k.startswith(n + "/")},
                  d / "member.safetensors")
        if file_sha256(d / "member.safetensors") != rec["sha256"]:
            raise ValueError(f"{n} in {packs[rec['pack']]} is not the member the run recorded (sha256 differs)")
        np.savez(d / "logits.npz", **{k: arrays[f"{n}.{k}"].numpy() for k in
                                      ("oof_rows", "oof", "heldout_rows", "heldout")})
        (d / "member.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "pack"}, indent=1))
    for f in range(n_folds):
        if f"rank_fold{f}" in arrays:
            np.save(to / f"rank_fold{f}.npy", arrays[f"rank_fold{f}"].numpy())
    times = run["wall_time_seconds"]
    (to / "times.json").write_text(json.dumps(times, indent=1))

    df = pd.DataFrame({"image_id": json.loads(meta["image_ids"]), "fold": arrays["image_fold"].numpy()})
    summary = collect(to, df, arrays["label"].numpy(), kinds, n_folds)
    summary.update({"command": run["command"], "recipe": run["recipe"], "split_block": run["split_block"],
                    "arch": run.get("arch", ARCH),
                    "folds_file": run["data"]["folds_file"],
                    "age_scaler": run["age_scaler"], "device": run["device"], "wall_time_seconds": times,
                    "total_seconds_this_invocation": run["total_seconds"], "trained_by": "train.fitting.gpu_cv",
                    "views": run["views"], "augment": run["augment"], "precision": run["precision"],
                    "input_spec": run.get("input", {}), "view_kind": run.get("view_kind", "flips"),
                    **({"second_source": run["data"]["second_source"]} if "second_source" in run["data"] else {}),
                    **({"carry_views": {"augment": run["augment"], "carry": run["carry"]}} if "carry" in run else {}),
                    "invocations": run["invocations"], "unpacked_from": [str(p) for p in parts]})
    (to / "cv.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", type=Path, nargs="+", help="the folder(s) a train.fitting.gpu_cv run returned")
    p.add_argument("--to", type=Path, required=True, help="the train.fitting.cv run folder to write")
    a = p.parse_args(argv)
    try:
        summary = unpack(a.parts, a.to)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    for kind, s in summary["out_of_fold"].items():
        print(f"{kind}: out-of-fold balanced accuracy {s['balanced_accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  "
              f"AUC {s['macro_auc']:.4f}  ECE {s['ece_before_temperature']:.4f} -> {s['ece']:.4f}")
    print(f"wrote {a.to}: python -m train.release.bundle --cv {a.to} works on it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
