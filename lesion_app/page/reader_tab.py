"""The "Test yourself" tab, as layout and wiring only: `layout` places its components (call it
inside the tab), `wire` connects them to the tab's events as lesion_app.page.reader defines them,
each once, through one rule (on_tab: a ReaderView becomes component updates, a slip a warning).
The deck, the scoring and the CSV are lesion_app.page.reader_deck's and reader_score's.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from ..classifier.vocab import CLASSES, class_label
from .choices import ChoiceError
from .reader import ANSWERING, ATTRIBUTION, REVEALED, START_TEXT, ReaderEvents, ReaderSession, ReaderView
from .reader_deck import DECK_SIZE, ReaderError
from .reader_score import score, score_markdown
from .slips import warn

DIAGNOSES = [(class_label(c), c) for c in CLASSES]
EXCISE_CHOICES = [("Yes", "yes"), ("No", "no")]
INTRO = (f"**Test yourself.** Diagnose {DECK_SIZE} lesions that no model was trained on, then see the confirmed "
         "diagnosis beside both models' answers. The **deck code** fixes the cases and their order: give a room "
         "one code and everyone reads the same deck; leave it blank for a new deck. Your answers stay in this "
         "page only: nothing is stored on the server, and closing the page forgets them. "
         "Keys: **1–7** choose a diagnosis · **Y / N** excise or not · **R** reveal · **→** or **Page Down** next case.")
# Large controls, readable from the back of a room; at phone width one column and somewhat smaller.
STYLE = """<style>
#reader_keys {display:none}
#reader_start, #reader_new, #reader_reveal, #reader_next, #reader_csv {font-size:1.3rem; min-height:3.4rem}
#reader_progress .prose {font-size:1.4rem}
#reader_case .prose, #reader_truth .prose, #reader_similar .prose, #reader_score .prose {font-size:1.15rem}
#reader_truth h2 {font-size:1.8rem; margin:0.2rem 0 0.4rem}
#reader_answer .wrap, #reader_revision .wrap {display:grid; grid-template-columns:1fr; gap:0.4rem}
#reader_answer label, #reader_revision label, #reader_excise label, #reader_excise_after label
  {font-size:1.2rem; padding:0.55rem 0.9rem}
#reader_answer input, #reader_revision input, #reader_excise input, #reader_excise_after input {width:1.15rem; height:1.15rem}
#reader_image .reader-case-image {width:100%; max-width:720px; aspect-ratio:4/3; object-fit:contain;
  border-radius:8px; display:block; margin:0 auto}
