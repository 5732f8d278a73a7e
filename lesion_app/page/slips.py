"""A slip the user can put right (no image, an age that is not a number, Reveal before a diagnosis is
chosen, ...), on the page: one warning toast, and the event leaves every output as it was
(gr.skip()). gr.Error is kept for the API endpoints, whose callers read it: on the page it would mark
every output of the event with an "Error" badge whose overlay takes the clicks."""
from __future__ import annotations

import html

import gradio as gr


def warn(error: Exception) -> None:
    """The slip's plain message as a warning toast. Escaped: Gradio renders a toast's text as HTML, and
    a message may quote what the user typed (a deck code)."""
    gr.Warning(html.escape(str(error), quote=False))
