"""The app's two plots, drawn from a plain Analysis: the Shapley waterfall and the what-if.

Each is a Plotly figure written as plain JSON and drawn in the browser by the plotly.js that
Gradio ships (offline). The server only builds a small dict, about a millisecond, where a
matplotlib figure took 0.1-0.3 s to draw and encode: a live what-if update stays fast.
"""
from __future__ import annotations

import json

from gradio.components.plot import PlotData

from ..analysis.analysis import Analysis

LINE_COLOURS = ("#1d3557", "#e63946", "#2a9d8f", "#f4a261")
FIELDS = ("age", "sex", "site")
FONT = {"size": 12}


def plotly(figure: dict) -> PlotData:
    """A figure spec ({"data": [...], "layout": {...}}) as gr.Plot's value."""
    return PlotData(type="plotly", plot=json.dumps(figure))


def _metadata_label(a: Analysis, name: str) -> str:
    value = a.metadata[name]
    if name not in a.entered():
        return f"{name}: not entered"
    return f"{name} = {value:g}" if name == "age" else f"{name} = {value}"


def _vline(x: float, xref: str, yref: str, **line) -> dict:
    return {"type": "line", "xref": xref, "yref": f"{yref} domain", "x0": x, "x1": x, "y0": 0, "y1": 1,
            "line": {"width": 1, **line}}


def shap_spec(a: Analysis) -> dict:
    """Waterfall: base (nothing entered) -> + age, sex, site -> the fusion probability.

    The value labels sit in their own column right of the plot, so neither a bar nor a
    reference line ever crosses one."""
    s = a.shap
    names = list(s.contributions)
    values = [s.contributions[n] for n in names]
    starts, end = [], s.base
    for v in values:
        starts.append(end)
        end += v
    lo, hi = min([s.base, s.value] + starts), max([s.base, s.value] + starts)
    pad = max(0.05, 0.25 * (hi - lo))
    labels = [_metadata_label(a, n) for n in names]
    bars = {"type": "bar", "orientation": "h", "y": labels, "x": values, "base": starts,
            "marker": {"color": ["#2a9d8f" if v >= 0 else "#e76f51" for v in values]},
            "hovertemplate": "%{y}: %{x:+.3f}<extra></extra>", "width": 0.6}
    values_column = [{"text": f"{v:+.3f}", "xref": "paper", "x": 1.0, "xanchor": "left", "yref": "y", "y": label,
                      "showarrow": False} for label, v in zip(labels, values)]
    layout = {
        "title": {"text": f"How age, sex and site moved P({s.cls})", "font": {"size": 14}},
        "height": 260, "margin": {"l": 10, "r": 60, "t": 40, "b": 50}, "font": FONT, "showlegend": False,
        "xaxis": {"range": [max(0.0, lo - pad), min(1.0, hi + pad)], "zeroline": False,
                  "title": {"text": f"P({s.cls}) {s.base:.3f} (dotted) → {s.value:.3f} (solid)"}},
        "yaxis": {"autorange": "reversed", "automargin": True},
        "shapes": [_vline(s.base, "x", "y", color="grey", dash="dot"), _vline(s.value, "x", "y", color="black")],
        "annotations": values_column,
    }
    return {"data": [bars], "layout": layout}


def shap_figure(a: Analysis) -> PlotData:
    return plotly(shap_spec(a))


def what_if_classes(a: Analysis, n_top: int = 2) -> list[str]:
    """The classes the what-if plot follows: the fusion model's top ones, and melanoma."""
    ranked = sorted(a.fusion.probabilities, key=a.fusion.probabilities.get, reverse=True)
    return list(dict.fromkeys(ranked[:n_top] + ["mel"]))


# Three stacked panels (age, sex, site) as y-domains of one figure, top to bottom.
DOMAINS = {"age": (0.69, 0.95), "sex": (0.42, 0.58), "site": (0.0, 0.28)}


def what_if_spec(a: Analysis) -> dict:
    """The fusion probability of the top classes and melanoma as age, sex or site changes,
    the other two fields as entered; dashed: the image-only model, which ignores all three."""
    w = a.what_if
    classes = what_if_classes(a)
    data, shapes, notes, layout = [], [], [], {}
    for i, field in enumerate(FIELDS, start=1):
        x_id, y_id = ("x", "y") if i == 1 else (f"x{i}", f"y{i}")
        values = w[field]["values"]
        for colour, c in zip(LINE_COLOURS, classes):
            data.append({"type": "scatter", "x": values, "y": w[field]["probabilities"][c], "xaxis": x_id,
                         "yaxis": y_id, "mode": "lines+markers" if field == "age" else "markers",
                         "marker": {"color": colour, "size": 5 if field == "age" else 8},
                         "line": {"color": colour, "width": 1.5}, "name": f"fusion {c}", "legendgroup": c,
                         "showlegend": i == 1, "hovertemplate": f"{field} %{{x}}: P({c}) %{{y:.3f}}<extra></extra>"})
            shapes.append({"type": "line", "xref": f"{x_id} domain", "yref": y_id, "x0": 0, "x1": 1,
                           "y0": a.image_only.probabilities[c], "y1": a.image_only.probabilities[c],
                           "line": {"color": colour, "width": 1, "dash": "dash"}, "opacity": 0.7})
        if field in a.entered():
            shapes.append(_vline(a.metadata[field], x_id, y_id, color="grey", dash="dot"))
        others = ", ".join(_metadata_label(a, f) for f in FIELDS if f != field)
        notes.append({"text": f"{'age (years)' if field == 'age' else field} · {others}", "xref": "paper", "yref": "paper", "x": 0,
                      "y": DOMAINS[field][1], "yanchor": "bottom", "xanchor": "left", "showarrow": False,
                      "font": {"size": 11}})
        axis = "xaxis" if i == 1 else f"xaxis{i}"
        layout[axis] = {"anchor": y_id, "automargin": True,
                        **({} if field == "age" else {"type": "category", "tickangle": -45 if field == "site" else 0})}
        layout["yaxis" if i == 1 else f"yaxis{i}"] = {"domain": list(DOMAINS[field]), "range": [0, 1],
                                                      "anchor": x_id, "automargin": True, "tickformat": ".1f",
                                                      "title": {"text": "probability"}}
    # A legend entry for the dashed image-only lines, which are shapes.
    data.append({"type": "scatter", "x": [None], "y": [None], "mode": "lines", "name": "image-only (ignores metadata)",
                 "line": {"color": "grey", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    layout.update({"height": 720, "margin": {"l": 10, "r": 10, "t": 80, "b": 10}, "font": FONT,
                   "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
                   "shapes": shapes, "annotations": notes})
    return {"data": data, "layout": layout}


def what_if_figure(a: Analysis) -> PlotData:
    return plotly(what_if_spec(a))
