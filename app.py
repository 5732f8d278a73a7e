"""Entry point (also Hugging Face Spaces' app_file): loads the weights (the bundled folder, another
folder or a pinned Hub revision, per LESION_APP_WEIGHTS) and serves the app."""
import os
import sys

# Never reach for the hub, unless the weights are asked for from it (hf://ORG/NAME@SHA): then
# HF_HUB_OFFLINE is the host's to set (a pinned revision already cached needs no network anyway).
if not os.environ.get("LESION_APP_WEIGHTS", "").strip().startswith("hf://"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def private_upload_dir():
    """Points Gradio's uploads at a folder private to this process (inside GRADIO_TEMP_DIR if the
    host set one, else the system temp folder), removed on exit, SIGTERM and SIGINT.

    Must run before gradio and torch are imported: they read GRADIO_TEMP_DIR and
    TORCHINDUCTOR_CACHE_DIR at import time.
    """
    from lesion_app.files.upload_dir import UploadDir
    uploads = UploadDir(os.environ.get("GRADIO_TEMP_DIR"))
    os.environ["GRADIO_TEMP_DIR"] = str(uploads.path)
    # torch makes a compile-cache folder in the temp folder at import; keep it in ours, so it goes too.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(uploads.path / "torchinductor"))
    uploads.install_exit_cleanup()
    return uploads


def main() -> None:
    from lesion_app.files.upload_dir import upload_ttl
    try:
        ttl = upload_ttl()
    except ValueError as e:
        sys.exit(f"error: cannot start the app: {e}")
    uploads = private_upload_dir()
    from lesion_app.analysis.predictor import Predictor
    from lesion_app.classifier.hub import resolve_weights
    from lesion_app.classifier.reader_cases import load_reader_cases
    from lesion_app.classifier.weights import WEIGHTS_DIR, WeightsError
    try:
        # A folder, or hf://ORG/NAME@SHA -> that revision's snapshot in the Hub cache.
        folder = resolve_weights(os.environ.get("LESION_APP_WEIGHTS") or WEIGHTS_DIR)
        predictor = Predictor(folder)
        reader_cases = load_reader_cases(folder, predictor.manifest)   # "Test yourself": the held-out cases
    except WeightsError as e:
        sys.exit(f"error: cannot start the app: {e}")
    from lesion_app.evidence.clinical_report import REPORTS_DIR, ClinicalReport
    from lesion_app.files.report_files import ReportFiles, app_kwargs
    from lesion_app.page.layout import CSS, THEME, example_digests
    from lesion_app.page.ui import build_app
    # Case-report PDFs live in the same private folder, and are removed once served.
    reports = ReportFiles(uploads.path)
    demo = build_app(predictor, ClinicalReport.load(predictor.model_info), reports, reader_cases)
    # One analysis at a time: each already uses every CPU core; others wait in the queue.
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(footer_links=["api"], max_file_size="40mb", allowed_paths=[str(REPORTS_DIR)], css=CSS, theme=THEME,
                app_kwargs=app_kwargs(reports), prevent_thread_lock=True)
    uploads.install_exit_cleanup()  # again: Gradio's SSR mode installs its own handlers in launch()
    # Uploads that are never analysed are deleted after ttl seconds (analysed ones are deleted
    # as soon as they are read); the bundled examples' cached copies stay for example clicks.
    # Started after launch: a sweep removes empty folders, and must not race Gradio making its own.
    uploads.start_sweeper(ttl, example_digests())
    demo.block_thread()  # until SIGTERM or SIGINT: removes the folder, then ends the process at once


if __name__ == "__main__":
    main()
