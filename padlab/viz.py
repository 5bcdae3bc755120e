"""Plot functions: data in, matplotlib Figure out.

Nothing here computes waste, packs, rounds or trains: callers pass in what
:mod:`padlab.metrics`, :mod:`padlab.packing`, :mod:`padlab.floats` etc. computed. Each function
returns a ``matplotlib.figure.Figure`` so that notebooks, widgets and the CLI can show or save it.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__: list[str] = []


def _new(figsize=(7, 3.5), ncols: int = 1, nrows: int = 1, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kw)
    return fig, axes

# --- chapter 00: memory and time -------------------------------------------------------------

__all__ += ["parameter_memory_bars", "memory_vs_length", "cost_vs_length"]

_MEMORY_PARTS = ("weights", "gradients", "optimizer", "half_copies")
_MEMORY_COLOURS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer": "#55a868", "half_copies": "#c44e52"}


def parameter_memory_bars(breakdowns: dict[str, dict[str, dict[str, int]]]) -> Figure:
    """Stacked bars of training memory for the parameters, one panel per model config.

    ``breakdowns[config][precision]`` is a :func:`padlab.metrics.parameter_memory` dict (bytes).
    Each panel is in MiB or GiB, whichever suits its largest bar.
    """
    fig, axes = _new(figsize=(3.4 * len(breakdowns), 3.4), ncols=len(breakdowns), squeeze=False)
    for ax, (config, by_precision) in zip(axes[0], breakdowns.items()):
        names = list(by_precision)
        largest = max(b["total"] for b in by_precision.values())
        unit, scale = ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)
        bottom = np.zeros(len(names))
        for part in _MEMORY_PARTS:
            vals = np.array([by_precision[p].get(part, 0) for p in names], dtype=float) / scale
            if not vals.any():
                continue
            ax.bar(names, vals, bottom=bottom, label=part.replace("_", " "), color=_MEMORY_COLOURS[part])
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
    fig, ax = _new(figsize=(6, 3.6))
    for (label, ys), marker in zip(series.items(), "osD^v<>"):
        ax.plot(x, ys, marker=marker, label=label)
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

__all__ += ["length_histogram", "waste_vs_max_length", "mask_heatmap", "waste_vs_batch_size",
            "padded_length_distribution"]


def length_histogram(lengths_by_corpus: dict[str, np.ndarray], *, max_length: int | None = None,
                     bins: int = 60) -> Figure:
    """Token-length histograms, one panel per corpus (log count axis so the tail shows).

    ``max_length`` draws the cut-off that fixed padding would use.
    """
    fig, axes = _new(figsize=(4.2 * len(lengths_by_corpus), 3.4), ncols=len(lengths_by_corpus), squeeze=False)
    for ax, (name, lens) in zip(axes[0], lengths_by_corpus.items()):
        lens = np.asarray(lens)
        ax.hist(lens, bins=bins, color="#4c72b0")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {lens.size:,} texts")
        ax.set_xlabel("tokens per text (with [CLS] and [SEP])")
        ax.set_ylabel("texts")
        if max_length is not None:
            ax.axvline(max_length, color="#c44e52", ls="--", label=f"max_length = {max_length}")
            ax.legend(fontsize=8)
    return fig


def waste_vs_max_length(max_lengths, wasted, truncated, *, corpus: str = "", current: int | None = None) -> Figure:
    """Fixed padding's two losses against ``max_length``: padding (fraction of computed tokens)
    and truncation (fraction of real tokens dropped). Both as fractions in [0, 1]."""
    fig, ax = _new(figsize=(6.5, 3.6))
    ax.plot(max_lengths, np.asarray(wasted) * 100, marker="o", ms=3, label="padding: % of computed tokens")
    ax.plot(max_lengths, np.asarray(truncated) * 100, marker="s", ms=3, label="truncated: % of real tokens")
    if current is not None:
        ax.axvline(current, color="0.3", ls="--", lw=1, label=f"max_length = {current}")
    ax.set_xlabel("max_length (tokens)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"Fixed padding{' on ' + corpus if corpus else ''}: wasted against truncated")
    ax.legend(fontsize=8)
    return fig


def mask_heatmap(input_ids, attention_mask, *, position_ids=None, title: str = "") -> Figure:
    """A padded batch drawn cell by cell: ids (pads greyed), the attention mask, and position ids.

    Each panel is a ``B x W`` grid annotated with its values (keep batches small).
    """
    panels = [("input_ids", np.asarray(input_ids)), ("attention_mask", np.asarray(attention_mask))]
    if position_ids is not None:
        panels.append(("position_ids", np.asarray(position_ids)))
    mask = panels[1][1].astype(bool)
    rows, width = mask.shape
    fig, axes = _new(figsize=(min(max(0.42 * width, 4.0), 7.5), 0.42 * rows * len(panels) + 0.9), nrows=len(panels),
                     squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels):
        ax.imshow(mask, cmap=ListedColormap(["#eeeeee", "#9ecae1"]), vmin=0, vmax=1, aspect="auto")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=7, color="black" if mask[r, c] else "0.5")
        ax.set_yticks(range(rows))
        ax.set_xticks(range(width))
        ax.tick_params(labelsize=7)
        ax.grid(False)
        ax.set_ylabel("row", fontsize=8)
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("column (blue = real token, grey = padding)", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def waste_vs_batch_size(batch_sizes, efficiency_by_series: dict[str, list[float]], *, corpus: str = "",
                        current: int | None = None) -> Figure:
    """Token efficiency (real / computed) against batch size, one line per strategy, as %."""
    fig, ax = _new(figsize=(6.5, 3.6))
    for (label, eff), marker in zip(efficiency_by_series.items(), "osD^v"):
        ax.plot(batch_sizes, np.asarray(eff) * 100, marker=marker, label=label)
    if current is not None:
        ax.axvline(current, color="0.3", ls="--", lw=1, label=f"batch size = {current}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (texts)")
    ax.set_ylabel("efficiency: real / computed tokens (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Efficiency against batch size{' on ' + corpus if corpus else ''}")
    ax.legend(fontsize=8)
    return fig


def padded_length_distribution(widths_by_series: dict[str, np.ndarray], *, title: str = "") -> Figure:
    """Histogram of per-batch padded widths (the tensor's sequence dimension), one step line per strategy."""
    fig, ax = _new(figsize=(6.5, 3.6))
    hi = max(int(np.max(w)) for w in widths_by_series.values())
    bins = np.linspace(0, hi + 1, 65)
    for label, widths in widths_by_series.items():
        ax.hist(np.asarray(widths), bins=bins, histtype="step", lw=2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("padded width of a batch (tokens)")
    ax.set_ylabel("batches")
    ax.set_title(title or "How wide each batch's tensor is")
    ax.legend(fontsize=8)
    return fig

# --- chapter 03: bucketing --------------------------------------------------------------------

# --- chapter 04: packing ----------------------------------------------------------------------

# --- chapter 05: float formats ----------------------------------------------------------------

# --- chapter 06: mixed precision --------------------------------------------------------------

# --- chapter 07: benchmark --------------------------------------------------------------------

_PRECISION_COLOURS = {"fp32": "#4c72b0", "tf32": "#55a868", "fp16-amp": "#c44e52", "bf16-amp": "#8172b2"}


def bench_speedup_bars(result: dict, ax=None) -> Figure:
    """Real tokens per second of every (strategy, precision) row, relative to fixed/fp32."""
    rows = result["rows"]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    base = next((r["real_tokens_per_s"] for r in rows if r["strategy"] == "fixed" and r["precision"] == "fp32"), None)
    if ax is None:
        fig, ax = _new(figsize=(8, 3.8))
    else:
        fig = ax.figure
    width = 0.8 / max(1, len(precisions))
    x = np.arange(len(strategies))
    for j, p in enumerate(precisions):
        vals = [next((r["real_tokens_per_s"] for r in rows if r["strategy"] == s and r["precision"] == p
                      and not r.get("compiled")), np.nan) for s in strategies]
        vals = np.array(vals) / (base or 1.0)
        ax.bar(x + (j - (len(precisions) - 1) / 2) * width, vals, width, label=p,
               color=_PRECISION_COLOURS.get(p))
    ax.set_xticks(x, strategies, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("real tokens/s vs fixed fp32" if base else "real tokens/s")
    ax.set_title(f"Speed-up on {result['device']}")
    ax.legend(ncols=len(precisions), fontsize=8)
    return fig


def bench_summary(result: dict) -> Figure:
    """Three panels: speed-up bars, tokens/s against padding efficiency, peak memory."""
    fig, axes = _new(figsize=(13, 4), ncols=3)
    bench_speedup_bars(result, ax=axes[0])
    rows = result["rows"]
    for p in dict.fromkeys(r["precision"] for r in rows):
        sel = [r for r in rows if r["precision"] == p]
        axes[1].scatter([1 - r["padded_fraction"] for r in sel], [r["real_tokens_per_s"] for r in sel],
                        label=p, color=_PRECISION_COLOURS.get(p))
        for r in sel:
            axes[1].annotate(r["strategy"] + ("*" if r.get("compiled") else ""),
                             (1 - r["padded_fraction"], r["real_tokens_per_s"]), fontsize=6)
    axes[1].set_xlabel("padding efficiency (real / computed tokens)")
    axes[1].set_ylabel("real tokens/s")
    axes[1].set_yscale("log")
    axes[1].set_title("Throughput against padding efficiency")
    axes[1].legend(fontsize=8)
    mem = [r for r in rows if r.get("peak_memory_bytes")]
    if mem:
        labels = [f"{r['strategy']}/{r['precision']}" for r in mem]
        axes[2].barh(labels, [r["peak_memory_bytes"] / 2**30 for r in mem],
                     color=[_PRECISION_COLOURS.get(r["precision"]) for r in mem])
        axes[2].tick_params(axis="y", labelsize=6)
        axes[2].set_xlabel("peak memory (GiB)")
    axes[2].set_title("Peak memory per row")
    return fig
