"""Weights from a Hugging Face model repo pinned by commit sha (LESION_APP_WEIGHTS=hf://ORG/NAME@SHA).

The Hub cache is made by huggingface_hub itself: a subprocess downloads the dry-run publish
folder from a stand-in Hub on 127.0.0.1 (HF_ENDPOINT), so `<HF_HUB_CACHE>/models--demo-org--
lesion-fusion/{refs,blobs,snapshots/<sha>}` is the library's own layout. Everything after that
runs with HF_HUB_OFFLINE=1 against that cache; nothing reaches the internet.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, AppServer
from lesion_app.classifier.hub import parse_hub_uri, resolve_weights
from lesion_app.classifier.manifest import Manifest
from lesion_app.classifier.weights import WeightsError

REPO_ID = "demo-org/lesion-fusion"
# Subprocesses import the repo first, and whatever the caller's PYTHONPATH holds (carried packages).
PYTHONPATH = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


class StandInHub:
    """Serves one folder as REPO_ID at one commit (and 'main' -> that commit), the way the Hub's
    /resolve/ endpoint answers hf_hub_download's HEAD and GET. Records every request."""

    def __init__(self, repo_id: str, folder: Path, commit: str):
        self.repo_id, self.folder, self.commit, self.requests = repo_id, Path(folder), commit, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.serve(body=False)

            def do_GET(self):
                self.serve(body=True)

            def serve(self, body):
                path = unquote(self.path.split("?")[0])
                hub.requests.append((time.time(), self.command, path))
                prefix = f"/{hub.repo_id}/resolve/"
                if not path.startswith(prefix):
                    return self.error(404, "RepoNotFound")
                revision, _, name = path[len(prefix):].partition("/")
                if revision not in (hub.commit, "main"):
                    return self.error(404, "RevisionNotFound")
                f = hub.folder / name
                if not f.is_file():
                    return self.error(404, "EntryNotFound")
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                if f.suffix == ".safetensors":   # LFS files: the Hub's etag is their sha256
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                git_blob = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
                self.send_header("ETag", f'"{git_blob}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, code, kind):
                self.send_response(code)
                self.send_header("X-Error-Code", kind)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# Run by a subprocess online against the stand-in Hub: `main` through the library (writes
# refs/main), then the app's own resolution of the pinned sha twice; MARK separates them.
POPULATE = """
import sys, time
from huggingface_hub import hf_hub_download
from lesion_app.classifier.hub import resolve_weights
hf_hub_download(sys.argv[1], "manifest.json", revision="main")
print(resolve_weights(f"hf://{sys.argv[1]}@{sys.argv[2]}"), flush=True)
print("MARK", time.time(), flush=True)
print(resolve_weights(f"hf://{sys.argv[1]}@{sys.argv[2]}"), flush=True)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The dry-run publish folder served by a stand-in Hub and downloaded into a fresh HF_HUB_CACHE."""
    from train.release.publish import build_folder
    base = tmp_path_factory.mktemp("hub")
    folder = base / "repo"
    build_folder(REPO_ID, folder)
    sha = hashlib.sha1((folder / "manifest.json").read_bytes()).hexdigest()
    stand_in = StandInHub(REPO_ID, folder, sha)
    cache = base / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": stand_in.url, "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(base / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": PYTHONPATH}
    env.pop("HF_TOKEN", None)
    try:
        r = subprocess.run([sys.executable, "-c", POPULATE, REPO_ID, sha], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    finally:
        stand_in.close()
    assert r.returncode == 0, r.stderr[-3000:]
    first, mark, second = r.stdout.split("\n")[:3]
    yield SimpleNamespace(sha=sha, cache=cache, folder=folder, stand_in=stand_in, first=first, second=second,
                          mark=float(mark.split()[1]), manifest=Manifest.load(folder), base=base)


def test_parse_accepts_only_a_model_repo_at_a_full_commit_sha():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert parse_hub_uri(f"hf://{REPO_ID}@{sha}") == parse_hub_uri(f" hf://{REPO_ID}@{sha.upper()} ")
    ref = parse_hub_uri(f"hf://{REPO_ID}@{sha}")
    assert (ref.repo_id, ref.revision, str(ref)) == (REPO_ID, sha, f"hf://{REPO_ID}@{sha}")
    refused = {f"hf://{REPO_ID}@main": "branch or tag name",
               f"hf://{REPO_ID}@v1.0": "branch or tag name",
               f"hf://{REPO_ID}@{sha[:7]}": "not a full commit sha (7 hex digits",
               f"hf://{REPO_ID}": "has no revision",
               f"hf://datasets/{REPO_ID}@{sha}": "dataset repo",
               f"hf://{REPO_ID}@{sha}/weights": "points inside the repo",
               f"hf://lesion-fusion@{sha}": "not a Hub address"}
    for uri, why in refused.items():
        with pytest.raises(WeightsError, match="LESION_APP_WEIGHTS=") as e:
            parse_hub_uri(uri)
        assert why in str(e.value), (uri, str(e.value))
    assert "Pin what you serve" in str(pytest.raises(WeightsError, parse_hub_uri, f"hf://{REPO_ID}@main").value)


def test_a_local_folder_is_passed_through():
    assert resolve_weights(REPO / "weights") == REPO / "weights"
    assert resolve_weights(str(REPO / "weights")) == REPO / "weights"


def test_the_cache_is_huggingface_hubs_own_layout(hub):
    from huggingface_hub import scan_cache_dir
    snapshot = hub.cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / hub.sha
    assert Path(hub.first) == snapshot == Path(hub.second)
    info = scan_cache_dir(hub.cache)
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type, set(repo.refs)) == (REPO_ID, "model", {"main"})
    (revision,) = repo.revisions
    assert revision.commit_hash == hub.sha
    entries = hub.manifest.file_entries()
    names = {e["file"] for e in entries}
    assert {"trunk.safetensors", *(m["file"] for k in ("fusion", "image_only")
                                  for m in hub.manifest.members(k))} <= names
    assert {f.file_name for f in revision.files} == names | {"manifest.json"}
    for e in entries:   # snapshot links into blobs; LFS blobs are named by their sha256
        link = snapshot / e["file"]
        assert link.is_symlink() and link.resolve() == repo.repo_path / "blobs" / e["sha256"]


def test_a_cached_pinned_revision_needs_no_network_even_online(hub):
    repo_requests = [t for t, _, path in hub.stand_in.requests if path.startswith(f"/{REPO_ID}/")]
    assert repo_requests and all(t < hub.mark for t in repo_requests)


def test_offline_the_pinned_revision_resolves_to_its_snapshot(hub, monkeypatch):
    from huggingface_hub import constants
    assert constants.is_offline_mode()     # conftest: HF_HUB_OFFLINE=1
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    assert resolve_weights(f"hf://{REPO_ID}@{hub.sha}") == Path(hub.first)


def test_offline_an_uncached_revision_is_a_clear_error(hub, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    other = "f" * 40
    with pytest.raises(WeightsError) as e:
        resolve_weights(f"hf://{REPO_ID}@{other}")
    msg = str(e.value)
    for part in (REPO_ID, other, "not in the Hugging Face cache", str(hub.cache), "HF_HUB_OFFLINE=1",
                 f"hf download {REPO_ID} --revision {other}", "HF_HUB_CACHE"):
        assert part in msg, (part, msg)


def corrupted_copy(hub, dst: Path, file: str) -> Path:
    """A copy of the cache (links kept) in which one cached file's blob has other bytes."""
    shutil.copytree(hub.cache, dst, symlinks=True)
    blob = (dst / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / hub.sha / file).resolve()
    assert blob.parent.name == "blobs" and str(blob).startswith(str(dst))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    return dst


def test_a_corrupted_cached_file_is_refused(hub, monkeypatch, tmp_path):
    from huggingface_hub import constants
    from lesion_app.analysis.predictor import Predictor
    cache = corrupted_copy(hub, tmp_path / "cache", "fusion_fold2.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(WeightsError, match="the cached fusion_fold2.safetensors .* is corrupted") as e:
        resolve_weights(f"hf://{REPO_ID}@{hub.sha}")
    assert f"hf cache rm model/{REPO_ID}" in str(e.value)
    # The Predictor's own check refuses the snapshot folder exactly as it refuses a local folder.
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / hub.sha
    with pytest.raises(WeightsError, match="fusion_fold2.safetensors is corrupted or was replaced"):
        Predictor(snapshot)


def start_app(env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python app.py` as a user starts it, expected to stop at start-up."""
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path), **env_extra}
    return subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("case", ["branch", "uncached", "corrupted"])
def test_the_app_refuses_bad_hub_weights_with_a_plain_message(hub, tmp_path, case):
    revision = {"branch": "main", "uncached": "e" * 40, "corrupted": hub.sha}[case]
    cache = (corrupted_copy(hub, tmp_path / "cache", "trunk.safetensors") if case == "corrupted" else hub.cache)
    r = start_app({"LESION_APP_WEIGHTS": f"hf://{REPO_ID}@{revision}", "HF_HUB_CACHE": str(cache),
                   "HF_HUB_OFFLINE": "1"}, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert r.stderr.startswith("error: cannot start the app: "), out[-3000:]
    expected = {"branch": ["'main' is a branch or tag name", "Pin what you serve"],
                "uncached": [REPO_ID, revision, "not in the Hugging Face cache", "HF_HUB_OFFLINE=1", "hf download"],
                "corrupted": ["trunk.safetensors", "is corrupted", "hf cache rm"]}[case]
    for part in expected:
        assert part in r.stderr, (part, r.stderr)


def test_the_app_serves_report_from_a_pinned_hub_revision_offline(hub):
    """The bar: the real app, hf://demo-org/lesion-fusion@<sha> from an offline cache, answers /report
    with what the bundled weights answer (they are the same files)."""
    import pandas as pd
    from gradio_client import Client, handle_file
    from lesion_app.files.image_input import load_upload
    from lesion_app.analysis.predictor import Predictor
    server = AppServer(env_extra={"LESION_APP_WEIGHTS": f"hf://{REPO_ID}@{hub.sha}",
                                  "HF_HUB_CACHE": str(hub.cache), "HF_HUB_OFFLINE": "1"})
    try:
        row = pd.read_csv(EXAMPLES / "metadata.csv").iloc[0]
        path = str(EXAMPLES / "images" / f"{row.image_id}.jpg")
        r = Client(server.url, verbose=False).predict(handle_file(path), float(row.age), row.sex, row.localization,
                                                      api_name="/report")
    finally:
        server.stop()
    assert r["model"]["version"] == hub.manifest.version
    for k in ("fusion", "image_only"):
        assert r["model"]["sha256"][k] == [m["sha256"] for m in hub.manifest.members(k)]
    local = Predictor().analyze(load_upload(path), float(row.age), row.sex, row.localization).to_report()
    for k in ("fusion", "image_only"):
        assert np.allclose(list(r[k]["probabilities"].values()), list(local[k]["probabilities"].values()), atol=1e-6)
