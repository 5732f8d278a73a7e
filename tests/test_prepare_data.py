"""`train.prepare_data` on a fake official download made from the example images."""
import numpy as np
import pandas as pd
from PIL import Image

from conftest import run_module
from lesion_app.data import load_mask, load_metadata


def make_official_download(example_folder, dst):
    md = pd.read_csv(example_folder / "metadata.csv")
    for k, image_id in enumerate(md["image_id"]):
        part = dst / f"HAM10000_images_part_{1 + k % 2}"
        part.mkdir(parents=True, exist_ok=True)
        with Image.open(example_folder / "images" / f"{image_id}.jpg") as im:
            im.resize((600, 450)).save(part / f"{image_id}.jpg")
        if k < 3:
            masks = dst / "HAM10000_segmentations_lesion_tschandl"
            masks.mkdir(exist_ok=True)
            m = np.zeros((450, 600), np.uint8)
            m[100:350, 150:450] = 255
            Image.fromarray(m).save(masks / f"{image_id}_segmentation.png")
    md.to_csv(dst / "HAM10000_metadata.csv", index=False)
    return md


def test_official_download_becomes_the_layout(example_folder, tmp_path):
    src, out = tmp_path / "download", tmp_path / "ham"
    md = make_official_download(example_folder, src)
    r = run_module("train.prepare_data", "--src", src, "--out", out)
    assert r.returncode == 0, r.stderr
    df = load_metadata(out)
    assert list(df["image_id"]) == list(md["image_id"])
    with Image.open(out / "images" / f"{md.image_id[0]}.jpg") as im:
        assert im.size == (200, 150)
    mask = load_mask(out, md.image_id[0])
    assert mask.shape == (150, 200) and abs(mask.mean() - 250 * 300 / (450 * 600)) < 0.01
    assert load_mask(out, md.image_id[5]) is None


def test_missing_download_gives_a_clear_error(tmp_path):
    r = run_module("train.prepare_data", "--src", tmp_path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "HAM10000_metadata.csv not found" in r.stderr
    assert "Traceback" not in r.stderr
