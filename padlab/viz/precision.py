"""Chapter 06 figures: autocast dtypes, gradient ranges, loss scaling, results per precision policy, and the
H200 measurements of chapter 06 (inference speed-up per batch size, the memory budget, AMP against tokens a step)."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .._validate import fail
from .style import (DTYPE_COLOURS, GUIDE_COLOUR, MARK_COLOUR, MEASURE_COLOURS, POLICY_COLOURS, SERIES_COLOURS,
                    colours_for, new_figure)

__all__ = ["autocast_dtype_grid", "gradient_histogram", "loss_scale_dynamics", "policy_curves",
           "policy_result_bars", "policy_speed_memory", "inference_speedup_vs_batch", "memory_budget_bars",
           "amp_speedup_vs_tokens"]


_DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "int"}


def autocast_dtype_grid(table: dict[str, dict[str, str]], *, title: str = "") -> Figure:
    """A grid of dtypes: one row per op (``table`` keys, top to bottom), one column per policy.

    ``table[op][policy]`` is ``"input dtypes -> output dtype"`` as :func:`padlab.amp.autocast_table`
    measured it (or just the output dtype); the cell's colour is the output dtype.
    """
    ops = list(table)
    policies = list(dict.fromkeys(p for row in table.values() for p in row))
    fig, ax = new_figure(figsize=(3.2 + 1.9 * len(policies), 1.2 + 0.34 * len(ops)))
    for i, op in enumerate(ops):
        for j, pol in enumerate(policies):
            text = table[op].get(pol, "")
            out = text.split("->")[-1].strip()
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=DTYPE_COLOURS.get(out, "white"), ec="white", lw=2))
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in list(DTYPE_COLOURS.values())[:3]]
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
    fig, ax = new_figure(figsize=(9, 3.8))
    mags = [np.abs(np.asarray(v, dtype=float)) for v in values_by_label.values()]
    mags = [v[(v > 0) & np.isfinite(v)] for v in mags]
    first = fmt_rows[0]
    lo = min([np.log10(v.min()) for v in mags if v.size] + [np.log10(first["smallest_subnormal"]) - 1])
    hi = max([np.log10(v.max()) for v in mags if v.size] + [np.log10(first["max"]) + 0.5])
    edges = np.linspace(np.floor(lo), np.ceil(hi), bins + 1)
    for (label, v), c in zip(zip(values_by_label, mags), SERIES_COLOURS):
        ax.hist(np.log10(v), bins=edges, histtype="stepfilled", alpha=0.45, color=c, label=f"{label} ({v.size:,})")
    off_axis = []
    for row, ls in zip(fmt_rows, ("-", "--", ":")):
        for key, colour in (("smallest_subnormal", MARK_COLOUR), ("smallest_normal", "#dd8452"), ("max", "0.2")):
            x = np.log10(row[key])
            label = f"{row['format']} {key.replace('_', ' ')} ({row[key]:.3g})"
            if edges[0] <= x <= edges[-1]:
                ax.axvline(x, color=colour, ls=ls, lw=1.2, label=label)
            else:
                off_axis.append(label)
    flush = np.log10(first["smallest_subnormal"] / 2)
    ax.axvspan(edges[0], flush, color=MARK_COLOUR, alpha=0.08)
    ax.text(flush - 0.2, 0.97, f"{first['format']} stores 0", color=MARK_COLOUR, ha="right", va="top", fontsize=8,
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
    fig, axes = new_figure(figsize=(8, 2.6 * nrows), nrows=nrows, squeeze=False, sharex=True)
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
    fig, ax = new_figure(figsize=(7.5, 3.6))
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
    fig, axes = new_figure(figsize=(4.2 * len(panels), 3.8), ncols=len(panels), squeeze=False)
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
                ax.text(i, top * 0.05, "diverged\n(NaN)", ha="center", va="bottom", color=MARK_COLOUR, fontsize=8,
                        rotation=90)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel(ylabels.get(task, ""))
        ax.set_title(task, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def policy_speed_memory(ratios_by_model: dict[str, dict[str, tuple[float | None, float | None]]], *,
                        device: str = "") -> Figure:
    """Step time and peak memory per policy relative to fp32, one group of bars per model size.

    ``ratios_by_model[model][policy] = (time_vs_fp32, memory_vs_fp32)``, the ratios the caller
    computed (e.g. the ``time_vs_fp32`` and ``memory_vs_fp32`` columns of the amp matrix's speed
    table); ``None`` or NaN (not measured) leaves the bar out.
    """
    if not ratios_by_model:
        raise fail("ratios_by_model", ratios_by_model, "hold at least one model: {policy: (time, memory)}")
    fig, axes = new_figure(figsize=(11, 3.8), ncols=2)
    models = list(ratios_by_model)
    policies = list(dict.fromkeys(p for m in ratios_by_model.values() for p in m))
    width = 0.8 / max(1, len(policies))
    for k, (ax, what) in enumerate(zip(axes, ("step time", "peak memory"))):
        for j, pol in enumerate(policies):
            vals = [ratios_by_model[m].get(pol, (None, None))[k] for m in models]
            vals = np.array([np.nan if v is None else float(v) for v in vals])
            x = np.arange(len(models)) + (j - (len(policies) - 1) / 2) * width
            ax.bar(x, vals, width, color=POLICY_COLOURS.get(pol), label=pol)
        ax.axhline(1.0, color=GUIDE_COLOUR, lw=1, ls="--")
        ax.set_xticks(np.arange(len(models)), models)
        ax.set_ylabel(f"{what} / fp32's")
        ax.set_title(f"{what.capitalize()} per training step{' on ' + device if device else ''}", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncols=len(policies), loc="outside lower center")
    return fig


def _colours(names: list[str], policies: dict[str, str] | None) -> dict[str, str]:
    """One colour per name; a name ``policies`` maps to a policy takes that policy's colour where it is free."""
    policies = policies or {}
    cols = colours_for([policies.get(n, n) for n in names])
    if len(set(cols)) < len(cols):   # two names on one policy (fp8 rows under bf16-amp): the later ones take free colours
        cols = colours_for([policies.get(n, n) if cols.index(c) == i else n for i, (n, c) in enumerate(zip(names, cols))])
    return dict(zip(names, cols))


