"""The Gradio app: layout and wiring only. All model work happens in `Predictor`."""
from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from .clinical_report import ClinicalReport, melanoma_markdown, subgroup_markdown
from .image_input import InputError, load_upload, take_upload
from .metadata import MetadataError
from .predictor import Predictor
from .result import ABSENT_BASELINE, Analysis, ModelResult
from .vocab import CLASSES, SEXES, SITES, class_label
from .gradcam import gradcam_overlay

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
PREDICTED = "Predicted class (each model's own)"
NOTICE = ("**Research demo, not a medical device. Not for diagnosis.** Outputs are from models "
          "trained on one public dataset (HAM10000) and can be wrong; they must not guide care.")


def example_rows() -> tuple[list[list], list[str]]:
    md = pd.read_csv(EXAMPLES_DIR / "metadata.csv")
    rows = [[str(EXAMPLES_DIR / "images" / f"{r.image_id}.jpg"), float(r.age), r.sex, r.localization]
            for r in md.itertuples()]
    labels = [f"{class_label(r.dx)} · {r.age:.0f} y {r.sex} · {r.localization}" for r in md.itertuples()]
    return rows, labels


def shap_figure(a: Analysis) -> Figure:
    """Waterfall: base (nothing entered) -> + age, sex, site -> the fusion probability."""
    s = a.shap
    names = list(s.contributions)
    fig = Figure(figsize=(6.0, 2.6), dpi=100)
    ax = fig.add_subplot()
    start = s.base
    for k, name in enumerate(names):
        v = s.contributions[name]
        ax.barh(k, v, left=start, color="#2a9d8f" if v >= 0 else "#e76f51")
        ax.text(max(start, start + v) + 0.005, k, f"{v:+.3f}", va="center", fontsize=9)
        start += v
    ax.axvline(s.base, color="grey", ls=":", lw=1)
    ax.axvline(s.value, color="black", lw=1)
    ax.set_yticks(range(len(names)), [f"{n} = {a.metadata[n] if a.metadata[n] is not None else 'not entered'}"
                                      for n in names])
    ax.invert_yaxis()
    lo, hi = min(s.base, s.value, start), max(s.base, s.value, start)
    pad = max(0.05, 0.25 * (hi - lo))
    ax.set_xlim(max(0, lo - pad), min(1, hi + pad))
    ax.set_xlabel(f"fusion P({s.cls})   base {s.base:.3f} (dotted) -> {s.value:.3f} (solid)")
    ax.set_title(f"How age, sex and site moved P({class_label(s.cls)})", fontsize=10)
    fig.tight_layout()
    return fig


def cam_note(r: ModelResult) -> str:
    if r.cam_empty:
        return (f"⚠️ **The Grad-CAM map for {class_label(r.cam_class)} is empty**: no image region "
                "raises this class's score (every gradient-weighted activation is negative). "
                "The plain image is shown instead.")
    return f"Grad-CAM for **{class_label(r.cam_class)}**: red regions raised this class's score most."


def _key(payload) -> str | None:
    return payload.get("path") if isinstance(payload, dict) else payload


