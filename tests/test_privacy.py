"""Uploads never outlive the app: the real `python app.py`, started as a host would (no
GRADIO_TEMP_DIR), real HTTP uploads to Gradio's upload route, real signals."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from conftest import EXAMPLES, AppServer
from inputs import example_image
from lesion_app.files.upload_dir import OWNER_FILE, identity, remove_stale


def patient_bytes() -> bytes:
    """A PNG that is not one of the bundled examples (their copies are kept on purpose)."""
    buf = io.BytesIO()
    example_image().transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(buf, format="PNG")
    return buf.getvalue()


def upload(url: str, data: bytes, name: str = "patient.png") -> str:
    """POSTs data to /gradio_api/upload (multipart field `files`), as the browser does; returns its path."""
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        [path] = json.loads(r.read())
    return path


def files_holding(root: Path, data: bytes) -> list[Path]:
    """Every file under root whose content contains data (compared by content, not by name)."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            p = Path(folder, name)
            try:
                if not p.is_symlink() and data in p.read_bytes():
                    found.append(p)
            except OSError:
                continue
    return found


def patient_and_app(tmp_path: Path) -> tuple[Path, Path, AppServer]:
    """The client's patient image, and the app started in the host's temp folder (host) with a
    long upload lifetime, so that only what is tested can remove a file there."""
    image = tmp_path / "client" / "patient.png"
    image.parent.mkdir()
    image.write_bytes(patient_bytes())
    host = tmp_path / "host"
    host.mkdir()
    return image, host, AppServer({"LESION_UPLOAD_TTL_S": "600"}, tmpdir=host)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_folder(parent: Path, name: str, owner: dict | None) -> Path:
    d = parent / name
    d.mkdir()
    (d / "patient.png").write_bytes(b"an earlier patient's image")
    if owner is not None:
        (d / OWNER_FILE).write_text(json.dumps(owner))
    return d


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_unanalysed_upload_leaves_no_copy_once_the_app_is_stopped(tmp_path, sig):
    data = patient_bytes()
    # A long lifetime, so that it is the signal, not the sweeper, that must remove the upload.
    app = AppServer({"LESION_UPLOAD_TTL_S": "600"}, tmpdir=tmp_path)
    try:
        path = Path(upload(app.url, data))
        assert path.is_relative_to(tmp_path) and path.parent.parent.name.startswith("lesion-app-")
        assert files_holding(tmp_path, data) == [path]  # the check below can see a copy
    finally:
        code = app.stop(sig)
    assert files_holding(tmp_path, data) == []
    assert list(tmp_path.glob("lesion-app-*")) == []
    assert code == 0, app.output[-2000:]  # a clean stop, not killed by the signal


@pytest.fixture(scope="module")
def swept_app(tmp_path_factory):
    """The app with a 3 s upload lifetime, started next to folders of earlier (fake) instances."""
    tmp = tmp_path_factory.mktemp("host_tmp")
    live = identity()  # this test process: alive
    folders = {
        "dead": fake_folder(tmp, "lesion-app-dead0001", {**identity(), "pid": dead_pid()}),
        "live": fake_folder(tmp, "lesion-app-live0001", live),
        "no_owner_file": fake_folder(tmp, "lesion-app-other001", None),
        "not_ours": fake_folder(tmp, "someone-else-dead01", {**identity(), "pid": dead_pid()}),
    }
    app = AppServer({"LESION_UPLOAD_TTL_S": "3"}, tmpdir=tmp)
    yield app, folders
    app.stop()


def test_startup_removes_only_stale_folders_of_this_app(swept_app):
    _, folders = swept_app
    assert not folders["dead"].exists()
    for kept in ("live", "no_owner_file", "not_ours"):
        assert (folders[kept] / "patient.png").is_file(), kept


def test_an_unanalysed_upload_is_deleted_after_its_lifetime_and_examples_stay(swept_app):
    app, _ = swept_app
    data = patient_bytes()
    t0 = time.time()
    path = Path(upload(app.url, data))
    while path.exists() and time.time() - t0 < 30:
        time.sleep(0.2)
    gone_after = time.time() - t0
    assert not path.exists() and files_holding(app.temp_dir, data) == []
    assert gone_after >= 3 - 0.5, f"deleted after {gone_after:.1f} s, before its 3 s lifetime"
    assert gone_after < 3 + 0.5 + 10, f"still there {gone_after:.1f} s after upload (lifetime 3 s)"
    # Example clicks read the cached copies Gradio serves from the upload folder: still there.
    with urllib.request.urlopen(app.url + "config", timeout=30) as r:
        config = json.loads(r.read())
    samples = next(c["props"]["samples"] for c in config["components"] if c.get("type") == "dataset")
    originals = {p.name: p.read_bytes() for p in (EXAMPLES / "images").glob("*.jpg")}
    assert len(samples) == len(originals)
    for row in samples:
        with urllib.request.urlopen(row[0]["url"], timeout=30) as r:
            assert r.read() == originals[Path(row[0]["path"]).name]


