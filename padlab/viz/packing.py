"""Chapter 04 figures: packed rows, packing efficiency, attention masks, equality proofs, strategies side by side."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .._validate import check_int, fail
from .style import (EMPTY_COLOUR, GUIDE_COLOUR, MEASURE_COLOURS, PAD_QUERY_COLOUR, SEQUENCE_COLOURS, colours_for,
                    new_figure)

__all__ = ["pack_bars", "packing_efficiency_vs_capacity", "attention_mask_panels", "max_difference_bars",
           "strategy_efficiency_bars"]


def _pack_arrays(pack_lengths, capacity) -> tuple[list[np.ndarray], int]:
    capacity = check_int("capacity", capacity, min_value=1)
    packs = [np.asarray(p) for p in pack_lengths]
    if not packs:
        raise fail("pack_lengths", pack_lengths, "hold at least one pack")
    for p, lens in enumerate(packs):
        if lens.ndim != 1 or lens.size == 0 or not np.issubdtype(lens.dtype, np.integer) or lens.min() < 1:
            raise fail(f"pack_lengths[{p}]", lens.tolist(), "be a non-empty list of lengths >= 1")
        if lens.sum() > capacity:
            raise fail(f"pack_lengths[{p}]", lens.tolist(), f"fit in capacity={capacity} (sum {int(lens.sum())})")
    return packs, capacity


def pack_bars(pack_lengths, capacity: int, *, pack_names=None, title: str = "") -> Figure:
    """Packs drawn as rows of ``capacity`` tokens: one coloured segment per sequence, then the empty tail.

    ``pack_lengths[p]`` are the (kept) lengths of pack ``p``'s sequences in row order, e.g.
    ``[result.lengths[i] for i in result.packs[:12]]`` for a :class:`padlab.packing.PackResult`.
    A sequence's length is written inside its segment where it fits; the right margin says how
    many sequences and tokens each row holds. ``pack_names`` label the rows (default ``pack 0``, ...).
    """
    packs, capacity = _pack_arrays(pack_lengths, capacity)
    names = [f"pack {p}" for p in range(len(packs))] if pack_names is None else [str(n) for n in pack_names]
    if len(names) != len(packs):
        raise fail("pack_names", pack_names, f"name each of the {len(packs)} packs")
    fig, ax = new_figure(figsize=(8.5, 0.34 * len(packs) + 1.3))
    lens = np.concatenate(packs)
    rows = np.repeat(np.arange(len(packs)), [p.size for p in packs])
    ends = np.concatenate([np.cumsum(p) for p in packs])
    lefts = ends - lens
    slot = np.concatenate([np.arange(p.size) for p in packs])
    colours = [SEQUENCE_COLOURS[k % len(SEQUENCE_COLOURS)] for k in slot]
    ax.barh(rows, lens, left=lefts, height=0.78, color=colours, edgecolor="white", lw=0.6)
    used = np.array([int(p.sum()) for p in packs])
    ax.barh(np.arange(len(packs)), capacity - used, left=used, height=0.78, color=EMPTY_COLOUR, edgecolor="0.6",
            hatch="////", lw=0.5)
    for r, left, n in zip(rows, lefts, lens):
        if n >= 0.035 * capacity:
            ax.text(left + n / 2, r, str(n), ha="center", va="center", fontsize=7, color="white")
    for r, (p, u) in enumerate(zip(packs, used)):
        ax.text(capacity * 1.01, r, f"{p.size} seq, {u}/{capacity}", va="center", ha="left", fontsize=7,
                clip_on=False)
    ax.set_yticks(np.arange(len(packs)), names)
    ax.set_ylim(len(packs) - 0.5, -0.5)
    ax.set_xlim(0, capacity)
    ax.grid(False)
    ax.set_xlabel("position in the row (tokens): one colour per sequence (its length inside), "
                  "hatched = empty tail")
    ax.set_title(title or f"{len(packs)} packs of {capacity} tokens")
    return fig


def packing_efficiency_vs_capacity(capacities, efficiency_by_series: dict[str, list[float]], *,
                                   truncated_by_series: dict[str, list[float]] | None = None,
                                   corpus: str = "", current: int | None = None) -> Figure:
    """Packing efficiency (real / row tokens, as %) against the capacity, one line per series;
    with ``truncated_by_series`` a second panel shows the share of real tokens truncation dropped."""
    panels = 1 if truncated_by_series is None else 2
    fig, axes = new_figure(figsize=(5.2 * panels, 3.5), ncols=panels, squeeze=False)
    left = axes[0][0]
    # Dashed and dotted lines after the first: algorithms often tie, and a tie must stay visible.
    styles = ("-", "--", ":", "-.")
    colours = colours_for(efficiency_by_series)
    for i, ((label, eff), marker) in enumerate(zip(efficiency_by_series.items(), "osD^v<>")):
        left.plot(capacities, np.asarray(eff, dtype=float) * 100, marker=marker, ms=4, ls=styles[i % 4], label=label,
                  color=colours[i])
    left.set_ylabel("efficiency: real / row tokens (%)")
    left.set_title(f"Packing efficiency{' on ' + corpus if corpus else ''}")
    if truncated_by_series is not None:
        right = axes[0][1]
        cut_colours = colours_for(truncated_by_series)
        for i, ((label, cut), marker) in enumerate(zip(truncated_by_series.items(), "osD^v<>")):
            right.plot(capacities, np.asarray(cut, dtype=float) * 100, marker=marker, ms=4, ls=styles[i % 4],
                       label=label, color=cut_colours[i])
        right.set_ylabel("truncated: % of real tokens")
        right.set_title("What sequences longer than a row lose")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(capacities), [f"{c:g}" for c in capacities])
        ax.minorticks_off()
        ax.set_xlabel("capacity (tokens per row)")
        if current is not None:
            ax.axvline(current, color=GUIDE_COLOUR, ls="--", lw=1, label=f"capacity = {current}")
        ax.legend(fontsize=8)
    return fig


def attention_mask_panels(masks: dict[str, np.ndarray], *, seq_ids=None, title: str = "") -> Figure:
    """Square attention masks side by side (``True`` = the query, a row, may attend to the key, a column).

    With ``seq_ids`` (one per position, ``-1`` on padding), an allowed cell takes the colour of
    its query's sequence (as in :func:`pack_bars`), a padding query's allowed cells are grey, and
    thin lines mark where sequences start.
    """
    mats = {name: np.asarray(m, dtype=bool) for name, m in masks.items()}
    for name, m in mats.items():
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise fail(f"masks[{name!r}]", m.shape, "be a square 2-D mask")
    size = next(iter(mats.values())).shape[0]
    sid = None if seq_ids is None else np.asarray(seq_ids).reshape(-1)
    if sid is not None and sid.size != size:
        raise fail("seq_ids", sid.tolist(), f"hold one id per position ({size})")
    palette = np.array([to_rgb(c) for c in SEQUENCE_COLOURS])
    if sid is None:
        row_colour = np.tile(to_rgb(SEQUENCE_COLOURS[0]), (size, 1))
    else:
        row_colour = np.where((sid >= 0)[:, None], palette[np.maximum(sid, 0) % len(palette)],
                              to_rgb(PAD_QUERY_COLOUR))
    fig, axes = new_figure(figsize=(3.6 * len(mats) + 0.4, 4.0), ncols=len(mats), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items()):
        img = np.where(m[:, :, None], row_colour[:, None, :], to_rgb(EMPTY_COLOUR))
        ax.imshow(img, interpolation="nearest")
        if sid is not None:
            for b in np.flatnonzero(np.diff(sid)) + 0.5:
                ax.axhline(b, color="white", lw=0.6)
                ax.axvline(b, color="white", lw=0.6)
        ax.grid(False)
        ax.set_title(f"{name}\n{int(m.sum()):,} of {m.size:,} scores allowed", fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    handles = [plt.Rectangle((0, 0), 1, 1, color=SEQUENCE_COLOURS[0]),
               plt.Rectangle((0, 0), 1, 1, color=EMPTY_COLOUR)]
    labels = ["may attend" + (" (colour: the query's sequence)" if sid is not None else ""), "masked"]
    if sid is not None and (sid < 0).any():
        handles.append(plt.Rectangle((0, 0), 1, 1, color=PAD_QUERY_COLOUR))
        labels.append("padding query (output ignored)")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def max_difference_bars(groups, series: dict[str, list[float]], *, threshold: float | None = None,
                        ylabel: str = "max |difference|", title: str = "") -> Figure:
    """Grouped bars of differences on a log axis (one group per item, one bar per series).

    Made for equality proofs: a mechanism's differences sit at float rounding, the negative
    control's orders of magnitude above ``threshold`` (a dashed line). Exact zeros are drawn at
    1e-10 and marked "0".
    """
    groups = [str(g) for g in groups]
    fig, ax = new_figure(figsize=(max(5.0, 1.3 * len(groups) + 2.5), 3.6))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    floor = 1e-10
    for i, ((label, vals), colour) in enumerate(zip(series.items(), SEQUENCE_COLOURS)):
        v = np.asarray(vals, dtype=float)
        pos = x + (i - (len(series) - 1) / 2) * width
        ax.bar(pos, np.maximum(v, floor), width=width, color=colour, label=label)
        for p in pos[v == 0]:
            ax.text(p, floor * 1.5, "0", ha="center", va="bottom", fontsize=7)
    if threshold is not None:
        ax.axhline(threshold, color="0.2", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def strategy_efficiency_bars(table: dict[str, dict[str, dict[str, float]]], *, title: str = "") -> Figure:
    """Token and attention efficiency (as %) of each strategy, one panel per corpus.

    ``table[corpus][strategy]`` is ``{"tokens": ..., "attention": ...}`` in [0, 1], e.g. from
    :class:`padlab.waste.WasteReport` ``efficiency`` and ``attention_efficiency``.
    """
    fig, axes = new_figure(figsize=(5.4 * len(table), 3.8), ncols=len(table), squeeze=False, sharey=True)
    for ax, (corpus, rows) in zip(axes[0], table.items()):
        names = list(rows)
        x = np.arange(len(names))
        for i, (key, label, colour) in enumerate((("tokens", "tokens", MEASURE_COLOURS["tokens"]),
                                                  ("attention", "attention scores", MEASURE_COLOURS["attention"]))):
            v = np.array([rows[s][key] for s in names], dtype=float) * 100
            bars = ax.bar(x + (i - 0.5) * 0.4, v, width=0.4, color=colour, label=label)
            ax.bar_label(bars, [f"{a:.1f}" if a < 10 else f"{a:.0f}" for a in v], fontsize=6.5, padding=1)
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_title(corpus)
    axes[0][0].set_ylabel("efficiency: real / computed (%)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "What each strategy computes that it needs")
    return fig
