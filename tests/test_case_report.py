"""The one-page PDF case report, made from real analyses with the shipped weights and read back
with pypdf; and the life of its file (written, served once, gone)."""
import asyncio
import io
import shutil
from datetime import datetime, timezone

import pandas as pd
import pytest
from PIL import Image
from pypdf import PdfReader

from conftest import EXAMPLES
from lesion_app.page.case_report import DISCLAIMER, case_report_pdf
from lesion_app.evidence.clinical_report import ClinicalReport
from lesion_app.page.events import NothingToReport, PageEvents
from lesion_app.page.session import SessionState
from lesion_app.analysis.predictor import Predictor
from lesion_app.files.image_input import load_upload
from lesion_app.files.report_files import ReportFiles, ServeOnce
from lesion_app.classifier.vocab import CLASSES, class_label

A4_POINTS = (595, 842)


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def clinical(predictor):
    return ClinicalReport.load(predictor.model_info)


def text_of(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))   # read from memory: no patient's report left on disk
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == A4_POINTS
    return " ".join(reader.pages[0].extract_text().split())


def test_the_pdf_holds_every_class_the_metadata_as_entered_the_version_and_the_disclaimer(
        predictor, clinical):
    case = pd.read_csv(EXAMPLES / "metadata.csv").iloc[2]
    image = Image.open(EXAMPLES / "images" / f"{case.image_id}.jpg")
    a = predictor.analyze(image, float(case.age), case.sex, case.localization)
    when = datetime(2026, 12, 3, 14, 5, tzinfo=timezone.utc)
    text = text_of(case_report_pdf(a, clinical, "95", "0.95", when))
    for c in CLASSES:
        assert class_label(c) in text
    assert f"Age: {case.age:g} years" in text and f"Sex: {case.sex}" in text and f"Body site: {case.localization}" in text
    assert f"Top class: fusion {class_label(a.fusion.top)}, image-only {class_label(a.image_only.top)}" in text
    assert f"Fusion: {a.fusion.cam_method} for {class_label(a.fusion.cam_class)}" in text
    assert "95% prediction sets" in text and "2026-12-03 14:05 UTC" in text
    info = predictor.model_info
    assert f"Model version {info['version']}" in text
    for hashes in info["sha256"].values():
        for h in hashes:
            assert h[:12] in text
    assert " ".join(DISCLAIMER.split()) in text
    assert "Similar confirmed cases" in text and f"k = {a.similar_cases.k}" in text
    assert "CC BY-NC 4.0" in text


def test_blank_metadata_reads_not_entered(predictor, clinical):
    image = Image.open(next((EXAMPLES / "images").glob("*.jpg")))
    text = text_of(case_report_pdf(predictor.analyze(image, None, "unknown", "unknown"), clinical))
    assert "Age: not entered Sex: not entered Body site: not entered" in text


def test_the_button_before_an_analysis_says_what_to_do(predictor):
    with pytest.raises(NothingToReport, match="Analyze an image first"):
        PageEvents(predictor, None).case_report(SessionState(), None, None)


def test_a_report_file_is_removed_once_its_body_is_sent_and_only_then(tmp_path):
    files = ReportFiles(tmp_path)
    path = files.write(b"%PDF-1.4 test", session="s1")
    assert path.parent.parent == files.root and files.held() == [path]

    async def serve(method, url_path, status=200):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"%PDF", "more_body": True})
            assert path.exists()  # never before the last byte
            await send({"type": "http.response.body", "body": b"-1.4 test", "more_body": False})

        async def send(message):
            pass
        await ServeOnce(app, files)({"type": "http", "method": method, "path": url_path}, None, send)

    url = f"/gradio_api/file={path}"
    asyncio.run(serve("HEAD", url))
    asyncio.run(serve("GET", url, status=404))
    asyncio.run(serve("GET", f"/gradio_api/file={tmp_path / 'other.pdf'}"))
    assert files.held() == [path]
    asyncio.run(serve("GET", url))
    assert files.held() == [] and not path.parent.exists()


def test_ending_a_session_removes_its_reports_only(tmp_path):
    files = ReportFiles(tmp_path)
    mine, theirs = files.write(b"%PDF a", session="mine"), files.write(b"%PDF b", session="theirs")
    files.end_session("mine")
    assert files.held() == [theirs] and not mine.exists()
    assert not files.owns(tmp_path / "elsewhere.pdf") and not files.owns(shutil.__file__)
    files.end_session("theirs")
    assert files.held() == []


def test_a_lesion_of_several_images_says_so(predictor, clinical):
    image = Image.open(next((EXAMPLES / "images").glob("*.jpg"))).convert("RGB")
    a = predictor.analyze([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], 40, "female", "back")
    text = text_of(case_report_pdf(a, clinical))
    assert "Images of this lesion: 2; the models combined them" in text and "From 2 images of this lesion" in text


def test_a_close_call_shows_why_the_first_class_rather_than_the_second(predictor, clinical):
    """ISIC_0024394's fusion top two are within 20 points: the PDF adds the contrastive map, named;
    a clear case does not."""
    from lesion_app.page.case_report import close_call
    a = predictor.analyze(load_upload(EXAMPLES / "images" / "ISIC_0024394.jpg"))
    assert close_call(a)
    contrast = predictor.contrast_map(a)
    first, second = sorted(a.fusion.probabilities, key=a.fusion.probabilities.get, reverse=True)[:2]
    assert contrast is not None and contrast[1:] == (first, second)
    text = text_of(case_report_pdf(a, clinical, contrast=contrast))
    assert f"Why {class_label(first)} rather than {class_label(second)}?" in text
    clear = next(b for f in sorted((EXAMPLES / "images").glob("*.jpg"))
                 if not close_call(b := predictor.analyze(load_upload(f))))
    assert "rather than" not in text_of(case_report_pdf(clear, clinical, contrast=predictor.contrast_map(clear)))