def inference_speedup_vs_batch(curves: dict[str, dict[str, dict[int, float]]], *,
                               policies: dict[str, str] | None = None, device: str = "") -> Figure:
    """Forward speed-up over fp32 against batch size, one panel per model, one line per precision.

    ``curves[model][precision] = {batch_size: speed-up}``, as the caller computed them (e.g.
    :func:`padlab.experiments.results.inference_speedups`); ``policies`` maps a precision name to
    the policy whose colour it takes (``"fp16-autocast": "fp16-amp"``). A dashed line marks 1x.
    """
    if not curves or not all(isinstance(v, dict) and v for v in curves.values()):
        raise fail("curves", curves, "hold at least one model: {precision: {batch_size: speed-up}}")
    names = list(dict.fromkeys(p for by_p in curves.values() for p in by_p))
    colour = _colours(names, policies)
    fig, axes = new_figure(figsize=(5.2 * len(curves), 3.8), ncols=len(curves), squeeze=False, sharey=True)
    for ax, (model, by_p) in zip(axes[0], curves.items()):
        for p, pts in by_p.items():
            bs = sorted(pts)
            ls = ":" if p.startswith("fp8") else "--" if p.endswith("pure") else "-"
            ax.plot(bs, [pts[b] for b in bs], marker="o", ls=ls, color=colour[p], label=p)
        ax.axhline(1.0, color=GUIDE_COLOUR, lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("batch size (sequences)")
        ax.set_title(f"{model}{' on ' + device if device else ''}", fontsize=10)
    axes[0][0].set_ylabel("forward speed-up over fp32")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncols=4, loc="outside lower center")
    return fig


