"""Chapter 00 figures: what parameters, activations and attention cost, against length."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .style import MEMORY_COLOURS, colours_for, new_figure

__all__ = ["parameter_memory_bars", "memory_vs_length", "cost_vs_length"]


_MEMORY_PARTS = ("weights", "gradients", "optimizer", "half_copies")


def parameter_memory_bars(breakdowns: dict[str, dict[str, dict[str, int]]]) -> Figure:
    """Stacked bars of training memory for the parameters, one panel per model config.

    ``breakdowns[config][precision]`` is a :func:`padlab.cost.parameter_memory` result (bytes).
    Each panel is in MiB or GiB, whichever suits its largest bar.
    """
    fig, axes = new_figure(figsize=(3.4 * len(breakdowns), 3.4), ncols=len(breakdowns), squeeze=False)
    for ax, (config, by_precision) in zip(axes[0], breakdowns.items()):
        names = list(by_precision)
        largest = max(b["total"] for b in by_precision.values())
        unit, scale = ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)
        bottom = np.zeros(len(names))
        for part in _MEMORY_PARTS:
            vals = np.array([by_precision[p].get(part, 0) for p in names], dtype=float) / scale
            if not vals.any():
                continue
            ax.bar(names, vals, bottom=bottom, label=part.replace("_", " "), color=MEMORY_COLOURS[part])
            bottom += vals
        n = next(iter(by_precision.values()))["parameters"]
        ax.set_title(f"{config}: {n / 1e6:.2f} M parameters")
        ax.set_ylabel(f"memory ({unit})")
        ax.set_xlabel("precision")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.suptitle("Parameters cost memory before any activation: weights, gradients, optimizer state")
    return fig


def memory_vs_length(x, series: dict[str, list[float]], *, xlabel: str = "sequence length L (tokens)",
                     ylabel: str = "saved for backward (MiB)", title: str = "Activation memory",
                     unit_bytes: int = 2**20) -> Figure:
    """Measured bytes (one line per backend or setting) against ``x``, on log-log axes.

    ``series`` maps a label to bytes, one per ``x``; bytes are divided by ``unit_bytes`` for display.
    """
    return cost_vs_length(x, {k: np.asarray(v, dtype=float) / unit_bytes for k, v in series.items()},
                          xlabel=xlabel, ylabel=ylabel, title=title)


def cost_vs_length(x, series: dict[str, list[float]], *, xlabel: str = "sequence length L (tokens)",
                   ylabel: str = "cost", title: str = "", loglog: bool = True) -> Figure:
    """One line per series against ``x`` (log-log by default, where a power law is a straight line)."""
    fig, ax = new_figure(figsize=(6, 3.6))
    for (label, ys), marker, colour in zip(series.items(), "osD^v<>" * len(series), colours_for(series)):
        ax.plot(x, ys, marker=marker, label=label, color=colour)
    if loglog:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(x), [f"{v:g}" for v in x])  # the measured points, in plain numbers
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig

# --- chapters 01-02: fixed and dynamic padding -----------------------------------------------