def image_html(rgb: np.ndarray, alt: str) -> str:
    """An inline (data URI) <img>: the heatmap never becomes a file on the server."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{data}" alt="{alt}" '
            'style="width:100%;max-width:512px;border-radius:6px">')


def render(a: Analysis) -> tuple:
    """Analysis -> the values of the output components, in OUTPUT order."""
    warn = "\n".join(f"⚠️ {w}" for w in a.warnings)
    return (f"### {a.reading()}", warn,
            a.fusion.labelled(), image_html(gradcam_overlay(a.image, a.fusion.cam), "Fusion Grad-CAM"),
            cam_note(a.fusion),
            a.image_only.labelled(),
            image_html(gradcam_overlay(a.image, a.image_only.cam), "Image-only Grad-CAM"),
            cam_note(a.image_only),
            shap_figure(a), a.to_report())


def example_digests() -> frozenset[str]:
    return frozenset(hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in (EXAMPLES_DIR / "images").glob("*.jpg"))


def build_app(predictor: Predictor, clinical: ClinicalReport | None = None) -> gr.Blocks:
    label_to_code = {class_label(c): c for c in CLASSES}
    keep = example_digests()

    def analyze(image: Image.Image, age, sex, site, cam_choice=PREDICTED) -> Analysis:
        try:
            return predictor.analyze(image, age, sex, site, label_to_code.get(cam_choice))
        except MetadataError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def decode(payload) -> Image.Image:
        """The upload as an in-memory image; its file is deleted before any analysis runs."""
        try:
            return load_upload(take_upload(payload, keep))
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def show(a: Analysis, spec: str, state: dict) -> tuple:
        return (*render(a), melanoma_markdown(clinical, a, spec[:2]), subgroup_markdown(clinical, a),
                {**state, "analysis": a})

    def on_analyze(payload, age, sex, site, cam_choice, spec, last):
        # Re-analysing the same upload (its file already deleted) uses the in-memory copy.
        same = last is not None and payload is not None and last["key"] == _key(payload)
        image = last["image"] if same else decode(payload)
        state = {"key": _key(payload), "image": image, "meta": (age, sex, site)}
        return show(analyze(image, age, sex, site, cam_choice), spec, state)

    def on_cam_class(cam_choice, spec, last):
        if last is None:
            return (gr.skip(),) * (len(outputs) + 1)
        return show(analyze(last["image"], *last["meta"], cam_choice), spec, last)

    def on_operating_point(spec, last):
        return gr.skip() if last is None else melanoma_markdown(clinical, last["analysis"], spec[:2])

    def report(image, age, sex, site):
        """JSON report: both models' probabilities, exact Shapley values of age/sex/site, warnings."""
        return analyze(decode(image), age, sex, site).to_report()

    with gr.Blocks(title="Skin-lesion fusion demo", delete_cache=(60, 300)) as demo:
        gr.Markdown("# Skin lesion: image-only vs image + patient metadata")
        gr.Markdown(NOTICE, elem_id="notice")
        with gr.Tab("Analysis"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"],
                                     label="Dermoscopic image", elem_id="lesion_image", height=260)
                    age = gr.Number(label="Age (years, optional)", elem_id="age", minimum=0, maximum=120,
                                    value=None, precision=0)
                    sex = gr.Radio(list(SEXES), value="unknown", label="Sex", elem_id="sex")
                    site = gr.Dropdown(list(SITES), value="unknown", label="Body site", elem_id="site")
                    button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                    rows, labels = example_rows()
                    examples = gr.Examples(rows, [image, age, sex, site], example_labels=labels,
                                           cache_examples=False,
                                           label="Examples: one HAM10000 test-split case per class (click "
                                                 "one to analyse it). Images CC BY-NC 4.0, Tschandl et al. 2018")
                with gr.Column(scale=2):
                    reading = gr.Markdown("Upload an image or pick an example, then press **Analyze**.",
                                          elem_id="reading")
                    warnings = gr.Markdown(elem_id="warnings")
                    cam_class = gr.Dropdown([PREDICTED] + list(label_to_code), value=PREDICTED,
                                            label="Heatmap class", elem_id="cam_class")
                    with gr.Row():
                        with gr.Column():
                            fusion_probs = gr.Label(num_top_classes=len(CLASSES), elem_id="fusion_probs",
                                                    label="Fusion model (image + age, sex, site)")
                            fusion_cam = gr.HTML(elem_id="fusion_cam")
                            fusion_note = gr.Markdown(elem_id="fusion_cam_note")
                        with gr.Column():
                            image_only_probs = gr.Label(num_top_classes=len(CLASSES),
                                                        elem_id="image_only_probs", label="Image-only model")
                            image_only_cam = gr.HTML(elem_id="image_only_cam")
                            image_only_note = gr.Markdown(elem_id="image_only_cam_note")
                    shap_plot = gr.Plot(label="Metadata attribution (exact Shapley values)", elem_id="shap_plot")
                    gr.Markdown(f"Shapley values over three groups (age, sex, site), computed exactly over "
                                f"all 8 coalitions. Baseline: {ABSENT_BASELINE}.", elem_id="shap_baseline")
                    operating_point = gr.Radio(["90% specificity", "95% specificity"], value="90% specificity",
                                               label="Melanoma operating point", elem_id="mel_operating_point")
                    melanoma = gr.Markdown(elem_id="melanoma_flag")
                    subgroup = gr.Markdown(elem_id="subgroup")
                    with gr.Accordion("Report JSON (what the /report API returns)", open=False):
                        report_json = gr.JSON(elem_id="report_json")
        with gr.Tab("Model report"):
            gr.Markdown(clinical.markdown() if clinical else
                        "No evaluation report yet: run `python -m train.report`.", elem_id="model_report")

        outputs = [reading, warnings, fusion_probs, fusion_cam, fusion_note, image_only_probs,
                   image_only_cam, image_only_note, shap_plot, report_json, melanoma, subgroup]
        last = gr.State(None)  # this session's decoded image and analysis, in memory only
        # preprocess=False: the upload reaches our own checks as is (clear messages for
        # broken files) and Gradio never decodes or re-saves it.
        button.click(on_analyze, [image, age, sex, site, cam_class, operating_point, last], outputs + [last],
                     api_name="analyze", concurrency_id="model", preprocess=False)
        # One click on an example loads it and analyses it.
        examples.load_input_event.then(on_analyze, [image, age, sex, site, cam_class, operating_point, last],
                                       outputs + [last], api_visibility="private", concurrency_id="model",
                                       preprocess=False)
        cam_class.input(on_cam_class, [cam_class, operating_point, last], outputs + [last],
                        api_visibility="private", concurrency_id="model", preprocess=False)
        operating_point.input(on_operating_point, [operating_point, last], melanoma,
                              api_visibility="private", preprocess=False)
        # /report: the same inputs and the same Predictor.analyze, returned as JSON only.
        report_out = gr.JSON(visible=False)
        gr.Button(visible=False).click(report, [image, age, sex, site], report_out, api_name="report",
                                       concurrency_id="model", preprocess=False)
    return demo
