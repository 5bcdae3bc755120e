"""Chapter 03 figures: bucketing's efficiency/randomness trade-off, loss and accuracy by batch order,
token budgets, DDP ranks."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .._validate import fail
from .style import GUIDE_COLOUR, MARK_COLOUR, colours_for, new_figure

__all__ = ["bucketing_tradeoff", "loss_by_step", "accuracy_by_seed", "token_budget_batches", "ddp_assignment"]


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
    fig, (left, right) = new_figure(figsize=(10, 3.8), ncols=2)
    for (name, eff), colour in zip(efficiency.items(), colours_for(efficiency)):
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
            left.axvline(labels.index(_mega_label(m)), color=GUIDE_COLOUR, ls=":", lw=1)
        right.plot([_within(t)], [e * 100], marker="*", ms=16, color=MARK_COLOUR, ls="none",
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
    fig, (top, bottom) = new_figure(figsize=(10, 5), nrows=2, sharex=True, height_ratios=(3, 2))
    for (name, loss), colour in zip(losses.items(), colours_for(losses)):
        top.plot(np.arange(len(loss)), loss, lw=1.1, label=name, color=colour)
        bottom.plot(np.arange(len(mean_lengths[name])), mean_lengths[name], lw=1.1, label=name, color=colour)
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
    fig, ax = new_figure(figsize=(6.5, 3.2))
    names = list(accuracies)
    for i, name in enumerate(names):
        acc = np.asarray(accuracies[name], dtype=float) * 100
        ax.errorbar([acc.mean()], [i], xerr=[acc.std()], fmt="D", color="0.2", capsize=4, zorder=3)
        ax.scatter(acc, np.full(acc.size, i) + np.linspace(-0.12, 0.12, acc.size), s=28, alpha=0.8, zorder=2)
    if baseline is not None:
        ax.axvline(baseline * 100, color=MARK_COLOUR, ls="--", lw=1, label=f"{baseline_label} ({baseline:.1%})")
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
    fig, (left, right) = new_figure(figsize=(10, 3.6), ncols=2)
    hi_rows = max(int(np.max(r)) for r in rows.values())
    hi_tok = max(int(np.max(t)) for t in tokens.values())
    for name, colour in zip(rows, colours_for(rows)):
        left.hist(np.asarray(rows[name]), bins=np.arange(0.5, hi_rows + 1.5, max(1, hi_rows // 60)),
                  histtype="stepfilled", alpha=0.55, label=name, color=colour)
        right.hist(np.asarray(tokens[name]), bins=np.linspace(0, hi_tok * 1.02, 60), histtype="stepfilled",
                   alpha=0.55, label=name, color=colour)
    if max_tokens is not None:
        right.axvline(max_tokens, color=MARK_COLOUR, ls="--", lw=1.2, label=f"max_tokens = {max_tokens:,}")
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
    fig, ax = new_figure(figsize=(min(0.45 * steps + 1.6, 14), 0.55 * ranks + 1.5))
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0)
    for (r, s), v in np.ndenumerate(w):
        ax.text(s, r, str(int(v)), ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 * w.max() else "black")
    if repeated is not None:
        for r, s in zip(*np.nonzero(np.asarray(repeated, dtype=bool))):
            first = (r, s) == tuple(np.argwhere(repeated)[0])
            ax.add_patch(plt.Rectangle((s - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor=MARK_COLOUR,
                                       lw=1.5, label="repeated batch" if first else None))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.35), frameon=False)
    ax.set_yticks(range(ranks), [f"rank {r}" for r in range(ranks)])
    ax.set_xticks(range(steps), [str(s) for s in range(steps)], fontsize=7)
    ax.set_xlabel("step (cell: the batch's padded width in tokens)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="width", shrink=0.8)
    ax.set_title(title or "Which batch goes to which rank")
    return fig

# --- chapter 04: packing ----------------------------------------------------------------------
