"""The Gradio app: `layout` places the components, `Handlers` turns inputs into output values
keyed by component, `wire` connects the two. All model work happens in `Predictor.analyze`.

Blank means not entered everywhere: an empty age box reaches the Predictor as None, an empty
sex or site as 'unknown' (lesion_app.metadata.parse_metadata).
"""
from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from .clinical_report import (OPERATING_POINTS, ClinicalReport, melanoma_markdown, parse_operating_point,
                              subgroup_markdown)
from .figures import shap_figure, what_if_figure
from .gradcam import CAM_METHODS, DEFAULT_CAM_METHOD, gradcam_overlay
from .image_input import InputError, load_upload, take_upload
from .metadata import MetadataError, parse_metadata
from .predictor import Predictor
from .result import ABSENT_BASELINE, Analysis, ModelResult
from .vocab import CLASSES, SEXES, SITES, class_label

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
PREDICTED = "Predicted class (each model's own)"
NOTICE = ("**Research demo, not a medical device. Not for diagnosis.** Outputs are from models "
          "trained on one public dataset (HAM10000) and can be wrong; they must not guide care.")
START = "Upload an image or pick an example, then press **Analyze**."
NEW_IMAGE = "New image: press **Analyze** to analyse it."
SET_LEVELS = {"90%": "0.9", "95%": "0.95"}
SET_NOTE = ("A **90% prediction set** contains the true class for at least 90% of images *of each class*, "
            "melanoma included, provided new images are like the HAM10000 images it was calibrated on. "
            "It is not a probability for this image, and a lesion outside the 7 classes has no right answer in it.")
HOW_TO_READ = """- **Probabilities** are calibrated: among images given 70% for a class, about 70% were that class (on \
HAM10000, out-of-fold). They are not a diagnosis; each model is an ensemble of five.
- **Prediction sets** (90% or 95%) list every class the model cannot rule out at that level. A longer set means \
more doubt. The promise holds per class over many images, not for this one image.
- **Heatmaps** show which regions raised the chosen class's score most. They show where the model looked, not \
why, and not whether it was right. Grad-CAM (the default) weighs each feature map by its average gradient; \
Grad-CAM++ and LayerCAM weigh positions by their own positive gradients, so they show more of a lesion and \
several separate regions. An empty map is said so, never shown blank.
- **Shapley values** split the fusion model's change from "nothing entered" to "what you entered" among age, \
sex and site, exactly (all 8 combinations). They describe this model, not medicine.
- **What if?** re-runs only the fusion model for other ages, sexes and sites with this same image: it shows \
how much the model leans on metadata, which is a property of the model and its training data."""
# Every event that runs the models: one at a time in one queue, whoever launches the app
# (Predictor and its Grad-CAM hooks are not safe to run concurrently).
MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}


def example_rows() -> tuple[list[list], list[str]]:
    md = pd.read_csv(EXAMPLES_DIR / "metadata.csv")
    # Age as text: the age box is a Textbox, so that blank can mean "not entered".
    rows = [[str(EXAMPLES_DIR / "images" / f"{r.image_id}.jpg"), "" if pd.isna(r.age) else f"{r.age:g}",
             r.sex, r.localization] for r in md.itertuples()]
    labels = [f"{class_label(r.dx)} · {r.age:.0f} y {r.sex} · {r.localization}" for r in md.itertuples()]
    return rows, labels


def example_digests() -> frozenset[str]:
    return frozenset(hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in (EXAMPLES_DIR / "images").glob("*.jpg"))


def set_markdown(a: Analysis, level: str, kind: str) -> str:
    """'90% prediction set: Melanoma (mel), Melanocytic nevus (nv)' for one model."""
    sets = a.prediction_sets.get(level, {})
    if kind not in sets:
        return "No prediction-set thresholds in these weights (python -m train.release.prediction_sets)."
    names = ", ".join(class_label(c) for c in sets[kind]) or "empty (no class reaches the threshold)"
    return f"**{float(level):.0%} prediction set:** {names}"


def cam_note(r: ModelResult) -> str:
    if r.cam_empty:
        return (f"⚠️ **The {r.cam_method} map for {class_label(r.cam_class)} is empty**: no image region "
                "raises this class's score (every weighted activation is negative or zero). "
                "The plain image is shown instead.")
    return f"{r.cam_method} for **{class_label(r.cam_class)}**: red regions raised this class's score most."


