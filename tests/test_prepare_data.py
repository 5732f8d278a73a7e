"""`train.data.prepare_data` on a fake official download made from the example images."""
import numpy as np
import pandas as pd
from PIL import Image

from conftest import run_module
from train.data.dataset import load_mask, load_metadata


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
    r = run_module("train.data.prepare_data", "--src", src, "--out", out)
    assert r.returncode == 0, r.stderr
    df = load_metadata(out)
    assert list(df["image_id"]) == list(md["image_id"])
    with Image.open(out / "images" / f"{md.image_id[0]}.jpg") as im:
        assert im.size == (200, 150)
    mask = load_mask(out, md.image_id[0])
    assert mask.shape == (150, 200) and abs(mask.mean() - 250 * 300 / (450 * 600)) < 0.01
    assert load_mask(out, md.image_id[5]) is None


def test_missing_download_gives_a_clear_error(tmp_path):
    r = run_module("train.data.prepare_data", "--src", tmp_path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "HAM10000_metadata.csv not found" in r.stderr
    assert "Traceback" not in r.stderr


def make_isic2019_download(example_folder, dst):
    """A fake ISIC 2019 download: the 7 examples (some enlarged, one square), one SCC and one
    unlabelled image, blank lesion ids and sites, ISIC 2019's coarser site names."""
    md = pd.read_csv(example_folder / "metadata.csv")
    images = dst / "ISIC_2019_Training_Input" / "ISIC_2019_Training_Input"
    images.mkdir(parents=True)
    ids = list(md["image_id"]) + ["ISIC_9000001", "ISIC_9000002"]
    for k, image_id in enumerate(ids):
        with Image.open(example_folder / "images" / f"{md.image_id[k % len(md)]}.jpg") as im:
            size = (1024, 1024) if k == 0 else (600, 450) if k % 2 else (200, 150)
            im.resize(size).save(images / f"{image_id}.jpg")
    truth = pd.DataFrame(0.0, index=range(len(ids)),
                         columns=["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"])
    code = {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC"}
    for k, dx in enumerate(md["dx"]):
        truth.loc[k, code[dx]] = 1.0
    truth.loc[len(md), "SCC"] = 1.0          # ISIC_9000001: SCC; ISIC_9000002: no label at all
    truth.insert(0, "image", ids)
    truth.to_csv(dst / "ISIC_2019_Training_GroundTruth.csv", index=False)
    sites = ["head/neck", "posterior torso", "lower extremity", "", "anterior torso", "palms/soles",
             "oral/genital", "upper extremity", "lateral torso"]
    meta = pd.DataFrame({"image": ids, "age_approx": [65, 65, "", 35, 55, 20, 55, 70, 40],
                         "anatom_site_general": sites, "sex": ["male", "male", "female", "", "male", "female",
                                                               "male", "male", "female"],
                         "lesion_id": ["BCN_0000001", "", "HAM_0006732", "", "BCN_0000002", "", "", "", ""]})
    meta.to_csv(dst / "ISIC_2019_Training_Metadata.csv", index=False)
    return md


def test_isic2019_download_becomes_the_layout(example_folder, tmp_path):
    src, out = tmp_path / "isic2019", tmp_path / "layout"
    md = make_isic2019_download(example_folder, src)
    r = run_module("train.data.prepare_data", "--data-format", "isic2019", "--src", src, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "dropped 1 SCC and 1 unlabelled" in r.stdout
    df = load_metadata(out).set_index("image_id")
    assert list(df.index) == list(md["image_id"])                    # SCC and unlabelled left out
    assert (df["dx"] == md.set_index("image_id")["dx"]).all()         # AK -> akiec and the rest
    ids = list(md["image_id"])
    assert df.loc[ids[0], "lesion_id"] == "BCN_0000001" and df.loc[ids[2], "lesion_id"] == "HAM_0006732"
    assert df.loc[ids[1], "lesion_id"] == ids[1]                      # no lesion_id: the image id
    assert list(df.loc[ids, "localization"]) == ["unknown", "back", "lower extremity", "unknown", "trunk",
                                                 "acral", "genital"]
    assert df.loc[ids[3], "sex"] == "unknown" and pd.isna(df.loc[ids[2], "age"])
    with Image.open(out / "images" / f"{ids[0]}.jpg") as im:
        assert im.size == (200, 200)                                  # square: covers 200x150, aspect kept
    with Image.open(out / "images" / f"{ids[1]}.jpg") as im:
        assert im.size == (200, 150)


def test_isic2019_scc_can_join_akiec(example_folder, tmp_path):
    src, out = tmp_path / "isic2019", tmp_path / "layout"
    make_isic2019_download(example_folder, src)
    r = run_module("train.data.prepare_data", "--data-format", "isic2019", "--scc", "akiec", "--src", src, "--out", out)
    assert r.returncode == 0, r.stderr
    assert load_metadata(out).set_index("image_id").loc["ISIC_9000001", "dx"] == "akiec"


def test_isic2019_missing_files_give_a_clear_error(tmp_path):
    r = run_module("train.data.prepare_data", "--data-format", "isic2019", "--src", tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 2 and "ISIC_2019_Training_GroundTruth.csv not found" in r.stderr
    assert "Traceback" not in r.stderr
