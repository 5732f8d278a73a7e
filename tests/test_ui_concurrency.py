"""build_app(...) is safe to launch as is: no app.py, no queue settings. Concurrent /report
calls give what serial ones give, and never run two analyses at once."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import EXAMPLES, free_port
from lesion_app.analysis.predictor import Predictor
from lesion_app.page.ui import build_app

META = [(60, "male", "back"), ("", "unknown", "unknown"), (50, "female", "lower extremity"),
        (30, "male", "lower extremity"), (35, "female", "ear"), (None, "female", "back")]


class Overlap:
    """A Predictor that records the most analyses ever running at the same time (the page's
    analyses: it parses the metadata and calls analyze_parsed)."""

    def __init__(self, predictor):
        self.predictor, self.lock, self.running, self.peak = predictor, threading.Lock(), 0, 0

    def analyze_parsed(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return self.predictor.analyze_parsed(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def served():
    # A host whose default lets events run in parallel: only build_app's own limits protect.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "none")
        predictor = Overlap(Predictor())
        demo = build_app(predictor)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", predictor, demo
    demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six different example images as PNG uploads (not the bundled files, so each is deleted once read)."""
    folder = tmp_path_factory.mktemp("uploads")
    paths = []
    for src in sorted((EXAMPLES / "images").glob("*.jpg"))[:len(META)]:
        with Image.open(src) as im:
            im.save(folder / f"{src.stem}.png")
        paths.append(folder / f"{src.stem}.png")
    return paths


def test_every_event_that_runs_the_models_is_one_at_a_time(served):
    *_, demo = served
    model = [fn for fn in demo.fns.values()
             if fn.name in ("analyze", "heatmap_changed", "image_changed", "report", "case_report_for")]
    # The Analyze button, an example click, /analyze (the same event, as the API calls it), the heatmap
    # class, a new image, new further images of the lesion, /report and /case_report.
    assert len(model) == 8
    assert all(fn.concurrency_id == "model" and fn.concurrency_limit == 1 for fn in model)


def test_concurrent_reports_equal_serial_ones(served, images, tmp_path):
    url, predictor, _ = served

    def call(i, copy):
        # Each call uploads its own copy: the app deletes an upload once it has read it.
        path = tmp_path / f"{copy}-{images[i].name}"
        path.write_bytes(images[i].read_bytes())
        return Client(url, verbose=False).predict(handle_file(str(path)), *META[i], api_name="/report")

    serial = [call(i, "serial") for i in range(len(images))]
    assert predictor.peak == 1
    with ThreadPoolExecutor(len(images)) as pool:
        concurrent = list(pool.map(call, range(len(images)), ["concurrent"] * len(images)))
    assert predictor.peak == 1
    for s, c in zip(serial, concurrent):
        for model in ("fusion", "image_only"):
            assert np.allclose(list(c[model]["probabilities"].values()), list(s[model]["probabilities"].values()),
                               atol=1e-5, rtol=0)
        assert c["metadata"] == s["metadata"] and c["shap"] == pytest.approx(s["shap"], abs=1e-5)
