"""ipywidgets wiring only: a control changes, padlab computes, a :mod:`padlab.viz` function plots.

Every ``*_widget`` function returns an ``ipywidgets.Widget`` (controls plus an output area) and
keeps no state of its own beyond the controls. The numbers a widget shows come from the same
padlab functions the tests check, so a browser test can compare the page with padlab.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from . import viz
from ._validate import check_choice, check_int, fail
from .data import CORPORA, load_corpus
from .packing import ALGORITHMS, pack
from .strategies import waste_table


def _show_png(image: W.Image, fig) -> None:
    """Draw ``fig`` into an Image widget and free it.

    An image in widget state, not a display inside an ``Output`` area: kernels run without a browser
    (nbval, nbconvert) then record the same cell outputs, so stored notebooks compare cleanly.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    image.value = buf.getvalue()


#: Grids the curves are drawn on (the readout is computed for the exact control value).
MAX_LENGTH_GRID = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512)
BATCH_SIZE_GRID = (8, 16, 32, 64, 128, 256, 512)

#: What each widget's readout says for given control values, by widget function name:
#: ``READOUTS[name](controls, **options) -> str``. ``controls`` maps every control's ``description``
#: to its value (numbers as ``int``/``float``, choices as the label the page shows); ``options`` are
#: the widget function's keyword-only arguments. Each widget fills its readout through its entry,
#: and the browser test recomputes the entry from the values it reads off the page.
READOUTS: dict[str, Callable[..., str]] = {}


# --- chapters 01-02: fixed and dynamic padding -----------------------------------------------

def _fixed_readout(corpus: str, max_length: int, report) -> str:
    kept, cut = report.real_tokens, report.truncated_tokens
    return (f"{corpus}, max_length {max_length}: efficiency {report.efficiency:.1%} "
            f"(padding is {1 - report.efficiency:.1%} of computed tokens); "
            f"{cut:,} of {kept + cut:,} real tokens truncated ({cut / (kept + cut):.2%})")


def _dynamic_readout(corpus: str, batch_size: int, max_length: int, fixed, dynamic) -> str:
    return (f"{corpus}, batch size {batch_size}: dynamic padding efficiency {dynamic.efficiency:.1%} "
            f"against {fixed.efficiency:.1%} for fixed padding to {max_length}; "
            f"{fixed.computed_tokens / dynamic.computed_tokens:.2f}x fewer computed tokens")


def _fixed_padding_text(controls: Mapping[str, Any], *, batch_size: int = 32) -> str:
    corpus, max_length = controls["corpus"], controls["max_length"]
    (report,) = waste_table(load_corpus(corpus).lengths, ("fixed",), batch_size=batch_size, max_length=max_length)
    return _fixed_readout(corpus, max_length, report)


def _dynamic_padding_text(controls: Mapping[str, Any], *, max_length: int = 512) -> str:
    corpus, batch_size = controls["corpus"], controls["batch size"]
    fixed, dynamic = waste_table(load_corpus(corpus).lengths, ("fixed", "dynamic"),
                                 batch_size=batch_size, max_length=max_length)
    return _dynamic_readout(corpus, batch_size, max_length, fixed, dynamic)


READOUTS["fixed_padding_widget"] = _fixed_padding_text
READOUTS["dynamic_padding_widget"] = _dynamic_padding_text


@functools.lru_cache(maxsize=8)
def _fixed_curve(corpus: str, batch_size: int) -> tuple[tuple[int, ...], list[float], list[float]]:
    lengths = load_corpus(corpus).lengths
    wasted, truncated = [], []
    for m in MAX_LENGTH_GRID:
        (r,) = waste_table(lengths, ("fixed",), batch_size=batch_size, max_length=m)
        wasted.append(1 - r.efficiency)
        truncated.append(r.truncated_tokens / (r.real_tokens + r.truncated_tokens))
    return MAX_LENGTH_GRID, wasted, truncated


@functools.lru_cache(maxsize=8)
def _batch_curve(corpus: str, max_length: int) -> dict[str, list[float]]:
    lengths = load_corpus(corpus).lengths
    curves: dict[str, list[float]] = {f"fixed ({max_length})": [], "dynamic": []}
    for b in BATCH_SIZE_GRID:
        fixed, dynamic = waste_table(lengths, ("fixed", "dynamic"), batch_size=b, max_length=max_length)
        curves[f"fixed ({max_length})"].append(fixed.efficiency)
        curves["dynamic"].append(dynamic.efficiency)
    return curves


def fixed_padding_widget(corpus: str = "fortunes", max_length: int = 128, *, batch_size: int = 32) -> W.VBox:
    """Fixed padding: a ``max_length`` slider and a corpus dropdown; the readout gives efficiency and
    truncation from :func:`padlab.strategies.waste_table` (strategy ``"fixed"``) over the whole corpus."""
    check_choice("corpus", corpus, CORPORA)
    max_length = check_int("max_length", max_length, min_value=8)
    if max_length > 512:
        raise fail("max_length", max_length, "be at most 512 (the slider's range)")
    batch_size = check_int("batch_size", batch_size, min_value=1)
    pick = W.Dropdown(options=list(CORPORA), value=corpus, description="corpus")
    slider = W.IntSlider(value=max_length, min=8, max=512, step=8, description="max_length",
                         continuous_update=False)
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        readout.value = _fixed_padding_text({"corpus": pick.value, "max_length": slider.value},
                                            batch_size=batch_size)
        grid, wasted, truncated = _fixed_curve(pick.value, batch_size)
        _show_png(out, viz.waste_vs_max_length(grid, wasted, truncated, corpus=pick.value, current=slider.value))

    pick.observe(update, names="value")
    slider.observe(update, names="value")
    update()
    return W.VBox([W.HBox([pick, slider]), readout, out])


