"""The app's two plots, drawn from a plain Analysis: the Shapley waterfall and the what-if.

Object-oriented matplotlib only (Figure, never pyplot): safe in a threaded server.
"""
from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .result import Analysis

LINE_COLOURS = ("#1d3557", "#e63946", "#2a9d8f", "#f4a261")


def _metadata_label(a: Analysis, name: str) -> str:
    value = a.metadata[name]
    if name not in a.entered():
        return f"{name}: not entered"
    return f"{name} = {value:g}" if name == "age" else f"{name} = {value}"


def shap_figure(a: Analysis) -> Figure:
    """Waterfall: base (nothing entered) -> + age, sex, site -> the fusion probability.

    Value labels sit in their own column right of the axes, so they never cover a bar.
    """
    s = a.shap
    names = list(s.contributions)
    fig = Figure(figsize=(6.4, 2.6), dpi=100)
    ax = fig.add_subplot()
    start = s.base
    for k, name in enumerate(names):
        v = s.contributions[name]
        ax.barh(k, v, left=start, color="#2a9d8f" if v >= 0 else "#e76f51", height=0.6)
        ax.text(1.02, k, f"{v:+.3f}", va="center", fontsize=9, transform=ax.get_yaxis_transform())
        start += v
    ax.axvline(s.base, color="grey", ls=":", lw=1)
    ax.axvline(s.value, color="black", lw=1)
    ax.set_yticks(range(len(names)), [_metadata_label(a, n) for n in names])
    ax.invert_yaxis()
    lo, hi = min(s.base, s.value, start), max(s.base, s.value, start)
    pad = max(0.05, 0.25 * (hi - lo))
    ax.set_xlim(max(0, lo - pad), min(1, hi + pad))
    ax.set_xlabel(f"fusion P({s.cls}): base {s.base:.3f} (dotted) -> {s.value:.3f} (solid)")
    ax.set_title(f"How age, sex and site moved P({s.cls})", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(right=0.86)   # room for the value column
    return fig


def what_if_classes(a: Analysis, n_top: int = 2) -> list[str]:
    """The classes the what-if plot follows: the fusion model's top ones, and melanoma."""
    ranked = sorted(a.fusion.probabilities, key=a.fusion.probabilities.get, reverse=True)
    return list(dict.fromkeys(ranked[:n_top] + ["mel"]))


def what_if_figure(a: Analysis) -> Figure:
    """The fusion probability of the top classes and melanoma as age, sex or site changes,
    the other two fields as entered; dashed: the image-only model, which ignores all three."""
    w = a.what_if
    classes = what_if_classes(a)
    fig = Figure(figsize=(6.4, 6.8), dpi=100)
    axes = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1.1, 0.8, 1.3]})
    for ax, field in zip(axes, ("age", "sex", "site")):
        values = w[field]["values"]
        x = list(range(len(values))) if field != "age" else values
        for colour, c in zip(LINE_COLOURS, classes):
            ax.plot(x, w[field]["probabilities"][c], "-o" if field == "age" else "o", ms=3 if field == "age" else 5,
                    color=colour, label=f"fusion {c}")
            ax.axhline(a.image_only.probabilities[c], color=colour, ls="--", lw=0.8, alpha=0.7)
        entered = a.metadata[field]
        if field in a.entered():
            ax.axvline(entered if field == "age" else values.index(entered), color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability", fontsize=8)
        others = [_metadata_label(a, f) for f in ("age", "sex", "site") if f != field]
        ax.set_title(f"varying {field} ({', '.join(others)})", fontsize=9)
        if field == "age":
            ax.set_xlabel("age (years)", fontsize=8)
        else:
            ax.set_xticks(x, values, rotation=40 if field == "site" else 0, ha="right" if field == "site" else "center",
                          fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", ls="--", lw=0.8))
    labels.append("image-only (ignores metadata)")
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