def test_remove_stale_checks_the_process_start_time_not_just_the_pid(tmp_path):
    me = identity()
    assert me["start"] is not None, "needs /proc (Linux)"
    reused = fake_folder(tmp_path, "lesion-app-reused01", {**me, "start": me["start"] - 1})
    mine = fake_folder(tmp_path, "lesion-app-mine0001", me)
    garbled = fake_folder(tmp_path, "lesion-app-garbled1", None)
    (garbled / OWNER_FILE).write_text("{not json")
    group = fake_folder(tmp_path, "lesion-app-group001", {**me, "pid": 0})  # pid 0: a process group
    # Another container sharing this folder: its pids are not ours to check.
    elsewhere = fake_folder(tmp_path, "lesion-app-other-ns", {**me, "pid": dead_pid(), "pidns": "pid:[1]"})
    assert remove_stale(tmp_path) == [reused]
    assert mine.is_dir() and garbled.is_dir() and group.is_dir() and elsewhere.is_dir()


def case_report(app: AppServer, image: Path, download_to: Path | None):
    """/case_report for image through gradio_client; download_to None: the PDF is not fetched."""
    from gradio_client import Client, handle_file
    client = Client(app.url, verbose=False, download_files=str(download_to) if download_to else False)
    return client.predict(handle_file(str(image)), "61", "female", "back", api_name="/case_report")


def server_pdfs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.pdf") if "lesion-app-" in str(p))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_case_report_never_fetched_goes_with_the_app(tmp_path, sig):
    image, host, app = patient_and_app(tmp_path)
    try:
        case_report(app, image, None)
        [pdf] = server_pdfs(host)
        assert pdf.read_bytes().startswith(b"%PDF") and "case-reports" in pdf.parts
        assert files_holding(host, image.read_bytes()) == []  # the upload went once read
    finally:
        code = app.stop(sig)
    assert server_pdfs(host) == [] and list(host.glob("lesion-app-*")) == []
    assert code == 0, app.output[-2000:]


def test_a_case_report_is_removed_once_served(tmp_path):
    image = tmp_path / "patient.png"
    image.write_bytes(patient_bytes())
    host, downloads = tmp_path / "host", tmp_path / "downloads"
    host.mkdir()
    app = AppServer({"LESION_UPLOAD_TTL_S": "600"}, tmpdir=host)
    try:
        path = Path(case_report(app, image, downloads))
        assert path.is_relative_to(downloads) and path.read_bytes().startswith(b"%PDF")
        path.unlink()   # the client's copy, once checked
        assert server_pdfs(host) == []  # within the long upload lifetime: the serving removed it
    finally:
        app.stop()


def test_a_case_report_never_fetched_is_deleted_after_the_upload_lifetime(swept_app, tmp_path):
    app, _ = swept_app
    image = tmp_path / "patient.png"
    image.write_bytes(patient_bytes())
    t0 = time.time()
    case_report(app, image, None)
    assert len(server_pdfs(app.temp_dir)) == 1
    while server_pdfs(app.temp_dir) and time.time() - t0 < 30:
        time.sleep(0.2)
    assert server_pdfs(app.temp_dir) == [], f"still there {time.time() - t0:.1f} s later (lifetime 3 s)"


def test_the_same_image_given_twice_leaves_nothing_after_sigterm(tmp_path):
    """One file as the main image and again as a further image (stored once by Gradio): /report
    and /case_report answer, and after SIGTERM nothing of it, nor any PDF, is left."""
    from gradio_client import Client, handle_file
    image, host, app = patient_and_app(tmp_path)
    try:
        client = Client(app.url, verbose=False, download_files=False)
        args = (handle_file(str(image)), "61", "female", "back", None, None, None, [handle_file(str(image))])
        assert client.predict(*args, api_name="/report")["n_images"] == 1
        client.predict(*args, api_name="/case_report")
        assert len(server_pdfs(host)) == 1
        assert files_holding(host, image.read_bytes()) == []
    finally:
        code = app.stop(signal.SIGTERM)
    assert server_pdfs(host) == [] and list(host.glob("lesion-app-*")) == []
    assert files_holding(host, image.read_bytes()) == []
    assert code == 0, app.output[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_an_analysis_is_clean_and_leaves_nothing(tmp_path, sig):
    """Stopped while an analysis runs (a Space restarting under load): the app exits 0, not
    aborted by a thread still inside torch at shutdown, and leaves nothing of the patient."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status
    image, host, app = patient_and_app(tmp_path)
    code = None
    try:
        client = Client(app.url, verbose=False, download_files=False)
        args = (handle_file(str(image)), "61", "female", "back", None, None, None, None)
        jobs = [client.submit(*args, api_name="/report") for _ in range(3)]
        deadline = time.time() + 120
        while not any(j.status().code == Status.PROCESSING for j in jobs) and time.time() < deadline:
            time.sleep(0.02)
        assert any(j.status().code == Status.PROCESSING for j in jobs), "no analysis started"
        assert not all(j.done() for j in jobs)
        code = app.stop(sig)
    finally:
        if code is None:
            app.stop()
    assert code == 0, app.output[-2000:]
    assert "terminate called" not in app.output
    assert list(host.glob("lesion-app-*")) == []
    assert files_holding(host, image.read_bytes()) == []
