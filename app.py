"""Entry point (also Hugging Face Spaces' app_file): loads the bundled weights and serves the app."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never reach for the hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if "GRADIO_TEMP_DIR" not in os.environ:
    # Uploads land in a private folder that is removed when the app exits; each upload's
    # file is also deleted as soon as it has been read (lesion_app.image_input.take_upload).
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="lesion-app-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

from lesion_app.predictor import Predictor  # noqa: E402
from lesion_app.weights import WEIGHTS_DIR, WeightsError  # noqa: E402


def main() -> None:
    weights = Path(os.environ.get("LESION_APP_WEIGHTS", WEIGHTS_DIR))
    try:
        predictor = Predictor(weights)
    except WeightsError as e:
        sys.exit(f"error: cannot start the app: {e}")
    from lesion_app.clinical_report import REPORTS_DIR, ClinicalReport
    from lesion_app.ui import build_app
    demo = build_app(predictor, ClinicalReport.load(predictor.model_info))
    # One analysis at a time: each already uses every CPU core; others wait in the queue.
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(footer_links=["api"], max_file_size="40mb", allowed_paths=[str(REPORTS_DIR)])


if __name__ == "__main__":
    main()