def memory_budget_bars(tokens: dict[str, dict[str, dict[str, int]]], *,
                       fitted: dict[str, dict[str, dict[str, int]]] | None = None, title: str = "") -> Figure:
    """The largest tokens per step that fit each memory budget, one panel per model: a group of bars
    per budget, one bar per recipe (``tokens[model][recipe][budget]``, e.g. padlab's estimate), a
    black tick per bar at ``fitted`` (e.g. the measured fit) where given. Log scale; a recipe with
    " + ckpt" in its name is hatched."""
    if not tokens or not all(isinstance(v, dict) and v for v in tokens.values()):
        raise fail("tokens", tokens, "hold at least one model: {recipe: {budget: tokens}}")
    fig, axes = new_figure(figsize=(5.6 * len(tokens), 4.0), ncols=len(tokens), squeeze=False, sharey=True)
    recipes = list(dict.fromkeys(r for by_r in tokens.values() for r in by_r))
    base = list(dict.fromkeys(r.replace(" + ckpt", "") for r in recipes))
    # "fixed-512 fp32" takes the strategy's colour ("fixed"): a length suffix does not change the strategy
    colour = dict(zip(base, colours_for([re.sub(r"-\d+$", "", b.split()[0]) for b in base])))
    width = 0.8 / max(1, len(recipes))
    for ax, (model, by_r) in zip(axes[0], tokens.items()):
        budgets = list(dict.fromkeys(b for v in by_r.values() for b in v))
        for j, rec in enumerate(recipes):
            vals = np.array([float(by_r.get(rec, {}).get(b, np.nan)) for b in budgets])
            x = np.arange(len(budgets)) + (j - (len(recipes) - 1) / 2) * width
            ax.bar(x, vals, width, color=colour[rec.replace(" + ckpt", "")], label=rec,
                   hatch="//" if "+ ckpt" in rec else None, edgecolor="white", lw=0.5)
            if fitted is not None:
                fit = np.array([float(fitted.get(model, {}).get(rec, {}).get(b, np.nan)) for b in budgets])
                ax.scatter(x, fit, marker="_", s=120, color="k", zorder=3,
                           label="measured fit" if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(budgets)), budgets)
        ax.set_title(model, fontsize=10)
    axes[0][0].set_ylabel("largest tokens per step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncols=4, loc="outside lower center")
    if title:
        fig.suptitle(title)
    return fig


def amp_speedup_vs_tokens(speedups: dict[str, dict[str, dict[int, float]]], *,
                          busy: dict[str, dict[str, dict[int, float]]] | None = None,
                          references: list[tuple[str, int, float]] | None = None, device: str = "") -> Figure:
    """Left: each policy's training speed-up over fp32 against tokens per step
    (``speedups[model][policy] = {tokens: speed-up}``; one marker style per model, one colour per
    policy) with ``references`` as labelled stars ``(label, tokens, speed-up)``. Right (with
    ``busy``): the GPU-busy fraction per profiled size, ``busy[model][policy] = {tokens: fraction}``."""
    if not speedups or not all(isinstance(v, dict) for v in speedups.values()):
        raise fail("speedups", speedups, "hold at least one model: {policy: {tokens: speed-up}}")
    fig, axes = new_figure(figsize=(11, 4.0), ncols=2 if busy else 1, squeeze=False)
    ax = axes[0][0]
    markers = dict(zip(speedups, "os^Dv"))
    for model, by_p in speedups.items():
        for p, pts in by_p.items():
            t = sorted(pts)
            ax.plot(t, [pts[x] for x in t], marker=markers[model], color=POLICY_COLOURS.get(p),
                    ls="-" if markers[model] == "o" else "--", label=f"{model}: {p}/fp32")
    for i, (label, t, x) in enumerate(references or ()):
        ax.scatter([t], [x], marker="*", s=140, color=SERIES_COLOURS[(i + 4) % len(SERIES_COLOURS)], zorder=4,
                   edgecolor="k", lw=0.5, label=label)
    ax.axhline(1.0, color=GUIDE_COLOUR, lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("speed-up over fp32 (real tokens/s)")
    ax.set_title(f"Training step speed-up{' on ' + device if device else ''}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    if busy:
        bx = axes[0][1]
        bars = [(f"{m}\n{t:,}", p, f) for m, by_p in busy.items() for p, pts in by_p.items() for t, f in pts.items()]
        groups = list(dict.fromkeys(g for g, _, _ in bars))
        pols = list(dict.fromkeys(p for _, p, _ in bars))
        width = 0.8 / max(1, len(pols))
        for j, p in enumerate(pols):
            vals = [next((f for g2, p2, f in bars if g2 == g and p2 == p), np.nan) for g in groups]
            x = np.arange(len(groups)) + (j - (len(pols) - 1) / 2) * width
            bx.bar(x, np.array(vals, dtype=float), width, color=POLICY_COLOURS.get(p, MEASURE_COLOURS["gpu"]), label=p)
        bx.axhline(1.0, color=GUIDE_COLOUR, lw=1, ls="--")
        bx.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        bx.set_ylabel("GPU busy (kernel time / step time)")
        bx.set_title("How much of a step the GPU computes", fontsize=10)
        bx.legend(fontsize=8)
    return fig
