"""Prints the page's server time for a live what-if update: PageEvents.metadata_changed on the kept
features (the fusion side's figures, heatmap and tables) and Gradio's postprocessing of its outputs.

    python tests/page_benchmark.py [--repeats 30]

Not a pytest test (it asserts nothing; the machine is shared and noisy: compare within one run).
`python -m train.evaluation.benchmark` times the analysis itself, Predictor.with_metadata included;
this one is the page's part, kept here because train/ imports nothing of the page.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from lesion_app.analysis.predictor import Predictor  # noqa: E402
from lesion_app.evidence.clinical_report import ClinicalReport  # noqa: E402
from lesion_app.files.image_input import load_upload  # noqa: E402
from lesion_app.page.events import PageEvents  # noqa: E402
from lesion_app.page.layout import layout  # noqa: E402
from lesion_app.page.session import SessionState  # noqa: E402
from lesion_app.page.ui import on_page  # noqa: E402
from lesion_app.paths import PACKAGE  # noqa: E402
from train.evaluation.benchmark import timed  # noqa: E402

EXAMPLE = PACKAGE / "examples" / "images" / "ISIC_0024449.jpg"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    repeats = ap.parse_args(argv).repeats
    p = Predictor()
    clinical = ClinicalReport.load(p.model_info)   # as app.py: operating points and similar patients
    with gr.Blocks():
        view = layout(clinical)
    changed = on_page(view, PageEvents(p, clinical).metadata_changed)   # as the page wires it
    image = load_upload(EXAMPLE)
    state = SessionState("x", image, p.analyze(image, 35, "female", "ear"))
    ages = iter(range(10 ** 6))

    def change():
        out = changed("x", str(20 + next(ages) % 60), "male", "back", None, "90% specificity", "90%", "Grad-CAM",
                      state)
        for component, value in out.items():   # what Gradio does to each output before sending it
            component.postprocess(value)
    med, p90 = timed(change, repeats)
    print(f"{'piece':48s} {'median':>8s} {'p90':>8s}")
    print(f"{'metadata change: event + output postprocessing':48s} {med:8.4f} {p90:8.4f}")


if __name__ == "__main__":
    main()