def dynamic_padding_widget(corpus: str = "fortunes", batch_size: int = 32, *, max_length: int = 512) -> W.VBox:
    """Dynamic padding: a batch-size slider and a corpus dropdown; the readout compares the
    ``"dynamic"`` and ``"fixed"`` rows of :func:`padlab.strategies.waste_table` at that batch size."""
    check_choice("corpus", corpus, CORPORA)
    check_choice("batch_size", batch_size, BATCH_SIZE_GRID)
    max_length = check_int("max_length", max_length, min_value=1)
    pick = W.Dropdown(options=list(CORPORA), value=corpus, description="corpus")
    slider = W.SelectionSlider(options=list(BATCH_SIZE_GRID), value=batch_size, description="batch size",
                               continuous_update=False)
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        readout.value = _dynamic_padding_text({"corpus": pick.value, "batch size": slider.value},
                                              max_length=max_length)
        _show_png(out, viz.waste_vs_batch_size(BATCH_SIZE_GRID, _batch_curve(pick.value, max_length),
                                           corpus=pick.value, current=slider.value))

    pick.observe(update, names="value")
    slider.observe(update, names="value")
    update()
    return W.VBox([W.HBox([pick, slider]), readout, out])

# --- chapter 03: bucketing --------------------------------------------------------------------

# --- chapter 04: packing ----------------------------------------------------------------------

#: The capacity slider's range (tokens per packed row).
CAPACITY_RANGE = (64, 1024, 64)
#: The sequences-per-pack limits offered (``None``: no limit).
MAX_PER_PACK_CHOICES = (None, 2, 3, 4, 8, 16)
#: Which packs the picture shows.
PACKS_SHOWN = ("first", "spread", "last")


def _packing_readout(corpus: str, capacity: int, algorithm: str, max_per_pack: int | None, result,
                     real_tokens: int) -> str:
    limit = "" if max_per_pack is None else f", at most {max_per_pack} per pack"
    n = result.indices.size
    cut = result.truncated_tokens
    return (f"{corpus}, capacity {capacity}, {algorithm}{limit}: {result.n_packs:,} packs for {n:,} texts "
            f"({n / result.n_packs:.1f} per pack), efficiency {result.efficiency:.2%}; "
            f"{cut:,} tokens truncated ({cut / real_tokens:.2%} of real tokens)")


def _shown_packs(n_packs: int, n: int, which: str) -> list[int]:
    if which == "first":
        return list(range(min(n, n_packs)))
    if which == "last":
        return list(range(max(n_packs - n, 0), n_packs))
    # Evenly spread from the first pack (the longest sequences) to the last (the shortest).
    return sorted(set(np.linspace(0, n_packs - 1, min(n, n_packs)).round().astype(int).tolist()))


def packing_widget(corpus: str = "wordnet", capacity: int = 512, algorithm: str = "spfhp", *,
                   max_per_pack: int | None = None, shown: str = "spread", n_packs: int = 12) -> W.VBox:
    """Packing: capacity slider, algorithm, sequences-per-pack limit, corpus and which packs to draw.

    The readout (packs, efficiency, truncated tokens) comes from :func:`padlab.packing.pack` with
    ``truncate=True`` over the whole corpus; the picture is :func:`padlab.viz.pack_bars` of
    ``n_packs`` of its packs (the first, the last, or spread evenly over all).
    """
    check_choice("corpus", corpus, CORPORA)
    lo, hi, step = CAPACITY_RANGE
    capacity = check_int("capacity", capacity, min_value=lo)
    if capacity > hi or capacity % step:
        raise fail("capacity", capacity, f"be a multiple of {step} from {lo} to {hi} (the slider's range)")
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("max_per_pack", max_per_pack, MAX_PER_PACK_CHOICES)
    check_choice("shown", shown, PACKS_SHOWN)
    n_packs = check_int("n_packs", n_packs, min_value=1)
    pick = W.Dropdown(options=list(CORPORA), value=corpus, description="corpus")
    slider = W.IntSlider(value=capacity, min=lo, max=hi, step=step, description="capacity",
                         continuous_update=False)
    alg = W.ToggleButtons(options=list(ALGORITHMS), value=algorithm, description="algorithm")
    limit = W.Dropdown(options=[("none", None)] + [(str(k), k) for k in MAX_PER_PACK_CHOICES[1:]],
                       value=max_per_pack, description="max per pack")
    which = W.Dropdown(options=list(PACKS_SHOWN), value=shown, description="packs shown")
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        lengths = load_corpus(pick.value).lengths
        result = pack(lengths, slider.value, algorithm=alg.value, max_per_pack=limit.value, truncate=True)
        readout.value = _packing_readout(pick.value, slider.value, alg.value, limit.value, result,
                                         int(lengths.sum()))
        chosen = _shown_packs(result.n_packs, n_packs, which.value)
        packs = result.packs
        _show_png(out, viz.pack_bars([result.lengths[packs[p]] for p in chosen], slider.value,
                                     pack_names=[f"pack {p:,}" for p in chosen],
                                     title=f"{pick.value}: {len(chosen)} of {result.n_packs:,} packs "
                                           f"({which.value}), {alg.value}, capacity {slider.value}"))

    for control in (pick, slider, alg, limit, which):
        control.observe(update, names="value")
    update()
    return W.VBox([W.HBox([pick, slider, limit]), W.HBox([alg, which]), readout, out])


# --- chapter 05: float formats ----------------------------------------------------------------

# --- chapter 07: benchmark --------------------------------------------------------------------
