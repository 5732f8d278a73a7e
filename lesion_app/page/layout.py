"""The page's layout: `layout` places every component (call it inside a gr.Blocks context) and
returns them as a `View`, whose `inputs` and `outputs` say what an analysis reads and writes; the
page's own texts, styling (CSS, THEME) and gallery of examples. No events here: lesion_app.page.ui
wires the components to lesion_app.page.events.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..analysis.pipeline import MAX_IMAGES
from ..classifier.vocab import CLASSES, SEXES, SITES, class_label
from ..evidence.clinical_report import ClinicalReport
from ..evidence.gradcam import DEFAULT_CAM_METHOD
from ..evidence.shapley import ABSENT_BASELINE
from ..paths import PACKAGE
from . import reader_tab
from .choices import HEATMAP_CLASS, HEATMAP_METHOD, OPERATING_POINT, PREDICTED, SET_LEVEL, SIMILAR_K
from .clinical import model_report_markdown
from .presentation import START
from .session import SessionState

EXAMPLES_DIR = PACKAGE / "examples"
NOTICE = ("**Research demo, not a medical device. Not for diagnosis.** Outputs are from models "
          "trained on one public dataset (HAM10000) and can be wrong; they must not guide care.")
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
several separate regions; LayerCAM (fine) adds the image network's earlier, finer stages where the last stage \
sees the class, so it draws finer detail. "Top two" shows why each model chose its first class rather than its \
second: the regions that raised the first's score over the second's. An empty map is said so, never shown blank.
- **The lesion's outline** is drawn by a segmentation model trained on HAM10000's lesion masks. Its measures \
(area share, asymmetry, border, colours) describe the outline, not the ABCD rule's scores and not a diagnosis; \
each sits beside the archive's medians for melanomas, nevi and keratoses. "Heatmap mass inside the outline" \
says how much of each model's evidence lies on the lesion; the page warns when most of it lies elsewhere.
- **Shapley values** split the fusion model's change from "nothing entered" to "what you entered" among age, \
sex and site, exactly (all 8 combinations). They describe this model, not medicine.
- **What if?** re-runs only the fusion model for other ages, sexes and sites with this same image: it shows \
how much the model leans on metadata, which is a property of the model and its training data."""
# The page's own styling (demo.launch(css=CSS, theme=THEME)). The page's headings under its title are
# h2 (axe's heading-order: no level skipped), drawn at the size of the h3 they were. The measures table
# breaks lines between words only (Gradio's prose style would break inside "0.06" in a narrow column);
# at phone width it takes a smaller font and tighter cells, and scrolls sideways inside itself if it
# still does not fit. An unexpected failure still marks an event's outputs with Gradio's "Error" badge
# (slips never do: lesion_app.page.slips), but its overlay no longer hides the component under it nor
# takes its clicks (it took the reader's choices); the badge and its clear button stay.
CSS = """
#reading h2, #lesion_title h2, #similar_title h2 { font-size: var(--text-lg); font-weight: 600; line-height: 1.3; margin: 0; }
body:not(.dark) [role="tab"][aria-selected="true"] { color: var(--primary-700); }
[data-testid="status-tracker"]:has(> .error) { pointer-events: none; background: transparent; }
[data-testid="status-tracker"]:has(> .error) > * { pointer-events: auto; }
#lesion_measures table { display: block; max-width: 100%; overflow-x: auto; border: none !important; }
#lesion_measures th, #lesion_measures td { overflow-wrap: normal !important; word-break: normal !important; }
@media (max-width: 600px) {
  #lesion_measures table { font-size: 12px; }
  #lesion_measures th, #lesion_measures td { padding: 3px 3px !important; }
}
"""
# Gradio's default theme with text that passes WCAG AA contrast (axe's color-contrast): white on the
# primary buttons needs orange 700 (5.2:1; orange 500 gave 2.8:1), and the subdued grey of "- or -"
# in the upload box and of the footer's "Use via API" needs neutral 600 (7.8:1; axe measured 1.9:1).
# (The selected tab's name, in the accent colour, is orange 700 on white by CSS: the accent has no
# dark-mode value of its own, and orange 700 would fail on the dark background.)
THEME = gr.themes.Default().set(
    button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800",
    button_primary_background_fill_dark="*primary_700", button_primary_background_fill_hover_dark="*primary_800",
    body_text_color_subdued="*neutral_600")


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