def image_html(rgb: np.ndarray, alt: str) -> str:
    """An inline (data URI) <img>: the heatmap never becomes a file on the server."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{data}" alt="{alt}" '
            'style="width:100%;max-width:512px;border-radius:6px">')


def upload_key(payload) -> str | None:
    """Which upload a payload is: its server path (None when there is no image)."""
    return payload.get("path") if isinstance(payload, dict) else payload


@dataclass
class SessionState:
    """One browser session's last analysed upload, decoded in memory, and its analysis.

    Valid only for the upload named by `key`; any other image means start again.
    """
    key: str | None = None
    image: Image.Image | None = None
    analysis: Analysis | None = None
    # The last few heatmaps as inline images, by the map's bytes: a metadata change that
    # leaves a map as it was does not encode it again.
    heatmaps: dict = field(default_factory=dict, compare=False, repr=False)

    def holds(self, payload) -> bool:
        return self.image is not None and payload is not None and self.key == upload_key(payload)

    def heatmap_html(self, rgb: np.ndarray, cam: np.ndarray, alt: str) -> str:
        key = (hashlib.blake2b(cam.tobytes(), digest_size=16).hexdigest(), alt)
        if key not in self.heatmaps:
            while len(self.heatmaps) >= 4:
                self.heatmaps.pop(next(iter(self.heatmaps)))
            self.heatmaps[key] = image_html(gradcam_overlay(rgb, cam), alt)
        return self.heatmaps[key]

    def follow(self, analysis: Analysis) -> "SessionState":
        """The same upload with a newer analysis (its heatmaps kept)."""
        return SessionState(self.key, self.image, analysis, self.heatmaps)


@dataclass
class View:
    """The app's components, as `layout` placed them."""
    image: gr.Image
    age: gr.Textbox
    sex: gr.Radio
    site: gr.Dropdown
    button: gr.Button
    examples: gr.Examples
    reading: gr.Markdown
    warnings: gr.Markdown
    cam_class: gr.Dropdown
    cam_method: gr.Radio
    fusion_probs: gr.Label
    fusion_cam: gr.HTML
    fusion_note: gr.Markdown
    image_only_probs: gr.Label
    image_only_cam: gr.HTML
    image_only_note: gr.Markdown
    fusion_set: gr.Markdown
    image_only_set: gr.Markdown
    set_level: gr.Radio
    shap_plot: gr.Plot
    what_if: gr.Plot
    operating_point: gr.Radio
    melanoma: gr.Markdown
    subgroup: gr.Markdown
    report_json: gr.JSON
    state: gr.State
    report_button: gr.Button   # hidden: carries the /report endpoint
    report_out: gr.JSON        # hidden

    @property
    def inputs(self) -> list:
        """What an analysis reads, in /analyze's parameter order (the state is not an API parameter)."""
        return [self.image, self.age, self.sex, self.site, self.cam_class, self.operating_point, self.set_level,
                self.cam_method, self.state]

    @property
    def outputs(self) -> list:
        """What an analysis writes, in /analyze's return order, then the state."""
        return [self.reading, self.warnings, self.fusion_probs, self.fusion_cam, self.fusion_note,
                self.image_only_probs, self.image_only_cam, self.image_only_note, self.shap_plot,
                self.report_json, self.melanoma, self.subgroup, self.what_if, self.fusion_set,
                self.image_only_set, self.state]