#reader_image .reader-start, #reader_image .reader-done {font-size:1.3rem; padding:2rem 1rem; text-align:center}
#reader_fusion_cam img, #reader_image_only_cam img {display:block; margin:0 auto}
#reader_models .reader-cam-note {font-size:0.9rem; text-align:center; margin:0.3rem 0 0}
#reader_score table {width:100%}
@media (max-width:600px) {
  #reader_models .reader-model {flex-direction:column}
  #reader_models .reader-model > * {width:100%}
  #reader_start, #reader_new, #reader_reveal, #reader_next, #reader_csv {font-size:1.1rem; min-height:2.8rem}
  #reader_answer label, #reader_revision label, #reader_excise label, #reader_excise_after label
    {font-size:1.05rem; padding:0.45rem 0.7rem}
  #reader_progress .prose {font-size:1.2rem}
  #reader_truth h2 {font-size:1.4rem}
  #reader_case .prose, #reader_truth .prose, #reader_similar .prose, #reader_score .prose {font-size:1rem}
  #reader_score table {font-size:0.85rem}
  #reader_score th, #reader_score td {padding:0.3rem 0.35rem; overflow-wrap:normal; word-break:normal}
}
</style>"""
# The keyboard: only while the tab is shown, never while typing in a text box, and never an arrow
# key on a focused radio (which moves its choice).
KEYS_JS = """
if (!window.readerKeys) {
  window.readerKeys = true;
  const shown = (sel) => { const e = document.querySelector(sel); return e && e.offsetParent !== null ? e : null; };
  const pick = (sel, i) => {
    const box = shown(sel);
    const inputs = box ? box.querySelectorAll('input[type=radio]') : [];
    if (i < inputs.length && !inputs[i].disabled) { inputs[i].click(); return true; }
    return false;
  };
  const press = (sel) => { const b = shown(sel); if (b && !b.disabled) { b.click(); return true; } return false; };
  document.addEventListener('keydown', (e) => {
    if (!shown('#reader_start') || e.ctrlKey || e.metaKey || e.altKey) return;   // the tab is not shown
    const t = e.target, tag = t && t.tagName;
    if (tag === 'TEXTAREA' || (t && t.isContentEditable) || (tag === 'INPUT' && t.type !== 'radio')) return;
    const k = e.key, revising = !!shown('#reader_revision');
    let done = false;
    if (k >= '1' && k <= '7') done = pick(revising ? '#reader_revision' : '#reader_answer', Number(k) - 1);
    else if ('yYnN'.includes(k) && k.length === 1) done = pick(revising ? '#reader_excise_after' : '#reader_excise', 'yY'.includes(k) ? 0 : 1);
    else if (k === 'r' || k === 'R') done = press('#reader_reveal');
    else if (k === 'PageDown' || (k === 'ArrowRight' && tag !== 'INPUT')) done = press('#reader_next');
    if (done) e.preventDefault();
  });
}
"""


@dataclass
class ReaderTab:
    """The tab's components, as `layout` placed them."""
    code: gr.Textbox
    start: gr.Button
    new_deck: gr.Button
    progress: gr.Markdown
    image: gr.HTML
    case: gr.Markdown
    first: gr.Column           # the first answer and Reveal, shown until revealed
    answer: gr.Radio
    excise: gr.Radio
    reveal: gr.Button
    truth: gr.Markdown
    revise: gr.Column          # the revision and Next, shown once revealed
    revision: gr.Radio
    excise_after: gr.Radio
    next: gr.Button
    models: gr.Row             # both models and the similar cases' vote, shown once revealed
    fusion_probs: gr.Label
    fusion_cam: gr.HTML
    image_only_probs: gr.Label
    image_only_cam: gr.HTML
    similar: gr.Markdown
    score: gr.Markdown
    csv: gr.Button
    csv_file: gr.File          # hidden: the CSV the browser is handed, then downloads
    state: gr.State

    @property
    def outputs(self) -> list:
        """What every reader event may change."""
        return [self.code, self.progress, self.image, self.case, self.first, self.answer, self.excise, self.reveal,
                self.truth,
                self.revise, self.revision, self.excise_after, self.next, self.models, self.fusion_probs,
                self.fusion_cam, self.image_only_probs, self.image_only_cam, self.similar, self.score, self.state]


def layout() -> ReaderTab:
    """Places the tab's components; call inside its gr.Tab. No events here."""
    c = {}
    gr.HTML(STYLE, js_on_load=KEYS_JS, elem_id="reader_keys")
    gr.Markdown(INTRO, elem_id="reader_intro")
    with gr.Row(equal_height=True):
        c["code"] = gr.Textbox(label="Deck code", placeholder="blank = a new deck", max_lines=1, elem_id="reader_code",
                               scale=2, min_width=180)
        c["start"] = gr.Button("Start deck", variant="primary", elem_id="reader_start", scale=1, min_width=150)
        c["new_deck"] = gr.Button("New deck", elem_id="reader_new", scale=1, min_width=150)
    c["progress"] = gr.Markdown(elem_id="reader_progress")
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            c["image"] = gr.HTML(f"<p class='reader-start'>{START_TEXT}</p>", elem_id="reader_image", js_on_load=None)
            c["case"] = gr.Markdown(elem_id="reader_case")
            c["truth"] = gr.Markdown(elem_id="reader_truth")
        with gr.Column(scale=2, min_width=300):
            # Before the reveal: the first answer and Reveal; after it, in their place, the revision and Next.
            with gr.Column(elem_id="reader_first") as c["first"]:
                c["answer"] = gr.Radio(DIAGNOSES, label="Your diagnosis", elem_id="reader_answer", interactive=False)
                c["excise"] = gr.Radio(EXCISE_CHOICES, label="Would you excise or biopsy? (optional)",
                                       elem_id="reader_excise", interactive=False)
                c["reveal"] = gr.Button("Reveal", variant="primary", elem_id="reader_reveal", interactive=False)
            with gr.Column(visible=False, elem_id="reader_revise") as c["revise"]:
                c["revision"] = gr.Radio(DIAGNOSES, label="Your answer after seeing the models: keep it, or change it",
                                         elem_id="reader_revision")
                c["excise_after"] = gr.Radio(EXCISE_CHOICES, label="Excise or biopsy, after seeing the models",
                                             elem_id="reader_excise_after")
                c["next"] = gr.Button("Next case", variant="primary", elem_id="reader_next")
    with gr.Row(visible=False, elem_id="reader_models") as c["models"]:
        for key, title in (("fusion", "Fusion model (image + age, sex, site)"), ("image_only", "Image-only model")):
            # Probabilities beside the heatmap on a wide screen, above it on a phone.
            with gr.Row(elem_classes=["reader-model"]):
                c[f"{key}_probs"] = gr.Label(num_top_classes=4, label=title, elem_id=f"reader_{key}_probs",
                                             min_width=260)
                c[f"{key}_cam"] = gr.HTML(elem_id=f"reader_{key}_cam", js_on_load=None, min_width=260)
    c["similar"] = gr.Markdown(elem_id="reader_similar")
    c["score"] = gr.Markdown(score_markdown(score(()), DECK_SIZE), elem_id="reader_score")
    c["csv"] = gr.Button("Download my answers (CSV)", elem_id="reader_csv")
    c["csv_file"] = gr.File(visible="hidden", elem_id="reader_csv_file", interactive=False)
    gr.Markdown(ATTRIBUTION, elem_id="reader_attribution")
    c["state"] = gr.State(ReaderSession())   # this reader's deck and answers, in memory only
    return ReaderTab(**c)