@dataclass
class View:
    """The app's components, as `layout` placed them."""
    image: gr.Image
    extra_images: gr.File
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
    similar_k: gr.Radio
    same_site: gr.Checkbox
    same_sex: gr.Checkbox
    similar_vote: gr.Markdown
    similar_cases: gr.HTML
    lesion_view: gr.HTML
    lesion_measures: gr.Markdown
    outline: gr.Checkbox
    state: gr.State
    case_report: gr.Button
    case_report_file: gr.File  # hidden: the PDF the browser is handed, then downloads
    analyze_api: gr.Button     # hidden: carries the /analyze endpoint (a slip is an error there, not a toast)
    report_button: gr.Button   # hidden: carries the /report endpoint
    report_out: gr.JSON        # hidden
    case_report_api: gr.Button  # hidden: carries the /case_report endpoint
    case_report_api_out: gr.File  # hidden
    reader: reader_tab.ReaderTab | None = None   # the "Test yourself" tab

    @property
    def inputs(self) -> list:
        """What an analysis reads, in /analyze's parameter order (the state is not an API parameter)."""
        return [self.image, self.age, self.sex, self.site, self.cam_class, self.operating_point, self.set_level,
                self.cam_method, self.state, *self.similar_inputs, self.extra_images]

    @property
    def similar_inputs(self) -> list:
        """The similar cases' number and filters (the last /analyze and /report parameters)."""
        return [self.similar_k, self.same_site, self.same_sex]

    @property
    def outputs(self) -> list:
        """What an analysis writes, in /analyze's return order, then the state."""
        return [self.reading, self.warnings, self.fusion_probs, self.fusion_cam, self.fusion_note,
                self.image_only_probs, self.image_only_cam, self.image_only_note, self.shap_plot,
                self.report_json, self.melanoma, self.subgroup, self.what_if, self.fusion_set,
                self.image_only_set, self.similar_vote, self.similar_cases, self.lesion_view,
                self.lesion_measures, self.state]


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
                c["extra_images"] = gr.File(file_count="multiple", file_types=["image"], height=150,
                                            label=f"More images of the same lesion (optional, up to {MAX_IMAGES - 1}: "
                                                  "other zooms or angles)", elem_id="extra_images")
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
                    c["cam_class"] = gr.Dropdown(list(HEATMAP_CLASS.labels), value=PREDICTED,
                                                 label="Heatmap class", elem_id="cam_class", min_width=220, scale=2)
                    c["cam_method"] = gr.Radio(list(HEATMAP_METHOD.labels), value=DEFAULT_CAM_METHOD,
                                               label="Heatmap method", elem_id="cam_method", min_width=220)
                    c["set_level"] = gr.Radio(list(SET_LEVEL.labels), value="90%", label="Prediction set level",
                                              elem_id="set_level", min_width=220)
                gr.Markdown(SET_NOTE, elem_id="set_note")
                c["outline"] = gr.Checkbox(True, label="Lesion outline on the heatmaps", elem_id="outline_toggle")
                with gr.Row():
                    for key, title in (("fusion", "Fusion model (image + age, sex, site)"),
                                       ("image_only", "Image-only model")):
                        with gr.Column():
                            c[f"{key}_probs"] = gr.Label(num_top_classes=len(CLASSES), label=title,
                                                         elem_id=f"{key}_probs")
                            c[f"{key}_set"] = gr.Markdown(elem_id=f"{key}_set")
                            c[f"{key}_cam"] = gr.HTML(elem_id=f"{key}_cam")
                            c[f"{key}_note"] = gr.Markdown(elem_id=f"{key}_cam_note")
                gr.Markdown("## The lesion, outlined and measured", elem_id="lesion_title")
                with gr.Row():   # side by side on a desktop, stacked on a phone
                    with gr.Column(min_width=240):
                        c["lesion_view"] = gr.HTML(elem_id="lesion_view")
                    with gr.Column(scale=2, min_width=300):
                        c["lesion_measures"] = gr.Markdown(elem_id="lesion_measures")
                gr.Markdown("## Similar confirmed cases", elem_id="similar_title")
                with gr.Row():
                    c["similar_k"] = gr.Radio(list(SIMILAR_K.labels), value=str(SIMILAR_K.default),
                                              label="Cases shown", elem_id="similar_k", min_width=160)
                    c["same_site"] = gr.Checkbox(False, label="Same body site as entered", elem_id="similar_same_site",
                                                 min_width=160)
                    c["same_sex"] = gr.Checkbox(False, label="Same sex as entered", elem_id="similar_same_sex",
                                                min_width=160)
                c["similar_vote"] = gr.Markdown(elem_id="similar_vote")
                c["similar_cases"] = gr.HTML(elem_id="similar_cases")
                c["shap_plot"] = gr.Plot(label="Metadata attribution (exact Shapley values)", elem_id="shap_plot")
                gr.Markdown(f"Shapley values over three groups (age, sex, site), computed exactly over "
                            f"all 8 coalitions. Baseline: {ABSENT_BASELINE}.", elem_id="shap_baseline")
                c["what_if"] = gr.Plot(label="What if? Other patients with this image", elem_id="what_if")
                gr.Markdown("The fusion model's answer for this same image as age, sex or site changes, the other "
                            "two as entered. Change age, sex or site above and the whole fusion side updates at once.",
                            elem_id="what_if_note")
                c["operating_point"] = gr.Radio(list(OPERATING_POINT.labels), value=next(iter(OPERATING_POINT.labels)),
                                                label="Melanoma operating point", elem_id="mel_operating_point")
                c["melanoma"] = gr.Markdown(elem_id="melanoma_flag")
                c["subgroup"] = gr.Markdown(elem_id="subgroup")
                # After the operating point and sets it uses: the PDF shows the page's current choices.
                c["case_report"] = gr.Button("Download case report (PDF)", elem_id="case_report")
                c["case_report_file"] = gr.File(visible="hidden", elem_id="case_report_file", interactive=False)
                with gr.Accordion("Report JSON (what the /report API returns)", open=False, elem_id="report_accordion"):
                    c["report_json"] = gr.JSON(elem_id="report_json", open=True)  # every level shown, what_if too
    with gr.Tab("Test yourself", elem_id="reader"):
        c["reader"] = reader_tab.layout()
    with gr.Tab("Model report"):
        gr.Markdown(model_report_markdown(clinical) if clinical else
                    "No evaluation report yet: run `python -m train.evaluation.report`.", elem_id="model_report")
    c["state"] = gr.State(SessionState())  # this session's decoded image and analysis, in memory only
    c["analyze_api"] = gr.Button(visible=False)
    c["report_button"] = gr.Button(visible=False)
    c["report_out"] = gr.JSON(visible=False)
    c["case_report_api"] = gr.Button(visible=False)
    c["case_report_api_out"] = gr.File(visible=False)
    return View(**c)
