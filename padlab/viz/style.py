"""The one palette and the figure helper every :mod:`padlab.viz` module draws with.

One colour per precision policy, per batching strategy, per float format, per bit field and per
sequence of a packed row, so that a name has the same colour in every chapter. Colours within
each table are distinct (tests check a minimum distance), so two curves never share a hue.
"""
from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt

__all__ = ["POLICY_COLOURS", "STRATEGY_COLOURS", "FORMAT_COLOURS", "FIELD_COLOURS", "SEQUENCE_COLOURS",
           "SERIES_COLOURS", "MEMORY_COLOURS", "DTYPE_COLOURS", "MEASURE_COLOURS", "EMPTY_COLOUR",
           "PAD_QUERY_COLOUR", "MARK_COLOUR", "GUIDE_COLOUR", "new_figure", "colour_for", "colours_for"]

#: One colour per precision policy (the names of :data:`padlab.precision.POLICIES`): fp32 blue,
#: tf32 cyan, fp16 red/orange, bf16 green/purple/olive. fp32 and bf16-amp, the pair chapter 06
#: plots side by side, are far apart (blue against green).
POLICY_COLOURS = {"fp32": "#1f77b4", "tf32": "#17becf", "fp16-amp": "#d62728", "fp16-pure": "#ff7f0e",
                  "bf16-amp": "#2ca02c", "bf16-amp+tf32": "#bcbd22", "bf16-pure": "#9467bd"}

#: One colour per batching strategy (the names of :data:`padlab.strategies.STRATEGIES`, and the
#: FlexAttention path): fixed grey, the padding family blues, the length-grouping family oranges,
#: the packing family greens/purples.
STRATEGY_COLOURS = {"fixed": "#7f7f7f", "dynamic": "#1f77b4", "dynamic-multiple": "#aec7e8",
                    "sorted": "#8c564b", "bucketed": "#ff7f0e", "token-budget": "#d62728",
                    "packed": "#2ca02c", "packed-varlen": "#9467bd", "packed-flex": "#e377c2"}

#: One colour per float format of :data:`padlab.floats.FORMATS`; a format that a policy is named
#: after takes that policy's colour (fp16 as fp16-amp, bf16 as bf16-amp).
FORMAT_COLOURS = {"fp64": "#333333", "fp32": POLICY_COLOURS["fp32"], "tf32": POLICY_COLOURS["tf32"],
                  "fp16": POLICY_COLOURS["fp16-amp"], "bf16": POLICY_COLOURS["bf16-amp"],
                  "fp8-e4m3fn": "#9467bd", "fp8-e5m2": "#8c564b", "fp4-e2m1": "#e377c2"}

#: Sign, exponent and mantissa fields: (colour of a 1 bit, colour of a 0 bit), as in Float Toy.
FIELD_COLOURS = {"sign": ("#c44e52", "#f2c4c5"), "exponent": ("#4c72b0", "#c5d3ea"),
                 "mantissa": ("#55a868", "#c9e6cf")}

#: One colour per sequence of a row (cycled), shared by the pack pictures and the mask heatmaps.
#: No grey among them: grey means padding (:data:`EMPTY_COLOUR`, :data:`PAD_QUERY_COLOUR`).
SEQUENCE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                    "#bcbd22", "#17becf", "#2f4b7c")

#: Series that are not a policy, strategy or format (corpora, noise levels, seeds ...), in order.
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")

#: The parts of a parameter-memory bar (chapter 00).
MEMORY_COLOURS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer": "#55a868", "half_copies": "#c44e52"}
#: A cell's output dtype in the autocast grid (chapter 06): light, so that the text stays readable.
DTYPE_COLOURS = {"float32": "#c6dbef", "float16": "#fcbba1", "bfloat16": "#c7e9c0", "int64": "#eeeeee"}
#: Paired measures drawn side by side: token against attention efficiency, cold against warm,
#: GPU time against FLOPs.
MEASURE_COLOURS = {"tokens": "#4c72b0", "attention": "#dd8452", "cold": "#9ecae1", "warm": "#3182bd",
                   "time": "#dd8452", "flops": "#4c72b0", "gpu": "#c44e52", "loader": "#55a868",
                   "loader-main": "#a1d99b", "throughput": "#8172b2"}

EMPTY_COLOUR = "#eeeeee"      #: pad slots and masked cells
PAD_QUERY_COLOUR = "#9a9a9a"  #: what a pad query may see (its output is thrown away)
MARK_COLOUR = "#c44e52"       #: a cut-off, a threshold, the point a widget is set to
GUIDE_COLOUR = "0.3"          #: reference lines (x = 1, the current control value)

_NAMED = {**FORMAT_COLOURS, **STRATEGY_COLOURS, **POLICY_COLOURS}


def new_figure(figsize=(7, 3.5), ncols: int = 1, nrows: int = 1, **kw):
    """``plt.subplots`` with constrained layout: ``(figure, axes)``, extra keywords passed on."""
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kw)
    return fig, axes


def colour_for(name: str) -> str | None:
    """The palette colour of a policy, strategy or format name (also of ``"fixed (128)"``-style
    labels and ``strategy/policy`` row labels: the policy decides); ``None`` for other names."""
    name = str(name)
    if name in _NAMED:
        return _NAMED[name]
    if "/" in name:
        return colour_for(name.rsplit("/", 1)[-1])
    head = name.split(" (")[0].split(", ")[0].rstrip("*")
    return _NAMED.get(head)


def colours_for(labels: Iterable[str]) -> list[str]:
    """One colour per label, all different: a palette name keeps its colour, other labels take the
    next :data:`SERIES_COLOURS` entry that no label has yet."""
    named = [colour_for(x) for x in labels]
    out: list[str] = []
    for c in named:
        if c is None or c in out:
            free = [s for s in SERIES_COLOURS if s not in out and s not in named]
            c = free[0] if free else SERIES_COLOURS[len(out) % len(SERIES_COLOURS)]  # more labels than colours
        out.append(c)
    return out
