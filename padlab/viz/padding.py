"""Chapters 01-02 figures: length histograms, fixed padding's waste and truncation, masks, dynamic padding."""
from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .style import EMPTY_COLOUR, GUIDE_COLOUR, MARK_COLOUR, SERIES_COLOURS, colours_for, new_figure

__all__ = ["length_histogram", "waste_vs_max_length", "mask_heatmap", "waste_vs_batch_size",
           "padded_length_distribution"]


def length_histogram(lengths_by_corpus: dict[str, np.ndarray], *, max_length: int | None = None,
                     bins: int = 60) -> Figure:
    """Token-length histograms, one panel per corpus (log count axis so the tail shows).

    ``max_length`` draws the cut-off that fixed padding would use.
    """
    fig, axes = new_figure(figsize=(4.2 * len(lengths_by_corpus), 3.4), ncols=len(lengths_by_corpus),
                           squeeze=False)
    for ax, (name, lens) in zip(axes[0], lengths_by_corpus.items()):
        lens = np.asarray(lens)
        ax.hist(lens, bins=bins, color=SERIES_COLOURS[0])
        ax.set_yscale("log")
        ax.set_title(f"{name}: {lens.size:,} texts")
        ax.set_xlabel("tokens per text (with [CLS] and [SEP])")
        ax.set_ylabel("texts")
        if max_length is not None:
            ax.axvline(max_length, color=MARK_COLOUR, ls="--", label=f"max_length = {max_length}")
            ax.legend(fontsize=8)
    return fig


def waste_vs_max_length(max_lengths, wasted, truncated, *, corpus: str = "", current: int | None = None) -> Figure:
    """Fixed padding's two losses against ``max_length``: padding (fraction of computed tokens)
    and truncation (fraction of real tokens dropped). Both as fractions in [0, 1]."""
    fig, ax = new_figure(figsize=(6.5, 3.6))
    ax.plot(max_lengths, np.asarray(wasted) * 100, marker="o", ms=3, color=SERIES_COLOURS[0],
            label="padding: % of computed tokens")
    ax.plot(max_lengths, np.asarray(truncated) * 100, marker="s", ms=3, color=SERIES_COLOURS[1],
            label="truncated: % of real tokens")
    if current is not None:
        ax.axvline(current, color=GUIDE_COLOUR, ls="--", lw=1, label=f"max_length = {current}")
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
    fig, axes = new_figure(figsize=(min(max(0.42 * width, 4.0), 7.5), 0.42 * rows * len(panels) + 0.9),
                           nrows=len(panels), squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], panels):
        ax.imshow(mask, cmap=ListedColormap([EMPTY_COLOUR, "#9ecae1"]), vmin=0, vmax=1, aspect="auto")
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
    fig, ax = new_figure(figsize=(6.5, 3.6))
    colours = colours_for(efficiency_by_series)
    for (label, eff), marker, colour in zip(efficiency_by_series.items(), "osD^v" * len(colours), colours):
        ax.plot(batch_sizes, np.asarray(eff) * 100, marker=marker, label=label, color=colour)
    if current is not None:
        ax.axvline(current, color=GUIDE_COLOUR, ls="--", lw=1, label=f"batch size = {current}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [f"{v:g}" for v in batch_sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size (texts)")
    ax.set_ylabel("efficiency: real / computed tokens (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Efficiency against batch size{' on ' + corpus if corpus else ''}")
    ax.legend(fontsize=8)
    return fig


def padded_length_distribution(widths_by_series: dict[str, np.ndarray], *, title: str = "") -> Figure:
    """Histogram of per-batch padded widths (the tensor's sequence dimension), one step line per strategy."""
    fig, ax = new_figure(figsize=(6.5, 3.6))
    hi = max(int(np.max(w)) for w in widths_by_series.values())
    bins = np.linspace(0, hi + 1, 65)
    for (label, widths), colour in zip(widths_by_series.items(), colours_for(widths_by_series)):
        ax.hist(np.asarray(widths), bins=bins, histtype="step", lw=2, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("padded width of a batch (tokens)")
    ax.set_ylabel("batches")
    ax.set_title(title or "How wide each batch's tensor is")
    ax.legend(fontsize=8)
    return fig

# --- chapter 03: bucketing --------------------------------------------------------------------