def layout(clinical: ClinicalReport | None) -> View:
    """Places every component; call inside a gr.Blocks context. No events here."""
    c = {}
    gr.Markdown("# Skin lesion: image-only vs image + patient metadata")
    gr.Markdown(NOTICE, elem_id="notice")
    with gr.Tab("Analysis"):
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                c["image"] = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"],
                                      label="Dermoscopic image", elem_id="lesion_image", height=260)
                # A Textbox, not gr.Number: Number shows and sends 0 when untouched (a newborn).
                c["age"] = gr.Textbox(label="Age (years, optional)", elem_id="age", value="", lines=1,
                                      max_lines=1, placeholder="blank = not entered")
                c["sex"] = gr.Radio(list(SEXES), value="unknown", label="Sex", elem_id="sex")
                c["site"] = gr.Dropdown(list(SITES), value="unknown", label="Body site", elem_id="site")
                c["button"] = gr.Button("Analyze", variant="primary", elem_id="analyze")
                rows, labels = example_rows()
                c["examples"] = gr.Examples(
                    rows, [c["image"], c["age"], c["sex"], c["site"]], example_labels=labels,
                    cache_examples=False,
                    label="Examples: one case per class from the HAM10000 slice that no model trained on "
                          "(click one to analyse it). Images CC BY-NC 4.0, Tschandl et al. 2018")
            with gr.Column(scale=2):
                c["reading"] = gr.Markdown(START, elem_id="reading")
                with gr.Accordion("How to read this", open=False, elem_id="how_to_read"):
                    gr.Markdown(HOW_TO_READ)
                c["warnings"] = gr.Markdown(elem_id="warnings")
                # min_width: three across at 1400 px, one per line at phone width (no clipped labels).
                with gr.Row():
                    c["cam_class"] = gr.Dropdown([PREDICTED] + [class_label(k) for k in CLASSES], value=PREDICTED,
                                                 label="Heatmap class", elem_id="cam_class", min_width=220, scale=2)
                    c["cam_method"] = gr.Radio(list(CAM_METHODS), value=DEFAULT_CAM_METHOD, label="Heatmap method",
                                               elem_id="cam_method", min_width=220)
                    c["set_level"] = gr.Radio(list(SET_LEVELS), value="90%", label="Prediction set level",
                                              elem_id="set_level", min_width=220)
                gr.Markdown(SET_NOTE, elem_id="set_note")
                with gr.Row():
                    for key, title in (("fusion", "Fusion model (image + age, sex, site)"),
                                       ("image_only", "Image-only model")):
                        with gr.Column():
                            c[f"{key}_probs"] = gr.Label(num_top_classes=len(CLASSES), label=title,
                                                         elem_id=f"{key}_probs")
                            c[f"{key}_set"] = gr.Markdown(elem_id=f"{key}_set")
                            c[f"{key}_cam"] = gr.HTML(elem_id=f"{key}_cam")
                            c[f"{key}_note"] = gr.Markdown(elem_id=f"{key}_cam_note")
                c["shap_plot"] = gr.Plot(label="Metadata attribution (exact Shapley values)", elem_id="shap_plot")
                gr.Markdown(f"Shapley values over three groups (age, sex, site), computed exactly over "
                            f"all 8 coalitions. Baseline: {ABSENT_BASELINE}.", elem_id="shap_baseline")
                c["what_if"] = gr.Plot(label="What if? Other patients with this image", elem_id="what_if")
                gr.Markdown("The fusion model's answer for this same image as age, sex or site changes, the other "
                            "two as entered. Change age, sex or site above and the whole fusion side updates at once.",
                            elem_id="what_if_note")
                c["operating_point"] = gr.Radio(list(OPERATING_POINTS), value=next(iter(OPERATING_POINTS)),
                                                label="Melanoma operating point", elem_id="mel_operating_point")
                c["melanoma"] = gr.Markdown(elem_id="melanoma_flag")
                c["subgroup"] = gr.Markdown(elem_id="subgroup")
                with gr.Accordion("Report JSON (what the /report API returns)", open=False, elem_id="report_accordion"):
                    c["report_json"] = gr.JSON(elem_id="report_json", open=True)  # every level shown, what_if too
    with gr.Tab("Model report"):
        gr.Markdown(clinical.markdown() if clinical else
                    "No evaluation report yet: run `python -m train.evaluation.report`.", elem_id="model_report")
    c["state"] = gr.State(SessionState())  # this session's decoded image and analysis, in memory only
    c["report_button"] = gr.Button(visible=False)
    c["report_out"] = gr.JSON(visible=False)
    return View(**c)


