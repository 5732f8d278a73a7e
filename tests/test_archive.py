"""The similar-cases archive: what it holds, what a query returns, and that a damaged file refuses
to start. Real bundled weights and archive, no dataset needed."""
import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import DATA, EXAMPLES, needs_dataset
from lesion_app.evidence.archive import Archive, Projection, SimilarQuery, lesion_groups, lesion_similarity, vote
from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.vocab import CLASSES
from lesion_app.classifier.weights import WEIGHTS_DIR, WeightsError, sha256_file
from train.data.dataset import load_image
from train.data.splits import read_heldout
from train.evaluation.retrieval import ranking_scores


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def query_of(predictor, image, **kw):
    return predictor.analyze(image, **kw).similar_cases


def test_the_archive_is_the_training_images_grouped_by_lesion_within_budget(predictor):
    a, entry = predictor.archive, predictor.manifest.archive
    assert a is not None and entry["file"] in {e["file"] for e in predictor.manifest.file_entries()}
    assert (WEIGHTS_DIR / entry["file"]).stat().st_size <= 16 * 2**20 and entry["n_images"] == len(a)
    held = set(read_heldout(predictor.manifest.heldout_path)["lesion_id"])
    assert not held & set(a.table["lesion_id"]), "a held-out lesion is in the archive"
    examples = pd.read_csv(EXAMPLES / "metadata.csv")
    assert not set(examples["lesion_id"]) & set(a.table["lesion_id"])
    assert set(a.table["dx"]) == set(CLASSES) and a.n_lesions == len(set(a.table["lesion_id"]))
    thumb = Image.open(io.BytesIO(a.thumbnails[0]))
    assert thumb.format == "WEBP" and thumb.size[0] >= 120


def several_image_lesions(a, n=12):
    """Rows of the first image of n archive lesions that have at least two images."""
    return a.starts[np.diff(np.r_[a.starts, len(a)]) >= 2][:n]


@needs_dataset
def test_an_archive_image_with_its_own_lesion_removed_never_returns_that_lesion(predictor):
    """The image itself, through the whole analysis path: it finds itself first, and with its
    lesion excluded neither it nor its sibling images come back."""
    a = predictor.archive
    for row in several_image_lesions(a):
        lesion = a.table["lesion_id"][row]
        image = load_image(DATA, a.table["image_id"][row])
        x = predictor.image_tensor(image)[None]
        low = predictor.trunk_features(x)
        raw = predictor.embedding(predictor.frozen_features(x), predictor.pooled_features(x, low), 1)   # as analyze
        kept = a.similar(raw, SimilarQuery(16))
        assert kept.cases[0].image_id == a.table["image_id"][row] and kept.cases[0].similarity > 0.999
        removed = a.similar(raw, SimilarQuery(16), exclude_lesions=[lesion])
        assert lesion not in {c.lesion_id for c in removed.cases} and len(removed.cases) == 16


def test_an_archive_vector_with_its_own_lesion_disallowed_never_returns_that_lesion(predictor):
    """The same on a fresh clone, from the archive's stored vectors (no dataset needed)."""
    a = predictor.archive
    rows = several_image_lesions(a)
    lesions = np.array(a.table["lesion_id"])
    found, _ = a.search(a.vectors[rows], 16)
    assert (lesions[found[:, 0]] == lesions[rows]).all()        # each finds its own lesion first
    allowed = lesions[None, :] != lesions[rows][:, None]
    found, _ = a.search(a.vectors[rows], 16, allowed=allowed)
    assert (found >= 0).all() and not (lesions[found] == lesions[rows][:, None]).any()
    assert all(len(set(lesions[f])) == 16 for f in found)


def test_the_gallery_examples_never_return_their_own_lesion_and_each_lesion_once(predictor):
    md = pd.read_csv(EXAMPLES / "metadata.csv")
    for r in md.itertuples():
        with Image.open(EXAMPLES / "images" / f"{r.image_id}.jpg") as im:
            s = query_of(predictor, im.convert("RGB"), age=r.age, sex=r.sex, site=r.localization)
        lesions = [c.lesion_id for c in s.cases]
        assert len(lesions) == 8 and len(set(lesions)) == 8 and r.lesion_id not in lesions
        sims = [c.similarity for c in s.cases]
        assert sims == sorted(sims, reverse=True) and -1 <= sims[-1] <= sims[0] <= 1
        assert abs(sum(s.vote.values()) - 1) < 1e-9 and set(s.vote) == set(CLASSES)
        counted = {c: sum(x.dx == c for x in s.cases) for c in CLASSES}
        assert all((s.vote[c] > 0) == (counted[c] > 0) for c in CLASSES)