READER_SLIPS = (ReaderError, ChoiceError)   # mistakes the reader can put right; the message is shown as is


def shown(t: ReaderTab, view: ReaderView, session: ReaderSession) -> dict:
    """What one event shows, as {component: update}: the view's values, which controls are open in
    its phase, and the session."""
    values = view.shown()
    answering, revealed = view.phase == ANSWERING, view.phase == REVEALED

    def radio(name, interactive, **extra):
        return gr.update(interactive=interactive, **({"value": values[name]} if name in values else {}), **extra)

    out = {getattr(t, name): value for name, value in values.items()
           if name not in ("phase", "answer", "excise", "revision", "excise_after")}
    out[t.answer] = radio("answer", answering)
    out[t.excise] = radio("excise", answering)
    out[t.revision] = radio("revision", True)
    out[t.excise_after] = radio("excise_after", True)
    out[t.reveal] = gr.update(interactive=answering)
    out[t.first] = gr.update(visible=answering)
    out[t.revise] = gr.update(visible=revealed)
    out[t.models] = gr.update(visible=revealed)
    out[t.state] = session
    return out


def on_tab(t: ReaderTab, event: Callable, nothing: Callable = gr.skip) -> Callable:
    """event as the tab calls it (its signature, name and docstring kept: Gradio reads them): a
    (ReaderView, session) shown, anything else (a served file's path) as it is. A slip (Reveal before
    a diagnosis is chosen, a malformed deck code, ...) is one warning toast and nothing() is returned
    (every output skipped): gr.Error would mark each output with an "Error" badge whose overlay takes
    the clicks on the choices, and the reader's deck, answers and place are kept."""
    @functools.wraps(event)
    def call(*values, **named):
        try:
            result = event(*values, **named)
        except READER_SLIPS as e:
            warn(e)
            return nothing()
        return shown(t, *result) if isinstance(result, tuple) else result
    return call


def forgetting(demo: gr.Blocks, t: ReaderTab) -> Callable:
    """What the page's unload calls: a closed page's reader state goes now, not after Gradio's hour
    for a reopened page."""
    def forget(request: gr.Request) -> None:
        holder = getattr(demo, "state_holder", None)
        sessions = getattr(holder, "session_data", {})
        session = sessions.get(request.session_hash) if request else None
        if session is not None:
            session.state_data.pop(t.state._id, None)
    return forget


def wire(t: ReaderTab, events: ReaderEvents, demo: gr.Blocks | None, model_queue: dict, download_js: str) -> None:
    """Connects the tab's components to its events. Reveal runs the models, so it waits in the models'
    one queue."""
    private = {"api_visibility": "private"}
    tab = functools.partial(on_tab, t)
    gr.on([t.start.click, t.code.submit], tab(events.start), [t.code, t.state], t.outputs, **private)
    t.new_deck.click(tab(events.new_deck), [t.state], t.outputs, **private)
    t.reveal.click(tab(events.reveal), [t.answer, t.excise, t.state], t.outputs, **private, **model_queue)
    t.next.click(tab(events.next), [t.revision, t.excise_after, t.state], t.outputs, **private)
    # Handed to the hidden File, fetched by the browser as a download, which removes it (ServeOnce). No
    # answers yet: a warning, and None (the download that follows fetches nothing).
    t.csv.click(tab(events.answers_csv, nothing=lambda: None), [t.state], t.csv_file, **private).success(
        None, t.csv_file, None, js=download_js)
    if demo is not None:
        demo.unload(forgetting(demo, t))