class Handlers:
    """The event logic: raw component values in, {component: value} out (gr.skip() for none).

    Errors the user can fix come back as gr.Error with a plain message.
    """

    def __init__(self, predictor: Predictor, clinical: ClinicalReport | None, view: View):
        self.predictor, self.clinical, self.view = predictor, clinical, view
        self.keep = example_digests()
        self.cam_codes = {PREDICTED: None, **{class_label(k): k for k in CLASSES}, **{k: k for k in CLASSES}}

    def cam_code(self, choice) -> str | None:
        """A heatmap-class choice (label or class code) -> class code; blank or PREDICTED -> None."""
        if choice is None or (isinstance(choice, str) and not choice.strip()):
            return None
        if isinstance(choice, str) and choice.strip() in self.cam_codes:
            return self.cam_codes[choice.strip()]
        raise gr.Error(f"Unknown heatmap class {choice!r}; expected {PREDICTED!r} or one of: "
                       f"{', '.join(class_label(k) for k in CLASSES)} (or its code).", print_exception=False)

    @staticmethod
    def specificity(choice) -> str:
        try:
            return parse_operating_point(choice)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def decode(self, payload) -> Image.Image:
        """The upload as an in-memory image; its file is deleted before any analysis runs."""
        try:
            return load_upload(take_upload(payload, self.keep))
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None

    @staticmethod
    def cam_method(choice) -> str:
        """A heatmap-method choice -> a key of CAM_METHODS; blank means the default (Grad-CAM)."""
        if choice is None or (isinstance(choice, str) and not choice.strip()):
            return DEFAULT_CAM_METHOD
        by_lower = {m.lower(): m for m in CAM_METHODS}
        if isinstance(choice, str) and choice.strip().lower() in by_lower:
            return by_lower[choice.strip().lower()]
        raise gr.Error(f"Unknown heatmap method {choice!r}; expected one of: {', '.join(CAM_METHODS)}.",
                       print_exception=False)

    def run(self, image: Image.Image, age, sex, site, cam: str | None,
            previous: Analysis | None = None, method: str = DEFAULT_CAM_METHOD) -> Analysis:
        """Predictor.analyze on parsed metadata (blank -> None / 'unknown'); with the previous
        analysis of the same image, only the fusion side runs again (Predictor.with_metadata)."""
        try:
            meta = parse_metadata(age, sex, site)
        except MetadataError as e:
            raise gr.Error(str(e), print_exception=False) from None
        if previous is not None:
            return self.predictor.with_metadata(previous, *meta, cam, method)
        return self.predictor.analyze(image, *meta, cam, method)

    @staticmethod
    def set_level(choice) -> str:
        """'90%' / '95%' (or the level itself) -> the manifest's level key; blank means 90%."""
        if choice is None or (isinstance(choice, str) and not choice.strip()):
            return "0.9"
        c = str(choice).strip()
        if c in SET_LEVELS or c in SET_LEVELS.values():
            return SET_LEVELS.get(c, c)
        raise gr.Error(f"Unknown prediction set level {choice!r}; expected one of: {', '.join(SET_LEVELS)}.",
                       print_exception=False)

    def render(self, a: Analysis, spec: str, state: SessionState, level: str = "0.9",
               image_side: bool = True) -> dict:
        """Every output for analysis a; image_side=False leaves out the outputs that depend on
        the image alone (a metadata change), and the warnings line is always set."""
        v = self.view
        out = {v.reading: f"### {a.reading()}", v.warnings: "\n".join(f"⚠️ {w}" for w in a.warnings),
               v.fusion_probs: a.fusion.labelled(),
               v.fusion_cam: state.heatmap_html(a.image, a.fusion.cam, f"Fusion {a.fusion.cam_method}"),
               v.fusion_note: cam_note(a.fusion), v.shap_plot: shap_figure(a), v.report_json: a.to_report(),
               v.melanoma: melanoma_markdown(self.clinical, a, spec), v.subgroup: subgroup_markdown(self.clinical, a),
               v.what_if: what_if_figure(a), v.fusion_set: set_markdown(a, level, "fusion"), v.state: state}
        if image_side:
            out.update({v.image_only_probs: a.image_only.labelled(),
                        v.image_only_cam: state.heatmap_html(a.image, a.image_only.cam,
                                                             f"Image-only {a.image_only.cam_method}"),
                        v.image_only_note: cam_note(a.image_only),
                        v.image_only_set: set_markdown(a, level, "image_only")})
        return out

    def analyze(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                state: SessionState) -> dict:
        """Analyses the current image with the current inputs (the Analyze button, /analyze)."""
        # Refuse unknown choices before any work.
        cam, spec, level = self.cam_code(cam_choice), self.specificity(op_choice), self.set_level(level_choice)
        method = self.cam_method(method_choice)
        # Re-analysing the same upload (its file already deleted) uses the in-memory copy and,
        # once analysed, its kept features: the backbones do not run again.
        same = state.holds(payload)
        image = state.image if same else self.decode(payload)
        a = self.run(image, age, sex, site, cam, state.analysis if same else None, method)
        return self.render(a, spec, state.follow(a) if same else SessionState(upload_key(payload), image, a), level)

    def metadata_changed(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                         state: SessionState):
        """Live what-if: new age, sex or site for the analysed image updates the fusion side at once,
        from the kept features (fusion heads only). Before an analysis it does nothing; an
        unfinished or invalid entry says so in the warnings line and changes nothing else."""
        if state.analysis is None or not state.holds(payload):
            return gr.skip()
        try:
            meta = parse_metadata(age, sex, site)
        except MetadataError as e:
            return {self.view.warnings: f"⚠️ {e} The results below are for the last valid entry."}
        a = self.predictor.with_metadata(state.analysis, *meta, self.cam_code(cam_choice),
                                         self.cam_method(method_choice))
        return self.render(a, self.specificity(op_choice), state.follow(a), self.set_level(level_choice),
                           image_side=False)

    def heatmap_changed(self, payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice,
                        state: SessionState):
        """A new heatmap class or method: the current image and inputs again (once analysed, from
        the kept features: heatmaps only); nothing before an upload."""
        if payload is None:
            return gr.skip()
        return self.analyze(payload, age, sex, site, cam_choice, op_choice, level_choice, method_choice, state)

    def level_changed(self, level_choice, state: SessionState):
        level = self.set_level(level_choice)
        if state.analysis is None:
            return gr.skip()
        v, a = self.view, state.analysis
        return {v.fusion_set: set_markdown(a, level, "fusion"), v.image_only_set: set_markdown(a, level, "image_only")}

    def operating_point(self, op_choice, state: SessionState):
        spec = self.specificity(op_choice)
        if state.analysis is None:
            return gr.skip()
        return {self.view.melanoma: melanoma_markdown(self.clinical, state.analysis, spec)}

    def image_changed(self, payload, state: SessionState):
        """A new or cleared image: forget the old one and blank its results (already analysed: no-op)."""
        if state.holds(payload):
            return gr.skip()
        v = self.view
        blank = {c: None for c in v.outputs}
        return {**blank, v.reading: NEW_IMAGE if payload is not None else START,
                v.state: SessionState()}

    def report(self, image, age, sex, site) -> dict:
        """JSON report: both models' probabilities, exact Shapley values of age/sex/site, warnings.

        Blank means not entered: age None or '' -> no age; sex or site None, '' or whitespace ->
        'unknown'; values are stripped and lower-cased (' Back ' -> 'back').
        """
        return self.run(self.decode(image), age, sex, site, None).to_report()


