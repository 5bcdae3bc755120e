"""Plot functions: data in, matplotlib Figure out.

Nothing here computes waste, packs, rounds or trains: callers pass in what
:mod:`padlab.metrics`, :mod:`padlab.packing`, :mod:`padlab.floats` etc. computed. Each function
returns a ``matplotlib.figure.Figure`` so that notebooks, widgets and the CLI can show or save it.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure

from ._validate import check_int, fail

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

__all__ += ["bucketing_tradeoff", "loss_by_step", "accuracy_by_seed", "token_budget_batches", "ddp_assignment"]


def _mega_label(m) -> str:
    return "full" if not m else f"{m:g}"


def _within(eta):
    """1 - eta² in %, floored at 0.01% so a log axis can show a perfect sort."""
    return np.maximum((1 - np.asarray(eta, dtype=float)) * 100, 0.01)


def bucketing_tradeoff(mega_batches, efficiency: dict[str, list[float]], eta_squared: dict[str, list[float]], *,
                       corpus: str = "", current: tuple | None = None) -> Figure:
    """Bucketing's trade-off: padding efficiency against how much batch membership depends on length.

    ``mega_batches`` are the pool sizes measured (0 or ``None``: a full sort); ``efficiency`` and
    ``eta_squared`` map a series label (e.g. a noise level) to one value per pool size, both
    fractions in [0, 1]. Left: both against the pool size; right: one against the other.
    ``current = (mega_batch, efficiency, eta_squared)`` marks the point a widget is set to.
    """
    labels = [_mega_label(m) for m in mega_batches]
    x = np.arange(len(labels))
    fig, (left, right) = _new(figsize=(10, 3.8), ncols=2)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, eff), colour in zip(efficiency.items(), colours):
        eta = np.asarray(eta_squared[name], dtype=float)
        eff = np.asarray(eff, dtype=float)
        left.plot(x, eff * 100, marker="o", color=colour, label=f"efficiency, {name}")
        left.plot(x, eta * 100, marker="s", ls="--", color=colour, label=f"eta², {name}")
        right.plot(_within(eta), eff * 100, marker="o", color=colour, label=name)
    first = next(iter(efficiency))
    for lab, e, t in zip(labels, efficiency[first], eta_squared[first]):
        right.annotate(lab, (_within(t), e * 100), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if current is not None:
        m, e, t = current
        if m is not None and _mega_label(m) in labels:
            left.axvline(labels.index(_mega_label(m)), color="0.3", ls=":", lw=1)
        right.plot([_within(t)], [e * 100], marker="*", ms=16, color="#c44e52", ls="none",
                   label=f"mega_batch {_mega_label(m)}")
    left.set_xticks(x, labels)
    left.set_xlabel("mega_batch (pool size in batches; 1 = random batches)")
    left.set_ylabel("%")
    left.set_ylim(0, 102)
    left.set_title(f"Pool size{' on ' + corpus if corpus else ''}")
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_xticks([0.1, 1, 10, 100], ["0.1", "1", "10", "100"])
    right.set_xlabel("1 − eta²: length variance left inside batches (%, log scale)")
    right.set_ylabel("efficiency: real / computed tokens (%)")
    right.set_title("More randomness costs padding")
    right.legend(fontsize=7, loc="upper right")
    return fig


def loss_by_step(losses: dict[str, np.ndarray], mean_lengths: dict[str, np.ndarray], *,
                 epoch_steps: int | None = None, title: str = "") -> Figure:
    """Training loss per optimizer step (top) and the mean length of each step's batch (bottom),
    one line per batch order; dotted lines mark epoch starts every ``epoch_steps`` steps."""
    fig, (top, bottom) = _new(figsize=(10, 5), nrows=2, sharex=True, height_ratios=(3, 2))
    for name, loss in losses.items():
        top.plot(np.arange(len(loss)), loss, lw=1.1, label=name)
        bottom.plot(np.arange(len(mean_lengths[name])), mean_lengths[name], lw=1.1, label=name)
    n = max(len(v) for v in losses.values())
    if epoch_steps:
        for s in range(epoch_steps, n, epoch_steps):
            for ax in (top, bottom):
                ax.axvline(s, color="0.5", ls=":", lw=0.8)
    top.set_ylabel("training loss")
    top.set_title(title or "Loss per step")
    top.legend(fontsize=8, loc="upper right")
    bottom.set_ylabel("mean length\nof the batch (tokens)")
    bottom.set_xlabel("optimizer step" + (f" (dotted: a new epoch every {epoch_steps} steps)" if epoch_steps else ""))
    return fig


def accuracy_by_seed(accuracies: dict[str, list[float]], *, baseline: float | None = None,
                     baseline_label: str = "majority class", title: str = "") -> Figure:
    """Held-out accuracy per run (dots) with each order's mean ± std (bar), as %."""
    fig, ax = _new(figsize=(6.5, 3.2))
    names = list(accuracies)
    for i, name in enumerate(names):
        acc = np.asarray(accuracies[name], dtype=float) * 100
        ax.errorbar([acc.mean()], [i], xerr=[acc.std()], fmt="D", color="0.2", capsize=4, zorder=3)
        ax.scatter(acc, np.full(acc.size, i) + np.linspace(-0.12, 0.12, acc.size), s=28, alpha=0.8, zorder=2)
    if baseline is not None:
        ax.axvline(baseline * 100, color="#c44e52", ls="--", lw=1, label=f"{baseline_label} ({baseline:.1%})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.4, -0.6)     # the first order on top
    ax.set_xlabel("held-out accuracy (%): dots are seeds, diamond and bar mean ± std")
    ax.set_title(title or "Accuracy after a short run")
    return fig


def token_budget_batches(rows: dict[str, np.ndarray], tokens: dict[str, np.ndarray], *,
                         max_tokens: int | None = None, title: str = "") -> Figure:
    """Two histograms per batching: sequences per batch (left) and padded tokens per batch
    (rows x width, right), with the token budget drawn."""
    fig, (left, right) = _new(figsize=(10, 3.6), ncols=2)
    hi_rows = max(int(np.max(r)) for r in rows.values())
    hi_tok = max(int(np.max(t)) for t in tokens.values())
    for name in rows:
        left.hist(np.asarray(rows[name]), bins=np.arange(0.5, hi_rows + 1.5, max(1, hi_rows // 60)),
                  histtype="stepfilled", alpha=0.55, label=name)
        right.hist(np.asarray(tokens[name]), bins=np.linspace(0, hi_tok * 1.02, 60), histtype="stepfilled",
                   alpha=0.55, label=name)
    if max_tokens is not None:
        right.axvline(max_tokens, color="#c44e52", ls="--", lw=1.2, label=f"max_tokens = {max_tokens:,}")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_ylabel("batches")
        ax.legend(fontsize=8)
    left.set_xlabel("sequences in the batch")
    right.set_xlabel("padded tokens in the batch (rows × width)")
    left.set_title("Batch size")
    right.set_title("Tensor size")
    if title:
        fig.suptitle(title)
    return fig


def ddp_assignment(widths, *, repeated=None, title: str = "") -> Figure:
    """Which batch each rank gets at each step: a ``ranks x steps`` grid coloured and labelled
    by the batch's padded width; ``repeated`` (same shape, bool) hatches the batches that the
    remainder policy repeats."""
    w = np.asarray(widths)
    if w.ndim != 2 or w.size == 0:
        raise fail("widths", widths, "be a non-empty 2-D array (ranks x steps)")
    ranks, steps = w.shape
    fig, ax = _new(figsize=(min(0.45 * steps + 1.6, 14), 0.55 * ranks + 1.5))
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0)
    for (r, s), v in np.ndenumerate(w):
        ax.text(s, r, str(int(v)), ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 * w.max() else "black")
    if repeated is not None:
        for r, s in zip(*np.nonzero(np.asarray(repeated, dtype=bool))):
            ax.add_patch(plt.Rectangle((s - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#c44e52",
                                       lw=1.5, label="repeated batch" if (r, s) == tuple(np.argwhere(repeated)[0]) else None))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.35), frameon=False)
    ax.set_yticks(range(ranks), [f"rank {r}" for r in range(ranks)])
    ax.set_xticks(range(steps), [str(s) for s in range(steps)], fontsize=7)
    ax.set_xlabel("step (cell: the batch's padded width in tokens)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="width", shrink=0.8)
    ax.set_title(title or "Which batch goes to which rank")
    return fig

# --- chapter 04: packing ----------------------------------------------------------------------

__all__ += ["SEQUENCE_COLOURS", "pack_bars", "packing_efficiency_vs_capacity", "attention_mask_panels",
            "max_difference_bars", "strategy_efficiency_bars"]

#: One colour per sequence of a row (cycled), shared by the pack pictures and the mask heatmaps.
SEQUENCE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3",
                    "#ccb974", "#64b5cd", "#2f4b7c")
_EMPTY = "#eeeeee"      # pad slots and masked cells
_PAD_QUERY = "#9a9a9a"  # what a pad query may see (its output is thrown away)


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
    fig, ax = _new(figsize=(8.5, 0.34 * len(packs) + 1.3))
    lens = np.concatenate(packs)
    rows = np.repeat(np.arange(len(packs)), [p.size for p in packs])
    ends = np.concatenate([np.cumsum(p) for p in packs])
    lefts = ends - lens
    slot = np.concatenate([np.arange(p.size) for p in packs])
    colours = [SEQUENCE_COLOURS[k % len(SEQUENCE_COLOURS)] for k in slot]
    ax.barh(rows, lens, left=lefts, height=0.78, color=colours, edgecolor="white", lw=0.6)
    used = np.array([int(p.sum()) for p in packs])
    ax.barh(np.arange(len(packs)), capacity - used, left=used, height=0.78, color=_EMPTY, edgecolor="0.6",
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
    ax.set_xlabel("position in the row (tokens): one colour per sequence (its length inside), hatched = empty tail")
    ax.set_title(title or f"{len(packs)} packs of {capacity} tokens")
    return fig


def packing_efficiency_vs_capacity(capacities, efficiency_by_series: dict[str, list[float]], *,
                                   truncated_by_series: dict[str, list[float]] | None = None,
                                   corpus: str = "", current: int | None = None) -> Figure:
    """Packing efficiency (real / row tokens, as %) against the capacity, one line per series;
    with ``truncated_by_series`` a second panel shows the share of real tokens truncation dropped."""
    panels = 1 if truncated_by_series is None else 2
    fig, axes = _new(figsize=(5.2 * panels, 3.5), ncols=panels, squeeze=False)
    left = axes[0][0]
    # Dashed and dotted lines after the first: algorithms often tie, and a tie must stay visible.
    styles = ("-", "--", ":", "-.")
    for i, ((label, eff), marker) in enumerate(zip(efficiency_by_series.items(), "osD^v<>")):
        left.plot(capacities, np.asarray(eff, dtype=float) * 100, marker=marker, ms=4, ls=styles[i % 4], label=label)
    left.set_ylabel("efficiency: real / row tokens (%)")
    left.set_title(f"Packing efficiency{' on ' + corpus if corpus else ''}")
    if truncated_by_series is not None:
        right = axes[0][1]
        for i, ((label, cut), marker) in enumerate(zip(truncated_by_series.items(), "osD^v<>")):
            right.plot(capacities, np.asarray(cut, dtype=float) * 100, marker=marker, ms=4, ls=styles[i % 4],
                       label=label)
        right.set_ylabel("truncated: % of real tokens")
        right.set_title("What sequences longer than a row lose")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(capacities), [f"{c:g}" for c in capacities])
        ax.minorticks_off()
        ax.set_xlabel("capacity (tokens per row)")
        if current is not None:
            ax.axvline(current, color="0.3", ls="--", lw=1, label=f"capacity = {current}")
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
        row_colour = np.where((sid >= 0)[:, None], palette[np.maximum(sid, 0) % len(palette)], to_rgb(_PAD_QUERY))
    fig, axes = _new(figsize=(3.6 * len(mats) + 0.4, 4.0), ncols=len(mats), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items()):
        img = np.where(m[:, :, None], row_colour[:, None, :], to_rgb(_EMPTY))
        ax.imshow(img, interpolation="nearest")
        if sid is not None:
            for b in np.flatnonzero(np.diff(sid)) + 0.5:
                ax.axhline(b, color="white", lw=0.6)
                ax.axvline(b, color="white", lw=0.6)
        ax.grid(False)
        ax.set_title(f"{name}\n{int(m.sum()):,} of {m.size:,} scores allowed", fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    handles = [plt.Rectangle((0, 0), 1, 1, color=SEQUENCE_COLOURS[0]), plt.Rectangle((0, 0), 1, 1, color=_EMPTY)]
    labels = ["may attend" + (" (colour: the query's sequence)" if sid is not None else ""), "masked"]
    if sid is not None and (sid < 0).any():
        handles.append(plt.Rectangle((0, 0), 1, 1, color=_PAD_QUERY))
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
    fig, ax = _new(figsize=(max(5.0, 1.3 * len(groups) + 2.5), 3.6))
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
    :class:`padlab.metrics.WasteReport` ``efficiency`` and ``attention_efficiency``.
    """
    fig, axes = _new(figsize=(5.4 * len(table), 3.8), ncols=len(table), squeeze=False, sharey=True)
    for ax, (corpus, rows) in zip(axes[0], table.items()):
        names = list(rows)
        x = np.arange(len(names))
        for i, (key, label, colour) in enumerate((("tokens", "tokens", "#4c72b0"),
                                                  ("attention", "attention scores", "#dd8452"))):
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


# --- chapter 05: float formats ----------------------------------------------------------------

__all__ += ["FIELD_COLOURS", "FORMAT_COLOURS", "bit_layout", "float_bits", "value_density",
            "precision_vs_magnitude", "format_ranges"]

#: Sign, exponent and mantissa fields: (colour of a 1 bit, colour of a 0 bit), as in Float Toy.
FIELD_COLOURS = {"sign": ("#c44e52", "#f2c4c5"), "exponent": ("#4c72b0", "#c5d3ea"),
                 "mantissa": ("#55a868", "#c9e6cf")}
#: One colour per format, shared by every chapter-05 figure (halves warm, fp8 purple/brown).
FORMAT_COLOURS = {"fp64": "#333333", "fp32": "#4c72b0", "tf32": "#64b5cd", "fp16": "#c44e52",
                  "bf16": "#dd8452", "fp8-e4m3fn": "#8172b2", "fp8-e5m2": "#937860", "fp4-e2m1": "#55a868"}


def _field_cells(ax, y: float, fields: list[tuple[str, str]], *, x0: float = 0.0, height: float = 0.8,
                 digits: bool = True, fontsize: float = 8) -> None:
    """One unit-wide cell per bit at row ``y``: ``fields`` is ``[(field, "0101"), ...]`` left to right."""
    x = x0
    for field, bits in fields:
        on, off = FIELD_COLOURS[field]
        for b in bits:
            ax.add_patch(plt.Rectangle((x, y), 1, height, facecolor=on if b == "1" else off,
                                       edgecolor="white", lw=0.8))
            if digits:
                ax.text(x + 0.5, y + height / 2, b, ha="center", va="center", fontsize=fontsize,
                        color="white" if b == "1" else "0.25")
            x += 1


def _bare(ax) -> None:
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def bit_layout(rows: list[dict]) -> Figure:
    """Each format's bits as a row of cells, sign | exponent | mantissa, on one scale (one cell = one bit).

    ``rows`` are rows of :func:`padlab.floats.format_table` (``format``, ``total_bits``,
    ``exponent_bits``, ``mantissa_bits``, ``bias``, ``max``).
    """
    width = max(r["total_bits"] for r in rows)
    fig, ax = _new(figsize=(11, 0.55 * len(rows) + 1.0))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        e, m = r["exponent_bits"], r["mantissa_bits"]
        fields = [("sign", "1"), ("exponent", "1" * e), ("mantissa", "1" * m)]
        _field_cells(ax, y, fields, digits=False)
        for x, n in ((0, 1), (1, e), (1 + e, m)):
            if n:
                ax.text(x + n / 2, y + 0.4, str(n), ha="center", va="center", fontsize=8, color="white",
                        fontweight="bold")
        ax.text(-0.8, y + 0.4, f"{r['format']} ({r['total_bits']} bits)", ha="right", va="center", fontsize=9)
        ax.text(r["total_bits"] + 0.8, y + 0.4, f"bias {r['bias']}, max {r['max']:.4g}", ha="left",
                va="center", fontsize=8, color="0.3")
    ax.set_xlim(-14, width + 14)
    ax.set_ylim(-0.4, len(rows))
    _bare(ax)
    handles = [plt.Rectangle((0, 0), 1, 1, color=FIELD_COLOURS[f][0]) for f in FIELD_COLOURS]
    ax.legend(handles, ["sign", "exponent", "mantissa (stored, no hidden bit)"], ncols=3, fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False)
    ax.set_title("Bit layouts: one cell per bit; the number in a field is its width in bits")
    return fig


def float_bits(bits: object, *, title: str = "") -> Figure:
    """One value's bits coloured by field (dark = 1, light = 0), each field's meaning under it.

    ``bits`` is a :class:`padlab.floats.FloatBits` (or its ``as_dict()``): every number drawn
    comes from it.
    """
    d = bits.as_dict() if hasattr(bits, "as_dict") else dict(bits)
    n = len(d["bits"])
    e, m = len(d["exponent_bits"]), len(d["mantissa_bits"])
    fig, ax = _new(figsize=(min(11.0, 2.2 + 0.34 * n), 2.0))
    fontsize = 8 if n <= 32 else 5.5
    _field_cells(ax, 0, [("sign", d["bits"][0]), ("exponent", d["exponent_bits"]),
                         ("mantissa", d["mantissa_bits"])], fontsize=fontsize)
    kind = d["kind"]
    sign = "-" if d["sign"] else "+"
    if kind in ("normal", "subnormal"):
        lead = "1" if kind == "normal" else "0"
        b = d["biased_exponent"]
        exp_text = (f"{b} - bias {b - d['exponent']} = {d['exponent']}" if kind == "normal"
                    else f"0: subnormal, 2^{d['exponent']}")
        man_text = f"{lead}.{d['mantissa_bits']}b = {d['significand']:.10g}"
        formula = f"{sign}2^{d['exponent']} x {d['significand']:.10g} = {d['rounded']!r}"
    elif kind == "zero":
        exp_text, man_text, formula = "all zeros", "zero", f"{sign}0"
    elif kind == "inf":
        exp_text, man_text, formula = "all ones", "zero -> inf", f"{sign}inf"
    else:
        exp_text, man_text, formula = "special", "NaN", "NaN"
    for x, w, text, field in ((0, 1, sign, "sign"), (1, e, exp_text, "exponent"), (1 + e, m, man_text, "mantissa")):
        if w:
            ax.plot([x + 0.1, x + w - 0.1], [-0.15, -0.15], color=FIELD_COLOURS[field][0], lw=2)
            ax.text(x + w / 2, -0.3, text, ha="center", va="top", fontsize=8, color=FIELD_COLOURS[field][0])
    ax.text(n / 2, 1.15, f"{kind}:  {formula}", ha="center", va="bottom", fontsize=10)
    ax.set_xlim(-0.5, n + 0.5)
    ax.set_ylim(-0.9, 1.6)
    _bare(ax)
    ax.set_title(title or f"{d['value']!r} in {d['format']} ({d['hex']})", fontsize=10)
    return fig


def value_density(values_by_format: dict[str, np.ndarray], *, title: str = "") -> Figure:
    """How many representable positive values each format has per binade (``[2^k, 2^(k+1))``), log axes.

    ``values_by_format[name]`` holds a format's values (e.g. :func:`padlab.floats.all_values`);
    zeros, negatives, inf and NaN are left out. The height of a curve is the precision
    (``2**mantissa_bits`` per binade for normal numbers), its width the range.
    """
    fig, ax = _new(figsize=(9, 3.8))
    positive = {k: np.asarray(v, dtype=float) for k, v in values_by_format.items()}
    positive = {k: v[np.isfinite(v) & (v > 0)] for k, v in positive.items()}
    lo = int(np.floor(np.log2(min(v.min() for v in positive.values()))))
    hi = int(np.ceil(np.log2(max(v.max() for v in positive.values())))) + 1
    edges = np.ldexp(1.0, np.arange(lo, hi + 1))
    for name, v in positive.items():
        counts, _ = np.histogram(v, bins=edges)
        ax.stairs(counts, edges, lw=1.8, color=FORMAT_COLOURS.get(name), label=f"{name}: {v.size:,} positive values")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude (log scale; one bin per power of two)")
    ax.set_ylabel("representable values per binade")
    ax.set_title(title or "How densely each format covers the number line")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def precision_vs_magnitude(x, series: dict[str, np.ndarray], *, ylabel: str = "relative spacing ULP(x) / x",
                           title: str = "", bands: dict[str, tuple[float, float]] | None = None) -> Figure:
    """One line per format (``series[name]``, one value per ``x``) on log-log axes; NaN, inf and 0 leave gaps.

    ``bands`` shades named ranges of ``x`` (e.g. ``{"gradients": (1e-9, 1e-3)}``).
    """
    x = np.asarray(x, dtype=float)
    fig, ax = _new(figsize=(9, 3.8))
    for (label, band), colour in zip((bands or {}).items(), ("#fde0c5", "#d6e4f0", "#e2f0d9")):
        ax.axvspan(*band, color=colour, alpha=0.7, lw=0)
        ax.text(np.sqrt(band[0] * band[1]), 0.98, label, transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=8, color="0.3")
    for name, y in series.items():
        y = np.asarray(y, dtype=float)
        y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
        ax.plot(x, y, lw=1.5, color=FORMAT_COLOURS.get(name), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude x")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Precision against magnitude")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def format_ranges(rows: list[dict], *, bands: dict[str, tuple[float, float]] | None = None,
                  xlim: tuple[float, float] | None = None, title: str = "") -> Figure:
    """One bar per format from its smallest subnormal to its max on a log axis (subnormals lighter).

    ``rows`` are rows of :func:`padlab.floats.format_table`; ``bands`` shades named ranges;
    ``xlim`` cuts the axis (fp64's 632 decades would squash the rest): a bar that runs past it
    has its end value printed at the edge with an arrow.
    """
    lo, hi = xlim or (min(r["smallest_subnormal"] for r in rows) / 30, max(r["max"] for r in rows) * 30)
    fig, ax = _new(figsize=(9, 0.45 * len(rows) + 1.4))
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_autoscalex_on(False)  # fp64's bar would overflow the autoscaler's margins
    for (label, band), colour in zip((bands or {}).items(), ("#fde0c5", "#d6e4f0", "#e2f0d9")):
        ax.axvspan(*band, color=colour, alpha=0.7, lw=0, label=f"{label} ({band[0]:.0e} .. {band[1]:.0e})")
    names = [r["format"] for r in rows]
    for i, r in enumerate(rows):
        c = FORMAT_COLOURS.get(r["format"], "0.4")
        sub, low, top = r["smallest_subnormal"], r["smallest_normal"], r["max"]
        ax.barh(i, low - sub, left=sub, color=c, alpha=0.35, height=0.6)
        ax.barh(i, top - low, left=low, color=c, height=0.6)
        # End values beside the bar where there is room (a few decades), else inside it at the edge.
        room = (hi / lo) ** 0.06
        if top * room <= hi:
            ax.text(top * 3, i, f"{top:.3g}", va="center", fontsize=7)
        else:
            ax.text(min(top, hi) / 1.5, i, f"max {top:.3g}" + (" \u2192" if top > hi else ""), va="center",
                    ha="right", fontsize=7, color="white")
        if sub / room >= lo:
            ax.text(sub / 3, i, f"{sub:.3g}", va="center", ha="right", fontsize=7)
        else:
            ax.text(max(sub, lo) * 1.5, i, ("\u2190 " if sub < lo else "") + f"{sub:.3g}", va="center",
                    ha="left", fontsize=7, color="white" if lo >= low else "0.1")
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("magnitude (log scale): pale = subnormal, dark = normal")
    ax.set_title(title or "Range: from the smallest subnormal to the largest finite value")
    if bands:
        ax.legend(fontsize=8, loc="lower right")
    return fig


# --- chapter 06: mixed precision --------------------------------------------------------------

__all__ += ["autocast_dtype_grid", "gradient_histogram", "loss_scale_dynamics", "policy_curves",
            "policy_result_bars", "policy_speed_memory"]

# One colour per policy, shared by every chapter-06 figure (fp16 reds, bf16 purples, fp32 blues).
POLICY_COLOURS = {"fp32": "#4c72b0", "tf32": "#64b5cd", "fp16-amp": "#c44e52", "fp16-pure": "#f4a582",
                  "bf16-amp": "#8172b2", "bf16-pure": "#c2a5cf"}
_DTYPE_COLOURS = {"float32": "#c6dbef", "float16": "#fcbba1", "bfloat16": "#dadaeb", "int64": "#eeeeee"}
_DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "int"}


def autocast_dtype_grid(table: dict[str, dict[str, str]], *, title: str = "") -> Figure:
    """A grid of dtypes: one row per op (``table`` keys, top to bottom), one column per policy.

    ``table[op][policy]`` is ``"input dtypes -> output dtype"`` as :func:`padlab.amp.autocast_table`
    measured it (or just the output dtype); the cell's colour is the output dtype.
    """
    ops = list(table)
    policies = list(dict.fromkeys(p for row in table.values() for p in row))
    fig, ax = _new(figsize=(3.2 + 1.9 * len(policies), 1.2 + 0.34 * len(ops)))
    for i, op in enumerate(ops):
        for j, pol in enumerate(policies):
            text = table[op].get(pol, "")
            out = text.split("->")[-1].strip()
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=_DTYPE_COLOURS.get(out, "white"), ec="white", lw=2))
            parts = [",".join(_DTYPE_SHORT.get(t, t) for t in side.strip().split("+")) for side in text.split("->")]
            ax.text(j + 0.5, i + 0.5, " -> ".join(parts), ha="center", va="center", fontsize=7.5)
    ax.set_xlim(0, len(policies))
    ax.set_ylim(len(ops), 0)
    ax.set_xticks(np.arange(len(policies)) + 0.5, policies)
    ax.set_yticks(np.arange(len(ops)) + 0.5, ops, fontsize=8)
    ax.xaxis.tick_top()
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in list(_DTYPE_COLOURS.values())[:3]]
    ax.legend(handles, ["output float32", "output float16", "output bfloat16"], fontsize=7, ncols=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.01), frameon=False)
    fig.suptitle(title or "The dtype each op's output has, by policy", fontsize=10)
    return fig


def gradient_histogram(values_by_label: dict[str, np.ndarray], fmt_rows: list[dict], *, bins: int = 80,
                       title: str = "") -> Figure:
    """Histograms of ``log10 |g|`` (non-zero values) against the formats' representable ranges.

    ``fmt_rows`` are rows of :func:`padlab.floats.format_table` (``format``, ``max``,
    ``smallest_normal``, ``smallest_subnormal``). The axis spans the data and the first
    format's range; limits of other formats that fall outside it are named in a note. The band
    below half of the first format's smallest subnormal (round-to-nearest gives zero) is shaded.
    """
    fig, ax = _new(figsize=(9, 3.8))
    mags = [np.abs(np.asarray(v, dtype=float)) for v in values_by_label.values()]
    mags = [v[(v > 0) & np.isfinite(v)] for v in mags]
    first = fmt_rows[0]
    lo = min([np.log10(v.min()) for v in mags if v.size] + [np.log10(first["smallest_subnormal"]) - 1])
    hi = max([np.log10(v.max()) for v in mags if v.size] + [np.log10(first["max"]) + 0.5])
    edges = np.linspace(np.floor(lo), np.ceil(hi), bins + 1)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#8172b2"]
    for (label, v), c in zip(zip(values_by_label, mags), colours):
        ax.hist(np.log10(v), bins=edges, histtype="stepfilled", alpha=0.45, color=c, label=f"{label} ({v.size:,})")
    off_axis = []
    for row, ls in zip(fmt_rows, ("-", "--", ":")):
        for key, colour in (("smallest_subnormal", "#c44e52"), ("smallest_normal", "#dd8452"), ("max", "0.2")):
            x = np.log10(row[key])
            label = f"{row['format']} {key.replace('_', ' ')} ({row[key]:.3g})"
            if edges[0] <= x <= edges[-1]:
                ax.axvline(x, color=colour, ls=ls, lw=1.2, label=label)
            else:
                off_axis.append(label)
    flush = np.log10(first["smallest_subnormal"] / 2)
    ax.axvspan(edges[0], flush, color="#c44e52", alpha=0.08)
    ax.text(flush - 0.2, 0.97, f"{first['format']} stores 0", color="#c44e52", ha="right", va="top", fontsize=8,
            transform=ax.get_xaxis_transform())
    if off_axis:
        ax.text(1.02, 0.0, "off this axis:\n" + "\n".join(off_axis), transform=ax.transAxes, ha="left",
                va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("log10 |value|")
    ax.set_ylabel("values (log scale)")
    ax.set_yscale("log")
    ax.set_title(title or "Gradient magnitudes against the range of half precision")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def loss_scale_dynamics(scale, skipped_steps, loss=None, *, title: str = "") -> Figure:
    """The GradScaler's loss scale per step (log2 axis) with skipped steps marked, and the loss below."""
    scale = np.asarray(scale, dtype=float)
    steps = np.arange(scale.size)
    nrows = 1 if loss is None else 2
    fig, axes = _new(figsize=(8, 2.6 * nrows), nrows=nrows, squeeze=False, sharex=True)
    ax = axes[0][0]
    ax.step(steps, scale, where="post", color=POLICY_COLOURS["fp16-amp"], label="loss scale")
    sk = np.asarray(list(skipped_steps), dtype=int)
    if sk.size:
        ax.scatter(sk, scale[sk], marker="x", color="k", zorder=3, label=f"skipped step ({sk.size})")
    ax.set_yscale("log", base=2)
    ax.set_ylabel("loss scale S")
    ax.legend(fontsize=8)
    ax.set_title(title or "Dynamic loss scaling: halve on inf/NaN, double after a run of good steps")
    if loss is not None:
        lv = np.asarray(loss, dtype=float)
        axes[1][0].plot(np.arange(lv.size), lv, color="0.3", lw=1)
        if sk.size:
            axes[1][0].scatter(sk, np.where(np.isfinite(lv[sk]), lv[sk], np.nan), marker="x", color="k", zorder=3)
        axes[1][0].set_ylabel("loss")
        axes[1][0].set_yscale("log")
    axes[-1][0].set_xlabel("training step")
    return fig


def policy_curves(curves: dict[str, np.ndarray], *, ylabel: str = "training loss", title: str = "",
                  logy: bool = True, smooth: int = 1) -> Figure:
    """One line per policy (``curves[policy]`` per step); ``smooth`` > 1 draws a running mean."""
    fig, ax = _new(figsize=(7.5, 3.6))
    for pol, y in curves.items():
        y = np.asarray(y, dtype=float)
        if smooth > 1 and y.size >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
        x = np.arange(y.size) + (smooth - 1 if smooth > 1 else 0)
        ax.plot(x, y, label=pol, color=POLICY_COLOURS.get(pol), lw=1.4)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2)
    return fig


def policy_result_bars(panels: dict[str, dict[str, list[float]]], *, ylabels: dict[str, str] | None = None,
                       title: str = "") -> Figure:
    """One panel per task: a bar per policy at the mean over seeds, a dot per seed.

    ``panels[task][policy]`` lists one value per seed; NaN/inf (a diverged run) is drawn as a
    red "diverged" label instead of a bar.
    """
    ylabels = ylabels or {}
    fig, axes = _new(figsize=(4.2 * len(panels), 3.8), ncols=len(panels), squeeze=False)
    for ax, (task, by_policy) in zip(axes[0], panels.items()):
        names = list(by_policy)
        finite_all = [x for v in by_policy.values() for x in v if np.isfinite(x)]
        top = max(finite_all) if finite_all else 1.0
        for i, pol in enumerate(names):
            vals = np.asarray(by_policy[pol], dtype=float)
            ok = vals[np.isfinite(vals)]
            if ok.size == vals.size and ok.size:
                ax.bar(i, ok.mean(), color=POLICY_COLOURS.get(pol), alpha=0.85)
                ax.scatter(np.full(ok.size, i), ok, color="k", s=10, zorder=3)
            else:
                ax.text(i, top * 0.05, "diverged\n(NaN)", ha="center", va="bottom", color="#c44e52", fontsize=8,
                        rotation=90)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel(ylabels.get(task, ""))
        ax.set_title(task, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def policy_speed_memory(rows_by_model: dict[str, dict[str, tuple[float, float | None]]], *, device: str = "") -> Figure:
    """Step time and peak memory per policy, relative to fp32, one group of bars per model size.

    ``rows_by_model[model][policy] = (median step ms, peak memory bytes or None)``.
    """
    fig, axes = _new(figsize=(11, 3.8), ncols=2)
    models = list(rows_by_model)
    policies = list(dict.fromkeys(p for m in rows_by_model.values() for p in m))
    width = 0.8 / max(1, len(policies))
    for k, (ax, what) in enumerate(zip(axes, ("step time", "peak memory"))):
        for j, pol in enumerate(policies):
            vals = []
            for m in models:
                base = rows_by_model[m].get("fp32", (np.nan, None))[k]
                v = rows_by_model[m].get(pol, (np.nan, None))[k]
                vals.append(v / base if (v is not None and base) else np.nan)
            x = np.arange(len(models)) + (j - (len(policies) - 1) / 2) * width
            ax.bar(x, vals, width, color=POLICY_COLOURS.get(pol), label=pol)
        ax.axhline(1.0, color="0.3", lw=1, ls="--")
        ax.set_xticks(np.arange(len(models)), models)
        ax.set_ylabel(f"{what} / fp32's")
        ax.set_title(f"{what.capitalize()} per training step{' on ' + device if device else ''}", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncols=len(policies), loc="outside lower center")
    return fig


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


def speedup_bars(speedups: dict[str, float], *, title: str = "", highlight: str | None = None) -> Figure:
    """Horizontal bars of speed-ups over a baseline (``{label: ratio}``, drawn in the given order)."""
    if not speedups:
        raise fail("speedups", speedups, "hold at least one label: ratio")
    labels = list(speedups)
    vals = np.array([float(speedups[k]) for k in labels])
    if not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise fail("speedups", speedups, "hold finite ratios > 0")
    fig, ax = _new(figsize=(7, 0.35 * len(labels) + 1.2))
    colours = [_PRECISION_COLOURS.get(k.rsplit("/", 1)[-1], "#888888") for k in labels]
    y = np.arange(len(labels))[::-1]
    bars = ax.barh(y, vals, color=colours, edgecolor=["black" if k == highlight else "none" for k in labels])
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="#555555", lw=0.8, ls="--")
    for b, v in zip(bars, vals):
        ax.text(b.get_width() * 1.04, b.get_y() + b.get_height() / 2, f"{v:.1f}x", va="center", fontsize=7)
    ax.set_xlim(min(0.8, vals.min() * 0.8), vals.max() * 2.2)
    ax.set_xlabel("real tokens/s relative to fixed/fp32 (log scale)")
    ax.set_title(title or "Speed-up over fixed padding in fp32")
    return fig


def loss_curves_per_example(curves: dict[str, dict[str, object]], *, title: str = "") -> Figure:
    """Two panels: training loss against examples seen and against wall-clock seconds.

    ``curves`` maps a label to ``{"examples_seen": [...], "seconds": [...], "loss": [...]}``.
    """
    if not curves:
        raise fail("curves", curves, "hold at least one curve")
    fig, axes = _new(figsize=(11, 3.6), ncols=2)
    for i, (label, c) in enumerate(curves.items()):
        loss = np.asarray(c["loss"], dtype=float)
        for ax, key in zip(axes, ("examples_seen", "seconds")):
            x = np.asarray(c[key], dtype=float)
            if x.shape != loss.shape:
                raise fail(f"curves[{label!r}][{key!r}]", c[key], f"have one value per loss ({loss.size})")
            ax.plot(x, loss, lw=1.2, label=label, color=SEQUENCE_COLOURS[i % len(SEQUENCE_COLOURS)])
    for ax, xl, t in zip(axes, ("examples seen (log scale)", "wall-clock seconds"),
                         ("Per example seen", "Per second of training")):
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss (MLM)")
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_xscale("log")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def anomaly_cold_warm(rows: list[dict]) -> Figure:
    """Cold (first pass, every shape new) against warm real tokens/s for benchmark rows.

    Each row needs ``cold_real_tokens_per_s`` and ``real_tokens_per_s``; its bar label is
    ``row["label"]`` if given, else strategy / precision (and SDPA backends when restricted).
    """
    if not rows:
        raise fail("rows", rows, "hold at least one benchmark row")
    labels = []
    for r in rows:
        if "label" in r:
            labels.append(str(r["label"]))
        else:
            be = r.get("sdpa_backends", "default")
            labels.append(f"{r['strategy']}\n{r['precision']}" + ("" if be == "default" else f"\n[{'+'.join(be)}]"))
    cold = np.array([r["cold_real_tokens_per_s"] for r in rows], dtype=float) / 1e3
    warm = np.array([r["real_tokens_per_s"] for r in rows], dtype=float) / 1e3
    fig, ax = _new(figsize=(max(6.0, 1.1 * len(rows) + 1), 3.8))
    x = np.arange(len(rows))
    for off, vals, name, colour in ((-0.2, cold, "cold: first pass, new shapes", "#9ecae1"),
                                    (0.2, warm, "warm: same shapes again", "#3182bd")):
        bars = ax.bar(x + off, vals, 0.4, label=name, color=colour)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}k", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("real tokens/s (thousands)")
    ax.set_title("Cold against warm throughput, 32 sequences a step")
    ax.legend(fontsize=8)
    return fig


def profile_families(fractions: dict[str, float], *, flop_shares: dict[str, float] | None = None,
                     title: str = "") -> Figure:
    """Share of GPU kernel time per kernel family; optionally the share of model FLOPs next to it."""
    if not fractions:
        raise fail("fractions", fractions, "hold at least one family: fraction")
    names = sorted(fractions, key=lambda k: -fractions[k])
    t = np.array([fractions[k] for k in names], dtype=float)
    fig, ax = _new(figsize=(7.5, 0.45 * len(names) + 1.3))
    y = np.arange(len(names))[::-1]
    h = 0.4 if flop_shares else 0.7
    bars = ax.barh(y + (h / 2 if flop_shares else 0), t, h, color="#dd8452", label="share of GPU kernel time")
    for b, v in zip(bars, t):
        ax.text(v + 0.005, b.get_y() + b.get_height() / 2, f"{v:.1%}", va="center", fontsize=7)
    if flop_shares:
        f = np.array([flop_shares.get(k, 0.0) for k in names], dtype=float)
        bars = ax.barh(y - h / 2, f, h, color="#4c72b0", label="share of model FLOPs (real work)")
        for b, v, k in zip(bars, f, names):
            if k in flop_shares:
                ax.text(v + 0.005, b.get_y() + b.get_height() / 2, f"{v:.1%}", va="center", fontsize=7)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("fraction")
    ax.set_title(title or "Where a training step's GPU time goes")
    return fig


def throughput_vs_budget(rows: list[dict]) -> Figure:
    """Two panels per token budget: real tokens/s with MFU, and GPU steps/s against loader batches/s.

    Each row: ``budget``, ``real_tokens_per_s``, ``mfu`` and ``loader`` (a list of
    ``{"workers", "batches_per_s", "gpu_batches_per_s"}``).
    """
    if not rows:
        raise fail("rows", rows, "hold at least one row")
    fig, axes = _new(figsize=(11, 3.6), ncols=2)
    x = np.arange(len(rows))
    labels = [f"{r['budget']:,} tokens/step" for r in rows]
    tps = np.array([r["real_tokens_per_s"] for r in rows], dtype=float) / 1e3
    bars = axes[0].bar(x, tps, 0.6, color="#8172b2")
    for b, r in zip(bars, rows):
        axes[0].text(b.get_x() + b.get_width() / 2, b.get_height(), f"MFU {r['mfu']:.1%}", ha="center",
                     va="bottom", fontsize=8)
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("real tokens/s (thousands)")
    axes[0].set_title("Best recipe (compiled packed-varlen bf16)", fontsize=10)
    axes[0].set_ylim(0, tps.max() * 1.2)
    series = [("GPU steps/s", [r["loader"][0]["gpu_batches_per_s"] for r in rows], "#c44e52")]
    for w in sorted({ld["workers"] for r in rows for ld in r["loader"]}):
        series.append((f"loader, {w} workers" if w else "loader, main process",
                       [next((ld["batches_per_s"] for ld in r["loader"] if ld["workers"] == w), np.nan) for r in rows],
                       "#55a868" if w else "#a1d99b"))
    width = 0.8 / len(series)
    for j, (name, vals, colour) in enumerate(series):
        axes[1].bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=name, color=colour)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("batches per second (log scale)")
    axes[1].set_title("Does the data loader keep up?", fontsize=10)
    axes[1].legend(fontsize=8)
    return fig
