"""Schematics drawn before the code of each trick: data in, Figure out, colours from :mod:`.style`.

* :func:`layout_schematic` (chapters 01-04): how a strategy lays texts out in token slots, batch by
  batch (padded, dynamic, bucketed, token-budget, packed ...), each text in its own colour, pad slots
  grey, and the attention mask of one row beside it. The slots come from
  :func:`padlab.strategies.plan_grids` on real lengths; nothing here plans or packs.
* :func:`batch_shape_schematic` (chapter 03): each batch as a ``width x rows`` rectangle, to
  scale, under the token budget's curve ``rows x width = max_tokens``.
* :func:`autocast_flow` (chapter 06): where each tensor of a training step lives under a precision
  policy: fp32 master weights, the half copies autocast casts, the loss, and the GradScaler's
  scale, unscale and skip / halve / grow.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .._validate import fail
from .style import (DTYPE_COLOURS, EMPTY_COLOUR, GUIDE_COLOUR, MARK_COLOUR, PAD_QUERY_COLOUR, SEQUENCE_COLOURS,
                    colours_for, new_figure)

__all__ = ["NO_SLOT_COLOUR", "layout_schematic", "slot_colours", "row_mask_colours", "autocast_flow",
           "FLOW_COLOURS", "batch_shape_schematic"]

#: Where a batch is narrower than the widest one drawn: no slot at all (not padding).
NO_SLOT_COLOUR = "#ffffff"


def _grid(g, name: str) -> np.ndarray:
    a = np.asarray(g)
    if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) or (a < -1).any():
        raise fail(name, getattr(a, "shape", g), "be a non-empty 2-D int array of text indices (-1 on padding)")
    return a


def slot_colours(grid) -> np.ndarray:
    """RGB of each slot of a ``rows x width`` grid: text ``t`` in ``SEQUENCE_COLOURS[t % 10]``, -1 (pad) grey."""
    g = _grid(grid, "grid")
    palette = np.array([to_rgb(c) for c in SEQUENCE_COLOURS])
    return np.where((g >= 0)[..., None], palette[np.maximum(g, 0) % len(palette)], to_rgb(EMPTY_COLOUR))


def row_mask_colours(row, *, block_diagonal: bool) -> np.ndarray:
    """RGB ``width x width`` picture of one row's attention mask (query = row, key = column).

    Padding mask: every query may see every real key. Block-diagonal (packing): a real query sees
    only its own text's keys, a pad query only itself. An allowed cell takes its query's text
    colour (grey for a pad query, whose output is thrown away); a masked cell is light grey.
    """
    r = _grid(np.asarray(row)[None], "row")[0]
    real = r >= 0
    if block_diagonal:
        allowed = (r[:, None] == r[None, :]) & real[:, None]
        allowed |= np.eye(r.size, dtype=bool) & ~real[:, None]
    else:
        allowed = np.broadcast_to(real[None, :], (r.size, r.size))
    palette = np.array([to_rgb(c) for c in SEQUENCE_COLOURS])
    query = np.where(real[:, None], palette[np.maximum(r, 0) % len(palette)], to_rgb(PAD_QUERY_COLOUR))
    return np.where(allowed[..., None], query[:, None, :], to_rgb(EMPTY_COLOUR))


def layout_schematic(grids: Mapping[str, Sequence[np.ndarray]], *, block_diagonal: Iterable[str] = (),
                     title: str = "") -> Figure:
    """One panel per strategy: its batches' token slots, and the attention mask of its first row.

    ``grids[name]`` is a list of ``rows x width`` int arrays, one per batch, holding the index of
    the text in each slot (-1 on padding), as :func:`padlab.strategies.plan_grids` returns them.
    The same text keeps its colour in every panel, so one sees it move between strategies.
    Batches are stacked with a gap; a batch narrower than the widest is white beyond its width.
    ``block_diagonal`` names the panels whose mask is block-diagonal (packed rows).
    """
    if not isinstance(grids, Mapping) or not grids:
        raise fail("grids", grids, "be a non-empty dict name -> list of batch grids")
    panels = {name: [_grid(g, f"grids[{name!r}]") for g in batches] for name, batches in grids.items()}
    if any(not b for b in panels.values()):
        raise fail("grids", {k: len(v) for k, v in panels.items()}, "hold at least one batch per strategy")
    block = set(block_diagonal)
    if block - set(panels):
        raise fail("block_diagonal", sorted(block - set(panels)), f"name panels of grids ({list(panels)})")
    width = max(g.shape[1] for b in panels.values() for g in b)
    heights = [sum(g.shape[0] for g in b) + len(b) - 1 for b in panels.values()]
    fig, axes = new_figure(figsize=(10.0, 1.1 + 0.32 * sum(max(h, 4) for h in heights)), ncols=2,
                           nrows=len(panels), squeeze=False,
                           gridspec_kw={"width_ratios": [3, 1], "height_ratios": [max(h, 4) for h in heights]})
    for (name, batches), (ax, mx) in zip(panels.items(), axes):
        canvas = np.ones((sum(g.shape[0] for g in batches) + len(batches) - 1, width, 3))
        ticks, labels, y = [], [], 0
        for k, g in enumerate(batches):
            canvas[y:y + g.shape[0], :g.shape[1]] = slot_colours(g)
            ticks.append(y + (g.shape[0] - 1) / 2)
            labels.append(f"batch {k}\n{g.shape[0]} x {g.shape[1]}")
            y += g.shape[0] + 1
        ax.imshow(canvas, interpolation="nearest", aspect="auto")
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(False)
        if width <= 64:     # one cell per token slot: thin white lines between slots
            for x in np.arange(width - 1) + 0.5:
                ax.axvline(x, color=NO_SLOT_COLOUR, lw=0.4)
        first = batches[0][0]
        mx.imshow(row_mask_colours(first, block_diagonal=name in block), interpolation="nearest")
        mx.set_title(("block-diagonal" if name in block else "padding") + " mask, row 0", fontsize=8)
        mx.set_xticks([])
        mx.set_yticks([])
        mx.grid(False)
    axes[-1][0].set_xlabel("token slot")
    handles = [Rectangle((0, 0), 1, 1, color=SEQUENCE_COLOURS[0]), Rectangle((0, 0), 1, 1, color=EMPTY_COLOUR),
               Rectangle((0, 0), 1, 1, color=PAD_QUERY_COLOUR)]
    fig.legend(handles, ["a text (one colour each) / may attend", "padding slot / masked",
                         "pad query (output ignored)"], loc="outside lower center", ncols=3, fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def batch_shape_schematic(shapes: Mapping[str, Sequence], *, max_tokens: int | None = None,
                          title: str = "") -> Figure:
    """One panel per strategy: every batch as a rectangle from (0, 0) to (width, rows), to scale.

    ``shapes[name]`` lists batches as ``(rows, width)`` pairs or objects with ``rows`` and
    ``width`` (:class:`padlab.waste.BatchShape`, from :func:`padlab.strategies.plan_shapes`).
    Fixed-size batches share a height and differ in width; token-budget batches trade rows for
    width and stay under the curve ``rows = max_tokens / width`` drawn when ``max_tokens`` is given.
    """
    if not isinstance(shapes, Mapping) or not shapes:
        raise fail("shapes", shapes, "be a non-empty dict name -> list of (rows, width)")
    dims = {}
    for name, batches in shapes.items():
        pairs = [(b.rows, b.width) if hasattr(b, "rows") else tuple(b) for b in batches]
        if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
            raise fail(f"shapes[{name!r}]", pairs[:3], "hold (rows, width) pairs of positive ints")
        dims[name] = np.array(pairs, dtype=np.int64)
    if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1):
        raise fail("max_tokens", max_tokens, "be a positive int or None")
    top_w = max(int(d[:, 1].max()) for d in dims.values())
    top_r = max(int(d[:, 0].max()) for d in dims.values())
    fig, axes = new_figure(figsize=(3.6 * len(dims) + 0.4, 3.4), ncols=len(dims), squeeze=False, sharey=True)
    for ax, (name, d), colour in zip(axes[0], dims.items(), colours_for(dims)):
        for rows, width in d:
            ax.add_patch(Rectangle((0, 0), width, rows, facecolor=colour, alpha=0.12, edgecolor=colour, lw=0.8))
        if max_tokens is not None:
            w = np.linspace(max_tokens / (top_r * 1.1), top_w * 1.05, 200)
            ax.plot(w, max_tokens / w, color=MARK_COLOUR, ls="--", lw=1.2, label=f"rows x width = {max_tokens:,}")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_xlim(0, top_w * 1.05)
        ax.set_ylim(0, top_r * 1.1)
        ax.set_title(f"{name}: {len(d)} batches", fontsize=9)
        ax.set_xlabel("width (tokens per row)")
        ax.grid(True, color=GUIDE_COLOUR, alpha=0.15)
    axes[0][0].set_ylabel("rows (sequences)")
    if title:
        fig.suptitle(title)
    return fig


#: Box colours of :func:`autocast_flow`: by what a box holds (its dtype), the scaler's steps, a skip.
FLOW_COLOURS = {"float32": DTYPE_COLOURS["float32"], "float16": DTYPE_COLOURS["float16"],
                "bfloat16": DTYPE_COLOURS["bfloat16"], "scaler": EMPTY_COLOUR, "skip": MARK_COLOUR}


def _flow_nodes(policy, scale: float, growth: float, backoff: float, interval: int):
    half = {"torch.float16": "float16", "torch.bfloat16": "bfloat16"}
    if policy.autocast_dtype is not None:
        h = half[str(policy.autocast_dtype)]
        short = "fp16" if h == "float16" else "bf16"
        nodes = [("weights", "fp32 master weights\n(the optimizer's copy)", "float32", (0, 2)),
                 ("copies", f"{short} copies of the\nlinear weights (autocast\ncasts, caches for the step)", h, (1, 2)),
                 ("forward", f"forward: matmuls in {short};\nLayerNorm, softmax,\nloss in fp32", h, (2, 2)),
                 ("loss", "loss L (fp32)", "float32", (3, 2))]
        edges = [("weights", "copies", "cast"), ("copies", "forward", ""), ("forward", "loss", "")]
        if policy.grad_scaler:
            nodes += [("scaled", f"scaled loss L x S\n(S = {scale:g})", "scaler", (3, 1)),
                      ("backward", f"backward: {short} activation\ngrads of L x S", h, (2, 1)),
                      ("grads", "fp32 grads of the\nmasters (x S)", "float32", (1, 1)),
                      ("unscale", "unscale: grads / S;\nany inf or NaN?", "scaler", (0, 1)),
                      ("skip", f"yes: skip the step,\nS <- S x {backoff:g}", "skip", (1, 0)),
                      ("step", f"no: optimizer step on the\nfp32 masters; S <- S x {growth:g}\n"
                               f"after {interval} clean steps", "float32", (0, 0))]
            edges += [("loss", "scaled", "x S"), ("scaled", "backward", ""), ("backward", "grads", ""),
                      ("grads", "unscale", ""), ("unscale", "skip", "inf/NaN"), ("unscale", "step", "finite")]
        else:
            nodes += [("backward", f"backward: {short} activation\ngrads (no loss scaling:\nbf16 has fp32's range)",
                       h, (3, 1)),
                      ("grads", "fp32 grads of the\nmasters", "float32", (2, 1)),
                      ("step", "optimizer step on the\nfp32 masters", "float32", (1, 1))]
            edges += [("loss", "backward", ""), ("backward", "grads", ""), ("grads", "step", "")]
        edges.append(("step", "weights", "update"))
        return nodes, edges
    d = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}[str(policy.param_dtype)]
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[d]
    master = "" if d == "float32" else "\n(no fp32 master copy)"
    nodes = [("weights", f"{short} weights{master}", d, (0, 1)),
             ("forward", f"forward in {short}" + (" (TF32 matmuls\non Ampere+ GPUs)" if policy.tf32 else ""), d, (1, 1)),
             ("loss", f"loss L ({short})", d, (2, 1)),
             ("backward", f"backward: {short} grads", d, (2, 0)),
             ("step", f"optimizer step in {short}\n(state in {short})", d, (1, 0))]
    edges = [("weights", "forward", ""), ("forward", "loss", ""), ("loss", "backward", ""),
             ("backward", "step", ""), ("step", "weights", "update")]
    return nodes, edges


def autocast_flow(policy="fp16-amp", *, scale: float = 65536.0, growth_factor: float = 2.0,
                  backoff_factor: float = 0.5, growth_interval: int = 2000, title: str = "") -> Figure:
    """The data flow of one training step under a precision policy, as boxes and arrows.

    ``policy``: a name of :data:`padlab.precision.POLICIES` or a :class:`~padlab.precision.Policy`.
    Each box is coloured by the dtype of what it holds (:data:`FLOW_COLOURS`); ``-amp`` policies
    show the fp32 master weights and the half copies autocast casts from them, ``fp16-amp`` adds
    the GradScaler: scale the loss by ``scale``, unscale the gradients, skip the step and multiply
    the scale by ``backoff_factor`` on inf/NaN, else step and multiply it by ``growth_factor``
    after ``growth_interval`` clean steps (torch.amp.GradScaler's defaults).
    """
    from ..precision import get_policy

    policy = get_policy(policy)
    nodes, edges = _flow_nodes(policy, float(scale), float(growth_factor), float(backoff_factor), int(growth_interval))
    cols = 1 + max(x for *_, (x, _) in nodes)
    low, high = min(y for *_, (_, y) in nodes), max(y for *_, (_, y) in nodes)
    rows = high - low + 1
    fig, ax = new_figure(figsize=(2.7 * cols + 0.4, 1.45 * rows + 0.7))
    w, h = 2.1, 1.0
    centre = {}
    for key, text, kind, (x, y) in nodes:
        cx, cy = x * 2.7, y * 1.45
        centre[key] = (cx, cy)
        ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=FLOW_COLOURS[kind], edgecolor="0.35", lw=0.8, gid=key))
        ax.text(cx, cy, text, ha="center", va="center", fontsize=7.5,
                color="white" if kind == "skip" else "black", gid=key)
    for a, b, label in edges:
        (x0, y0), (x1, y1) = centre[a], centre[b]
        dx, dy = x1 - x0, y1 - y0
        t = min((w / 2 + 0.04) / abs(dx) if dx else np.inf, (h / 2 + 0.04) / abs(dy) if dy else np.inf)
        # the update arrow of the scaler layout goes up the left side, around the unscale box
        rad = -1.6 if (a, b) == ("step", "weights") and dx == 0 else 0.0
        ax.add_patch(FancyArrowPatch((x0 + t * dx, y0 + t * dy), (x1 - t * dx, y1 - t * dy), arrowstyle="-|>",
                                     mutation_scale=11, lw=1.0, color="0.25", connectionstyle=f"arc3,rad={rad}",
                                     shrinkA=1, shrinkB=1, gid=f"{a}->{b}"))
        if label and rad:   # left of the curve, which bulges by about rad x length / 2
            ax.text(x0 + rad * (abs(dy) - 2 * t * abs(dy)) / 2 - 0.1, (y0 + y1) / 2, label, ha="right",
                    va="center", fontsize=7, color="0.2")
        elif label:
            ax.text((x0 + x1) / 2 + (0.1 if dx == 0 else 0), (y0 + y1) / 2 + (0.08 if dx else 0), label,
                    ha="left" if dx == 0 else "center", va="bottom", fontsize=7, color="0.2")
    ax.set_xlim(-2.7 if policy.grad_scaler else -1.4, 2.7 * (cols - 1) + 1.4)
    ax.set_ylim(1.45 * low - 0.8, 1.45 * high + 0.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"One training step under {policy.name}: {policy.description}", fontsize=9)
    return fig