def wire(v: View, h: Handlers) -> None:
    """Connects events to handlers. preprocess=False: the upload reaches our own checks as is
    (clear messages for broken files; Gradio never decodes or re-saves it) and every other
    value arrives raw, so blank and padded values are parsed by one rule."""
    private = {"api_visibility": "private", "preprocess": False}
    v.button.click(h.analyze, v.inputs, v.outputs, api_name="analyze", preprocess=False, **MODEL_QUEUE)
    # One click on an example loads it and analyses it.
    v.examples.load_input_event.then(h.analyze, v.inputs, v.outputs, **private, **MODEL_QUEUE)
    gr.on([v.cam_class.input, v.cam_method.input], h.heatmap_changed, v.inputs, v.outputs, **private, **MODEL_QUEUE)
    # Live what-if: a new age, sex or site re-runs only the fusion heads on the kept features.
    # always_last: keystrokes that arrive while one update runs collapse into one more with the final value.
    gr.on([v.age.input, v.sex.input, v.site.input], h.metadata_changed, v.inputs, v.outputs,
          trigger_mode="always_last", **private, **MODEL_QUEUE)
    # Same queue as the analyses, so a new upload is forgotten before the Analyze that follows it.
    v.image.input(h.image_changed, [v.image, v.state], v.outputs, **private, **MODEL_QUEUE)
    v.operating_point.input(h.operating_point, [v.operating_point, v.state], [v.melanoma], **private)
    v.set_level.input(h.level_changed, [v.set_level, v.state], [v.fusion_set, v.image_only_set], **private)
    # /report: the same inputs and the same Predictor.analyze, returned as JSON only.
    v.report_button.click(h.report, [v.image, v.age, v.sex, v.site], v.report_out, api_name="report",
                          preprocess=False, **MODEL_QUEUE)


def build_app(predictor: Predictor, clinical: ClinicalReport | None = None) -> gr.Blocks:
    """The whole app. Safe to launch as is: every event that runs the models has concurrency_limit=1."""
    with gr.Blocks(title="Skin-lesion fusion demo", delete_cache=(60, 300)) as demo:
        view = layout(clinical)
        wire(view, Handlers(predictor, clinical, view))
    return demo
