import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

# Nothing may reach the hub (an offline hub call hangs ~47 s); no analytics.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# Subprocess apps and CLIs: their output is captured and read only on failure, where warnings would
# bury the error. In-process warnings follow pytest.ini. Set PYTHONWARNINGS=default to see them.
os.environ.setdefault("PYTHONWARNINGS", "ignore")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLES = REPO / "lesion_app" / "examples"
DATA = (REPO.parent / "shared" / "data" / "ham10000").resolve()

needs_dataset = pytest.mark.skipif(
    not (DATA / "metadata.csv").is_file(),
    reason=f"needs the full HAM10000 copy at {DATA} (absent on this machine)")


# Debian's Chromium, which the browser tests drive through Playwright, and its flags.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Skips the calling test module when Chromium is absent, unless LESION_REQUIRE_BROWSER is set
    (as CI sets it), where its absence is an error."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("LESION_REQUIRE_BROWSER"):
            raise RuntimeError("LESION_REQUIRE_BROWSER is set but Chromium is not installed "
                               "(apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium); CI installs it and "
                    "makes this test mandatory", allow_module_level=True)


@pytest.fixture
def example_folder(tmp_path) -> Path:
    """A copy of the committed example cases, in the HAM10000 layout, made per test."""
    dst = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dst)
    return dst


def add_mirrored_copies(folder: Path) -> None:
    """Adds to a folder in the HAM10000 layout a left-right mirrored copy of every image, as another
    lesion (ids suffixed "_flip"): the examples' 7 images become 14, two lesions per class, enough for
    a tiny cross-validation run."""
    md = pd.read_csv(folder / "metadata.csv")
    extra = md.assign(image_id=md["image_id"] + "_flip", lesion_id=md["lesion_id"] + "_flip")
    for src, dst in zip(md["image_id"], extra["image_id"]):
        with Image.open(folder / "images" / f"{src}.jpg") as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "images" / f"{dst}.jpg")
    pd.concat([md, extra]).to_csv(folder / "metadata.csv", index=False)


@pytest.fixture(scope="session")
def example_metadata() -> pd.DataFrame:
    return pd.read_csv(EXAMPLES / "metadata.csv")


def run_module(module: str, *args, timeout=600, cwd=REPO):
    """Runs `python -m module args` as a user would; returns the CompletedProcess."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` in a subprocess, as a user starts it; stopped when done.

    tmpdir: start it as a host would, without GRADIO_TEMP_DIR and with TMPDIR=tmpdir, so the
    app's own private folder lands there (temp_dir is then tmpdir, left to its owner).
    """

    def __init__(self, env_extra=None, startup_timeout=120, tmpdir=None):
        import signal
        import subprocess
        import time
        import urllib.request
        import tempfile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1"}
        self._own_temp_dir = tmpdir is None
        if tmpdir is None:
            self.temp_dir = Path(tempfile.mkdtemp(prefix="lesion-test-gradio-"))  # where uploads land
            env["GRADIO_TEMP_DIR"] = str(self.temp_dir)
        else:
            self.temp_dir = Path(tmpdir)
            env.pop("GRADIO_TEMP_DIR", None)
            env["TMPDIR"] = str(self.temp_dir)
        env.update(env_extra or {})
        # SIGINT at its default even when pytest runs as a background job (which ignores it).
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        t0 = time.time()
        while time.time() - t0 < startup_timeout:
            if self.proc.poll() is not None:
                out, _ = self.proc.communicate()
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{out[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                self.startup_seconds = time.time() - t0
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not answer within {startup_timeout} s")

    def stop(self, sig=None):
        """Stops the app with sig (SIGTERM by default, as Docker and Spaces do); returns its exit
        code. What it printed is then in self.output."""
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.output, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output, _ = self.proc.communicate()
        if self._own_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture(scope="session")
def app_server():
    server = AppServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client
    return Client(app_server.url, verbose=False)


def model_with_class0_weight(sign: float):
    """An untrained image-only classifier whose class-0 logit rises (sign > 0) or falls with
    every pooled feature: its class-0 heatmap is known to be non-empty (or empty)."""
    from lesion_app.classifier.models import LesionClassifier
    torch.manual_seed(0)
    m = LesionClassifier("image_only", pretrained=False).eval()
    with torch.no_grad():
        m.head.fc.weight.zero_()
        m.head.fc.weight[0] = sign
    return m
