"""Chapter 07 figures: the benchmark's speed-ups, throughput, cold/warm, loss curves, profile, budgets.

Every ratio drawn here was computed by the caller: the benchmark writes ``speedup_vs_fixed_fp32``
into each row, and :mod:`padlab.experiments.results` computes speed-up tables. Nothing here divides
one measurement by another.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .._validate import fail
from .style import GUIDE_COLOUR, MEASURE_COLOURS, POLICY_COLOURS, colour_for, colours_for, new_figure

__all__ = ["bench_speedup_bars", "bench_summary", "speedup_bars", "loss_curves_per_example", "anomaly_cold_warm",
           "profile_families", "throughput_vs_budget"]

#: What each benchmark row must carry for :func:`bench_speedup_bars` and :func:`bench_summary`.
ROW_FIELDS = ("strategy", "precision", "real_tokens_per_s", "padded_fraction", "speedup_vs_fixed_fp32")


def _bench_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
        raise fail("rows", rows, "be a non-empty list of benchmark rows (a result's 'rows')")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise fail(f"rows[{i}]", r, "be a benchmark row (a dict)")
        missing = [k for k in ROW_FIELDS if k not in r]
        if missing:
            raise fail(f"rows[{i}]", {k: r[k] for k in ("strategy", "precision") if k in r},
                       f"carry {', '.join(missing)} (the benchmark writes them)")
    return list(rows)


def bench_speedup_bars(rows: Sequence[Mapping], *, title: str = "", ax=None) -> Figure:
    """Grouped bars of each row's ``speedup_vs_fixed_fp32``: one group per strategy (compiled
    rows in a group of their own, labelled ``"<strategy> [compiled]"``), one bar per precision
    policy, on a log axis.

    ``rows`` are benchmark rows (a result's ``"rows"``); a row whose speed-up is ``None`` (the run
    had no fixed/fp32 baseline) is left out, and a run without any says so in the panel.
    """
    rows = _bench_rows(rows)
    if ax is None:
        fig, ax = new_figure(figsize=(8, 3.8))
    else:
        fig = ax.figure
    ax.set_title(title or "Speed-up over fixed padding in fp32")
    drawn = [r for r in rows if r["speedup_vs_fixed_fp32"] is not None]
    if not drawn:
        ax.text(0.5, 0.5, "no fixed/fp32 row in this run:\nno speed-ups to draw", ha="center", va="center",
                transform=ax.transAxes)
        return fig

    def group(r: Mapping) -> str:
        return r["strategy"] + (" [compiled]" if r.get("compiled") else "")

    strategies = list(dict.fromkeys(group(r) for r in drawn))
    precisions = list(dict.fromkeys(r["precision"] for r in drawn))
    width = 0.8 / len(precisions)
    x = np.arange(len(strategies))
    for j, p in enumerate(precisions):
        vals = [next((float(r["speedup_vs_fixed_fp32"]) for r in drawn if group(r) == s and r["precision"] == p),
                     np.nan) for s in strategies]
        ax.bar(x + (j - (len(precisions) - 1) / 2) * width, vals, width, label=p, color=POLICY_COLOURS.get(p))
    ax.axhline(1.0, color=GUIDE_COLOUR, lw=0.8, ls="--")
    ax.set_xticks(x, strategies, rotation=25, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("real tokens/s vs fixed fp32")
    ax.legend(ncols=len(precisions), fontsize=8)
    return fig


def bench_summary(rows: Sequence[Mapping], *, device: str = "") -> Figure:
    """Three panels: speed-up bars (:func:`bench_speedup_bars`), real tokens/s against padding
    efficiency (``1 - padded_fraction``), and peak memory per row.

    ``rows`` are benchmark rows carrying :data:`ROW_FIELDS` (``result["rows"]`` of a
    ``padlab bench`` result); ``device`` names the device in the first panel's title.
    """
    rows = _bench_rows(rows)
    fig, axes = new_figure(figsize=(13, 4), ncols=3)
    bench_speedup_bars(rows, ax=axes[0], title=f"Speed-up{' on ' + device if device else ''}")
    for p in dict.fromkeys(r["precision"] for r in rows):
        sel = [r for r in rows if r["precision"] == p]
        axes[1].scatter([1 - r["padded_fraction"] for r in sel], [r["real_tokens_per_s"] for r in sel],
                        label=p, color=POLICY_COLOURS.get(p))
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
        labels = [f"{r['strategy']}{'*' if r.get('compiled') else ''}/{r['precision']}" for r in mem]
        axes[2].barh(labels, [r["peak_memory_bytes"] / 2**30 for r in mem],
                     color=[POLICY_COLOURS.get(r["precision"]) for r in mem])
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
    fig, ax = new_figure(figsize=(7, 0.35 * len(labels) + 1.2))
    colours = [colour_for(k) or "#888888" for k in labels]
    y = np.arange(len(labels))[::-1]
    bars = ax.barh(y, vals, color=colours, edgecolor=["black" if k == highlight else "none" for k in labels])
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color=GUIDE_COLOUR, lw=0.8, ls="--")
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
    fig, axes = new_figure(figsize=(11, 3.6), ncols=2)
    colours = colours_for(curves)
    for i, (label, c) in enumerate(curves.items()):
        loss = np.asarray(c["loss"], dtype=float)
        for ax, key in zip(axes, ("examples_seen", "seconds")):
            x = np.asarray(c[key], dtype=float)
            if x.shape != loss.shape:
                raise fail(f"curves[{label!r}][{key!r}]", c[key], f"have one value per loss ({loss.size})")
            ax.plot(x, loss, lw=1.2, label=label, color=colours[i])
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
    fig, ax = new_figure(figsize=(max(6.0, 1.1 * len(rows) + 1), 3.8))
    x = np.arange(len(rows))
    for off, vals, name, colour in ((-0.2, cold, "cold: first pass, new shapes", MEASURE_COLOURS["cold"]),
                                    (0.2, warm, "warm: same shapes again", MEASURE_COLOURS["warm"])):
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
    fig, ax = new_figure(figsize=(7.5, 0.45 * len(names) + 1.3))
    y = np.arange(len(names))[::-1]
    h = 0.4 if flop_shares else 0.7
    bars = ax.barh(y + (h / 2 if flop_shares else 0), t, h, color=MEASURE_COLOURS["time"],
                   label="share of GPU kernel time")
    for b, v in zip(bars, t):
        ax.text(v + 0.005, b.get_y() + b.get_height() / 2, f"{v:.1%}", va="center", fontsize=7)
    if flop_shares:
        f = np.array([flop_shares.get(k, 0.0) for k in names], dtype=float)
        bars = ax.barh(y - h / 2, f, h, color=MEASURE_COLOURS["flops"], label="share of model FLOPs (real work)")
        for b, v, k in zip(bars, f, names):
            if k in flop_shares:
                ax.text(v + 0.005, b.get_y() + b.get_height() / 2, f"{v:.1%}", va="center", fontsize=7)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("fraction")
    ax.set_title(title or "Where a training step's GPU time goes")
    return fig


def kernel_time_stacks(rows: Mapping[str, Mapping[str, float]], *, unit: str = "ms a step",
                       title: str = "") -> Figure:
    """GPU kernel time per family, one stacked horizontal bar per row (``{row: {family: time}}``, the
    families in the first row's order), each bar's total written at its end."""
    if not rows:
        raise fail("rows", rows, "hold at least one row: {family: time}")
    families = list(next(iter(rows.values())))
    for name, fam in rows.items():
        if not isinstance(fam, Mapping) or list(fam) != families:
            raise fail(f"rows[{name!r}]", dict(fam) if isinstance(fam, Mapping) else fam,
                       f"hold the families {families} in that order")
        if any(not np.isfinite(v) or v < 0 for v in fam.values()):
            raise fail(f"rows[{name!r}]", dict(fam), "hold finite times >= 0")
    names = list(rows)
    fig, ax = new_figure(figsize=(8, 0.42 * len(names) + 1.5))
    y = np.arange(len(names))[::-1]
    left = np.zeros(len(names))
    for fam, colour in zip(families, colours_for(families)):
        v = np.array([rows[n][fam] for n in names], dtype=float)
        ax.barh(y, v, 0.65, left=left, color=colour, label=fam)
        left += v
    for yy, total in zip(y, left):
        ax.text(total * 1.01, yy, f"{total:.1f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, left.max() * 1.12 if left.max() > 0 else 1.0)
    ax.set_xlabel(f"GPU kernel time, {unit}")
    # below the axes: inside, it would cover the shortest bars' ends
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=len(families))
    ax.set_title(title or "Where a step's GPU kernel time goes")
    return fig


def throughput_vs_budget(rows: list[dict]) -> Figure:
    """Two panels per token budget: real tokens/s with MFU, and GPU steps/s against loader batches/s.

    Each row: ``budget``, ``real_tokens_per_s``, ``mfu`` and ``loader`` (a list of
    ``{"workers", "batches_per_s", "gpu_batches_per_s"}``).
    """
    if not rows:
        raise fail("rows", rows, "hold at least one row")
    fig, axes = new_figure(figsize=(11, 3.6), ncols=2)
    x = np.arange(len(rows))
    labels = [f"{r['budget']:,} tokens/step" for r in rows]
    tps = np.array([r["real_tokens_per_s"] for r in rows], dtype=float) / 1e3
    bars = axes[0].bar(x, tps, 0.6, color=MEASURE_COLOURS["throughput"])
    for b, r in zip(bars, rows):
        axes[0].text(b.get_x() + b.get_width() / 2, b.get_height(), f"MFU {r['mfu']:.1%}", ha="center",
                     va="bottom", fontsize=8)
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("real tokens/s (thousands)")
    axes[0].set_title("Best recipe (compiled packed-varlen bf16)", fontsize=10)
    axes[0].set_ylim(0, tps.max() * 1.2)
    series = [("GPU steps/s", [r["loader"][0]["gpu_batches_per_s"] for r in rows], MEASURE_COLOURS["gpu"])]
    for w in sorted({ld["workers"] for r in rows for ld in r["loader"]}):
        series.append((f"loader, {w} workers" if w else "loader, main process",
                       [next((ld["batches_per_s"] for ld in r["loader"] if ld["workers"] == w), np.nan) for r in rows],
                       MEASURE_COLOURS["loader" if w else "loader-main"]))
    width = 0.8 / len(series)
    for j, (name, vals, colour) in enumerate(series):
        axes[1].bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=name, color=colour)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("batches per second (log scale)")
    axes[1].set_title("Does the data loader keep up?", fontsize=10)
    axes[1].legend(fontsize=8)
    return fig