def test_filters_keep_only_cases_sharing_the_entered_site_and_sex_and_say_when_they_cannot(predictor):
    with Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg") as im:
        image = im.convert("RGB")
    a = predictor.analyze(image, 50, "female", "back", similar=SimilarQuery(16, same_site=True, same_sex=True))
    s = a.similar_cases
    assert len(s.cases) == 16 and all(c.site == "back" and c.sex == "female" for c in s.cases)
    assert s.filters == {"site": "back", "sex": "female"}
    unentered = predictor.analyze(image, similar=SimilarQuery(4, same_site=True)).similar_cases
    assert len(unentered.cases) == 4 and "no site was entered" in unentered.note and unentered.filters["site"] is None
    # A metadata change re-queries with the new site (the live what-if keeps the panel right).
    moved = predictor.with_metadata(a, 50, "female", "face", similar=SimilarQuery(8, same_site=True))
    assert all(c.site == "face" for c in moved.similar_cases.cases)
    with pytest.raises(ValueError, match="k must be one of"):
        SimilarQuery(5)


def test_a_corrupted_archive_refuses_to_start_naming_the_file(tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    path = weights / "archive.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="archive.safetensors is corrupted"):
        Predictor(weights)
    path.unlink()
    with pytest.raises(WeightsError, match="archive.safetensors is missing"):
        Predictor(weights)


def test_an_archive_that_the_manifest_describes_differently_refuses_to_start(tmp_path):
    from lesion_app.classifier.manifest import Manifest
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    m = Manifest.load(weights)
    m.with_archive({**m.archive, "dims": m.archive["dims"] + 1}).save(weights)
    with pytest.raises(WeightsError, match="archive.safetensors holds"):
        Predictor(weights)
    # Not an archive at all, with a matching checksum: named too, no traceback of safetensors'.
    (weights / "archive.safetensors").write_bytes(b"not an archive")
    m.with_archive({**m.archive, "sha256": sha256_file(weights / "archive.safetensors")}).save(weights)
    with pytest.raises(WeightsError, match="archive.safetensors is not a readable similar-cases archive"):
        Predictor(weights)


def test_search_returns_each_lesion_once_by_its_best_image_and_honours_allowed():
    lesions = np.array(["a", "a", "b", "c", "c", "c"])
    vecs = torch.nn.functional.normalize(torch.tensor([[1, 0], [0.9, 0.1], [0, 1], [0.7, 0.7], [-1, 0], [0.6, 0.8]]),
                                         dim=1)
    table = {"image_id": [f"i{k}" for k in range(6)], "lesion_id": list(lesions), "dx": ["nv", "nv", "mel", "bkl", "bkl", "bkl"],
             "age": [None] * 6, "sex": ["male"] * 6, "site": ["back"] * 6}
    a = Archive("fusion", Projection(torch.zeros(2), torch.eye(2)), vecs, table, [b""] * 6)
    rows, sims = a.search(torch.tensor([[1.0, 0.0]]), 3)
    assert list(rows[0]) == [0, 3, 2] and sims[0, 0] == pytest.approx(1.0)
    rows, _ = a.search(torch.tensor([[1.0, 0.0]]), 3, allowed=np.array([False, True, True, True, True, True]))
    assert list(rows[0]) == [1, 3, 2]
    with pytest.raises(ValueError, match="grouped by lesion"):
        Archive("fusion", a.projection, vecs, {**table, "lesion_id": ["a", "b", "a", "c", "c", "c"]}, [b""] * 6)


def test_the_class_weighted_vote_divides_by_the_archive_share():
    prior = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.4, 0.1])
    codes = np.array([[5, 5, 5, 5, 4, 4, 4, 4]])      # 4 nevi, 4 melanomas
    assert vote(codes, prior, "plain")[0][[4, 5]] == pytest.approx([0.5, 0.5])
    cw = vote(codes, prior, "class_weighted")[0]
    assert cw[4] == pytest.approx(0.8) and cw[5] == pytest.approx(0.2) and cw.sum() == pytest.approx(1)


def test_average_precision_and_precision_at_k_of_a_known_ranking():
    # One query of class 0; lesions ranked 0,1,2,3 with classes 0,1,0,1 -> AP = (1/1 + 2/3) / 2.
    by_lesion = np.array([[0.9, 0.8, 0.7, 0.6]])
    s = ranking_scores(by_lesion, np.array([0]), np.array([0, 1, 0, 1]), np.full(7, 1 / 7))
    assert s["ap"][0] == pytest.approx((1 + 2 / 3) / 2) and s["p@1"][0] == 1.0
    order, starts = lesion_groups(["b", "a", "b"])
    assert list(order) == [1, 0, 2] and list(starts) == [0, 1]
    assert lesion_similarity(np.array([[0.1, 0.5, 0.3]]), starts).tolist() == [[0.1, 0.5]]


def test_an_upload_never_joins_the_archive(predictor):
    before = (len(predictor.archive), sha256_file(WEIGHTS_DIR / "archive.safetensors"))
    with Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg") as im:
        first = predictor.analyze(im.convert("RGB")).similar_cases
        again = predictor.analyze(im.convert("RGB")).similar_cases
    assert (len(predictor.archive), sha256_file(WEIGHTS_DIR / "archive.safetensors")) == before
    # Analysing it twice finds the same cases: the first upload was not added to be found again.
    assert [c.image_id for c in first.cases] == [c.image_id for c in again.cases]
    assert "ISIC_0024394" not in predictor.archive.table["image_id"]
