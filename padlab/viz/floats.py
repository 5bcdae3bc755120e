"""Chapter 05 figures: bit layouts, one value's bits, value density, precision against magnitude, ranges."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .style import FIELD_COLOURS, FORMAT_COLOURS, new_figure

__all__ = ["bit_layout", "float_bits", "value_density", "precision_vs_magnitude", "format_ranges"]


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
    fig, ax = new_figure(figsize=(11, 0.55 * len(rows) + 1.0))
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
    fig, ax = new_figure(figsize=(min(11.0, 2.2 + 0.34 * n), 2.0))
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
    fig, ax = new_figure(figsize=(9, 3.8))
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
    fig, ax = new_figure(figsize=(9, 3.8))
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
    fig, ax = new_figure(figsize=(9, 0.45 * len(rows) + 1.4))
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
