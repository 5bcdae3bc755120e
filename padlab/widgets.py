"""ipywidgets wiring only: a control changes, padlab computes, a :mod:`padlab.viz` function plots.

Every ``*_widget`` function returns an ``ipywidgets.Widget`` (controls plus an output area) and
keeps no state of its own beyond the controls. The numbers a widget shows come from the same
padlab functions the tests check, so a browser test can compare the page with padlab.

Labels are shown in full (:data:`LABEL_STYLE`), and each picture is drawn at the pixel width it is
shown at (:data:`PICTURE_DPI`, :data:`PICTURE_MAX_WIDTH_PX`), so its text is as sharp as a static plot's.
"""
from __future__ import annotations

import functools
import html
import io
import math
import numbers
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np

from . import viz
from ._validate import check_choice, check_int, fail
# Chapter 07's readers of the shipped benchmark JSON.
from .experiments.results import best_row, result_for_work, row_label, speedups
from .data import CORPORA, load_corpus
from .floats import FORMATS, FloatBits, FloatFormat, decompose, decompose_many, from_bits, get_format
from .packing import ALGORITHMS, pack
from .strategies import bucket_tradeoff, waste_table


#: Every control's description is shown in full ("mega_batch", "max per pack", not "mega_bat...").
LABEL_STYLE = {"description_width": "initial"}
#: Widget pictures are drawn at this resolution (a little above the notebooks' 90 dpi, for the
#: widgets' wider output area) ...
PICTURE_DPI = 110
#: ... unless that would be wider than this (JupyterLab's output area at a 1400 px window is 964 px).
PICTURE_MAX_WIDTH_PX = 960


def picture_dpi(width_inches: float) -> float:
    """The dpi a widget picture ``width_inches`` wide is drawn at: :data:`PICTURE_DPI`, lowered so
    that the picture is at most :data:`PICTURE_MAX_WIDTH_PX` pixels wide."""
    return min(PICTURE_DPI, PICTURE_MAX_WIDTH_PX / width_inches)


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels from a PNG's header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def show_png(image: W.Image, fig) -> None:
    """Draw ``fig`` into an Image widget at :func:`picture_dpi`, size the widget to the picture's
    pixels (a flex box would otherwise stretch it to the output's width, blurring its text), and
    free the figure.

    An image in widget state, not a display inside an ``Output`` area: kernels run without a browser
    (nbval, nbconvert) then record the same cell outputs, so stored notebooks compare cleanly.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=picture_dpi(fig.get_figwidth()))
    plt.close(fig)
    png = buf.getvalue()
    width, _ = png_size(png)
    image.value = png
    image.layout.width = f"{width}px"
    image.layout.height = "auto"
    image.layout.max_width = "100%"      # a narrower window shrinks it (keeping its aspect) rather than cut it


def _row(*controls: W.Widget) -> W.HBox:
    """Controls side by side, wrapping onto a second line where the window is narrow."""
    return W.HBox(list(controls), layout=W.Layout(flex_flow="row wrap"))


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
    pick = W.Dropdown(style=LABEL_STYLE, options=list(CORPORA), value=corpus, description="corpus")
    slider = W.IntSlider(style=LABEL_STYLE, value=max_length, min=8, max=512, step=8, description="max_length",
                         continuous_update=False)
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        readout.value = _fixed_padding_text({"corpus": pick.value, "max_length": slider.value},
                                            batch_size=batch_size)
        grid, wasted, truncated = _fixed_curve(pick.value, batch_size)
        show_png(out, viz.waste_vs_max_length(grid, wasted, truncated, corpus=pick.value, current=slider.value))

    pick.observe(update, names="value")
    slider.observe(update, names="value")
    update()
    return W.VBox([_row(pick, slider), readout, out])


def dynamic_padding_widget(corpus: str = "fortunes", batch_size: int = 32, *, max_length: int = 512) -> W.VBox:
    """Dynamic padding: a batch-size slider and a corpus dropdown; the readout compares the
    ``"dynamic"`` and ``"fixed"`` rows of :func:`padlab.strategies.waste_table` at that batch size."""
    check_choice("corpus", corpus, CORPORA)
    check_choice("batch_size", batch_size, BATCH_SIZE_GRID)
    max_length = check_int("max_length", max_length, min_value=1)
    pick = W.Dropdown(style=LABEL_STYLE, options=list(CORPORA), value=corpus, description="corpus")
    slider = W.SelectionSlider(style=LABEL_STYLE, options=list(BATCH_SIZE_GRID), value=batch_size,
                               description="batch size", continuous_update=False)
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        readout.value = _dynamic_padding_text({"corpus": pick.value, "batch size": slider.value},
                                              max_length=max_length)
        show_png(out, viz.waste_vs_batch_size(BATCH_SIZE_GRID, _batch_curve(pick.value, max_length),
                                           corpus=pick.value, current=slider.value))

    pick.observe(update, names="value")
    slider.observe(update, names="value")
    update()
    return W.VBox([_row(pick, slider), readout, out])

# --- chapter 03: bucketing --------------------------------------------------------------------

#: Pool sizes the bucketing widget offers (in batches; 0 = one pool, a full sort).
MEGA_BATCH_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 0)
#: The noise slider's range: (min, max, step).
NOISE_RANGE = (0.0, 0.5, 0.05)


def _mega_batch_value(shown: Any) -> int:
    """A mega_batch control value as the page shows it ("full" or a number) -> the sampler's int."""
    if shown in ("full", 0, None):
        return 0
    if isinstance(shown, str) and shown.isdigit():
        shown = int(shown)
    if isinstance(shown, bool) or shown not in MEGA_BATCH_GRID:
        raise fail("mega_batch", shown, f"be one of {', '.join(map(str, MEGA_BATCH_GRID[:-1]))} or 'full'")
    return int(shown)


def _bucketing_readout(corpus: str, r) -> str:
    mb = "full sort" if r.mega_batch == 0 else f"mega_batch {r.mega_batch}"
    return (f"{corpus}, {mb}, noise {r.noise:.2f}: efficiency {r.efficiency:.1%} "
            f"(attention {r.attention_efficiency:.1%}); eta² {r.eta_squared:.3f} "
            f"(share of the length variance that batch membership explains; random batches ≈ 0.03)")


def _bucketing_text(controls: Mapping[str, Any], *, batch_size: int = 32, max_length: int = 512) -> str:
    corpus = controls["corpus"]
    r = bucket_tradeoff(load_corpus(corpus).lengths, batch_size=batch_size, max_length=max_length,
                        mega_batch=_mega_batch_value(controls["mega_batch"]),
                        noise=round(float(controls["noise"]), 2))
    return _bucketing_readout(corpus, r)


READOUTS["bucketing_widget"] = _bucketing_text


@functools.lru_cache(maxsize=16)
def _tradeoff_curve(corpus: str, noise: float, batch_size: int, max_length: int) -> tuple[list[float], list[float]]:
    lengths = load_corpus(corpus).lengths
    rows = [bucket_tradeoff(lengths, batch_size=batch_size, max_length=max_length, mega_batch=m, noise=noise)
            for m in MEGA_BATCH_GRID]
    return [r.efficiency for r in rows], [r.eta_squared for r in rows]


def bucketing_widget(corpus: str = "fortunes", mega_batch: int = 50, noise: float = 0.0, *,
                     batch_size: int = 32, max_length: int = 512) -> W.VBox:
    """Bucketing: a mega_batch slider (1 = random batches ... full sort), a length-noise slider and a
    corpus dropdown. The readout gives efficiency and eta² from
    :func:`padlab.strategies.bucket_tradeoff` for one epoch of :class:`padlab.batching.BucketBatchSampler`
    batches; the picture is :func:`padlab.viz.bucketing_tradeoff` over every pool size."""
    check_choice("corpus", corpus, CORPORA)
    mega_batch = _mega_batch_value(mega_batch)
    lo, hi, step = NOISE_RANGE
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not lo <= noise <= hi:
        raise fail("noise", noise, f"be a number from {lo} to {hi} (the slider's range)")
    batch_size = check_int("batch_size", batch_size, min_value=8)
    max_length = check_int("max_length", max_length, min_value=1)
    pick = W.Dropdown(style=LABEL_STYLE, options=list(CORPORA), value=corpus, description="corpus")
    pool = W.SelectionSlider(style=LABEL_STYLE, options=[(_MEGA_LABELS[m], m) for m in MEGA_BATCH_GRID],
                             value=mega_batch, description="mega_batch", continuous_update=False)
    jitter = W.FloatSlider(style=LABEL_STYLE, value=round(float(noise), 2), min=lo, max=hi, step=step,
                           readout_format=".2f", description="noise", continuous_update=False)
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        level = round(float(jitter.value), 2)
        controls = {"corpus": pick.value, "mega_batch": _MEGA_LABELS[pool.value], "noise": level}
        readout.value = _bucketing_text(controls, batch_size=batch_size, max_length=max_length)
        effs, etas = {}, {}
        for n in dict.fromkeys((0.0, level)):  # the noise-free curve stays as a reference
            effs[f"noise {n:.2f}"], etas[f"noise {n:.2f}"] = _tradeoff_curve(pick.value, n, batch_size, max_length)
        key = f"noise {level:.2f}"
        i = MEGA_BATCH_GRID.index(pool.value)
        show_png(out, viz.bucketing_tradeoff(MEGA_BATCH_GRID, effs, etas, corpus=pick.value,
                                              current=(pool.value, effs[key][i], etas[key][i])))

    for control in (pick, pool, jitter):
        control.observe(update, names="value")
    update()
    return W.VBox([_row(pick, pool, jitter), readout, out])


_MEGA_LABELS = {m: ("full" if m == 0 else str(m)) for m in MEGA_BATCH_GRID}

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


def shown_packs(n_packs: int, n: int, which: str) -> list[int]:
    """Which ``n`` of ``n_packs`` packs the packing widget draws: the ``"first"``, the ``"last"``, or
    ``"spread"`` evenly from the first to the last."""
    if which == "first":
        return list(range(min(n, n_packs)))
    if which == "last":
        return list(range(max(n_packs - n, 0), n_packs))
    # Evenly spread from the first pack (the longest sequences) to the last (the shortest).
    return sorted(set(np.linspace(0, n_packs - 1, min(n, n_packs)).round().astype(int).tolist()))


def _packing_text(controls: Mapping[str, Any], **_: Any) -> str:
    corpus, capacity, alg = controls["corpus"], int(controls["capacity"]), controls["algorithm"]
    limit = controls.get("max per pack")
    limit = None if limit in (None, "", "none") else int(limit)
    lengths = load_corpus(corpus).lengths
    result = pack(lengths, capacity, algorithm=alg, max_per_pack=limit, truncation=True)
    return _packing_readout(corpus, capacity, alg, limit, result, int(lengths.sum()))


READOUTS["packing_widget"] = _packing_text


def packing_widget(corpus: str = "wordnet", capacity: int = 512, algorithm: str = "spfhp", *,
                   max_per_pack: int | None = None, shown: str = "spread", n_packs: int = 12) -> W.VBox:
    """Packing: capacity slider, algorithm, sequences-per-pack limit, corpus and which packs to draw.

    The readout (packs, efficiency, truncated tokens) comes from :func:`padlab.packing.pack` with
    ``truncation=True`` over the whole corpus; the picture is :func:`padlab.viz.pack_bars` of
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
    pick = W.Dropdown(style=LABEL_STYLE, options=list(CORPORA), value=corpus, description="corpus")
    slider = W.IntSlider(style=LABEL_STYLE, value=capacity, min=lo, max=hi, step=step, description="capacity",
                         continuous_update=False)
    alg = W.ToggleButtons(style=LABEL_STYLE, options=list(ALGORITHMS), value=algorithm, description="algorithm")
    # ipywidgets shows a None value as "nothing selected" (a blank box): 0 stands for "none".
    limit = W.Dropdown(style=LABEL_STYLE, options=[("none", 0)] + [(str(k), k) for k in MAX_PER_PACK_CHOICES[1:]],
                       value=max_per_pack or 0, description="max per pack")
    which = W.Dropdown(style=LABEL_STYLE, options=list(PACKS_SHOWN), value=shown, description="packs shown")
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")

    def update(_=None) -> None:
        lengths = load_corpus(pick.value).lengths
        result = pack(lengths, slider.value, algorithm=alg.value, max_per_pack=limit.value or None, truncation=True)
        readout.value = _packing_readout(pick.value, slider.value, alg.value, limit.value or None, result,
                                         int(lengths.sum()))
        chosen = shown_packs(result.n_packs, n_packs, which.value)
        packs = result.packs
        show_png(out, viz.pack_bars([result.lengths[packs[p]] for p in chosen], slider.value,
                                     pack_names=[f"pack {p:,}" for p in chosen],
                                     title=f"{pick.value}: {len(chosen)} of {result.n_packs:,} packs "
                                           f"({which.value}), {alg.value}, capacity {slider.value}"))

    for control in (pick, slider, alg, limit, which):
        control.observe(update, names="value")
    update()
    return W.VBox([_row(pick, slider, limit), _row(alg, which), readout, out])


# --- chapter 05: float formats ----------------------------------------------------------------

def _html_bits(fb: FloatBits) -> str:
    """The bit string as three coloured spans: sign, exponent, mantissa."""
    parts = ((fb.bits[0], "sign"), (fb.exponent_bits, "exponent"), (fb.mantissa_bits, "mantissa"))
    return " ".join(f'<span style="color:{viz.FIELD_COLOURS[f][0]};font-family:monospace;font-weight:bold">'
                    f"{b}</span>" for b, f in parts if b)


def _exact_text(x: float) -> "str | None":
    """``x`` as text that :func:`padlab.floats.decompose` reads back exactly: ``repr`` where that is
    exact, else the full decimal expansion (None where that runs past 60 characters)."""
    if math.isnan(x) or Decimal(repr(x)) == Decimal(x):
        return repr(x)
    exact = str(Decimal(x))
    return exact if len(exact) <= 60 else None


def _exact(x: float) -> str:
    """`` (exactly ...)`` where ``repr`` rounds ``x``'s decimal expansion and the expansion is short."""
    exact = _exact_text(x)
    return f" (exactly {exact})" if exact is not None and exact != repr(x) else ""


def float_toy_state(value: str, fmt: str) -> FloatBits:
    """What the Float Toy shows for the text ``value`` in ``fmt``: :func:`padlab.floats.decompose`,
    or for a bit pattern typed as ``"0x..."`` (how the toy writes a NaN's bits) that pattern itself."""
    text = str(value).strip()
    if text[:2].lower() == "0x":
        (fb,) = decompose_many(np.array([from_bits(text, fmt)]), fmt)
        return fb
    return decompose(text, fmt)


def _float_toy_text(controls: Mapping[str, Any]) -> str:
    """The toy's readout for its controls ``{"format": name, "value": text}``."""
    fmt, text = controls["format"], str(controls["value"])
    try:
        fb = float_toy_state(text, fmt)
    except ValueError as err:
        return f'<span style="color:#c44e52">{html.escape(str(err))}</span>'
    head = f"<b>{fb.format}</b> {_html_bits(fb)} = {fb.hex} ({fb.kind})"
    if fb.kind in ("normal", "subnormal"):
        lead = "1" if fb.kind == "normal" else "0"
        formula = (f"{'-' if fb.sign else '+'}2^{fb.exponent} &times; {lead}.{fb.mantissa_bits}b "
                   f"(biased exponent {fb.biased_exponent}, significand {fb.significand!r})")
    else:
        formula = {"zero": "a zero: exponent and mantissa all zeros",
                   "inf": "infinity: exponent all ones, mantissa zero",
                   "nan": "not a number"}[fb.kind]
    lines = [head]
    if text.strip()[:2].lower() == "0x" and int(text.strip()[2:], 16) != int(fb.hex, 16):
        # Only NaNs get here: a cast keeps them NaN with their sign, but sets the quiet bit and may
        # drop payload bits (bf16 keeps none), so the toy shows the pattern the format really holds.
        lines.append(f"pattern {html.escape(text)} is a NaN that a conversion does not keep bit for bit "
                     f"(it sets the quiet bit, the top mantissa bit, and may drop payload bits): stored as {fb.hex}")
    return "<br>".join(lines + [
        f"value {html.escape(text)} &rarr; stored {fb.rounded!r}{_exact(fb.rounded)}",
        formula,
        f"absolute error {fb.abs_error:.3g}, relative error {fb.relative_error:.3g}; "
        f"spacing here (ULP) {fb.ulp:.3g}",
        f"neighbours: next down {fb.next_down!r}, next up {fb.next_up!r}",
    ])


READOUTS["float_toy_widget"] = _float_toy_text


def _bit_tooltip(fmt: FloatFormat, i: int) -> str:
    e = fmt.exponent_bits
    if i == 0:
        return "sign bit"
    if i <= e:
        return f"exponent bit (2^{e - i} of the biased exponent)"
    return f"mantissa bit (2^-{i - e})"


def float_toy_widget(value: "str | float" = "0.1", fmt: str = "fp16") -> W.VBox:
    """A Float Toy: type a value or click bits, in any format of :data:`padlab.floats.FORMATS`.

    Controls: ``format`` (dropdown), ``value`` (text: a number such as ``0.1``, ``-2.5e-3``,
    ``inf``, or a bit pattern ``0x...``), ``next down`` / ``next up`` buttons, and one button per
    bit (its description is the bit; click to flip it). The readout (CSS class
    ``padlab-readout``) gives the coloured fields, the stored value, the error, the ULP and the
    neighbours, all from :func:`padlab.floats.decompose`; the picture is :func:`padlab.viz.float_bits`.
    """
    fmt = get_format(fmt).name
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise fail("value", value, "be a number or a numeric string")
    text = value if isinstance(value, str) else repr(float(value))
    first = float_toy_state(text, fmt)          # bad values fail here, before any widget exists
    pick = W.Dropdown(style=LABEL_STYLE, options=list(FORMATS), value=fmt, description="format")
    box = W.Text(style=LABEL_STYLE, value=text, description="value", continuous_update=False)
    down = W.Button(description="next down", tooltip="the next smaller value this format can store")
    up = W.Button(description="next up", tooltip="the next larger value this format can store")
    bits = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap"))
    readout = W.HTML()
    readout.add_class("padlab-readout")
    image = W.Image(format="png")
    state = {"fb": first, "quiet": False}

    def make_buttons(f: FloatFormat) -> None:
        buttons = []
        for i in range(f.total_bits):
            b = W.Button(description="0", tooltip=_bit_tooltip(f, i),
                         layout=W.Layout(width="28px", padding="0px", margin="1px"))
            b.on_click(functools.partial(flip, i))
            buttons.append(b)
        bits.children = buttons

    def show(fb: FloatBits) -> None:
        state["fb"] = fb
        f = get_format(fb.format)
        if len(bits.children) != f.total_bits:
            make_buttons(f)
        fields = ["sign"] + ["exponent"] * f.exponent_bits + ["mantissa"] * f.mantissa_bits
        for b, digit, field in zip(bits.children, fb.bits, fields):
            b.description = digit
            b.style.button_color = viz.FIELD_COLOURS[field][0 if digit == "1" else 1]
            b.style.text_color = "white" if digit == "1" else "#333333"
        # Strictly between: no step past inf, from NaN, or where the format has nothing beyond max.
        down.disabled = not fb.next_down < fb.rounded
        up.disabled = not fb.next_up > fb.rounded
        readout.value = _float_toy_text({"format": fb.format, "value": box.value})
        show_png(image, viz.float_bits(fb))

    def set_value(fb: FloatBits) -> None:
        """Show ``fb`` and write its stored value into the text box, exactly (else, and for a NaN, its bits)."""
        state["quiet"] = True
        try:
            box.value = (None if fb.kind == "nan" else _exact_text(fb.rounded)) or fb.hex
        finally:
            state["quiet"] = False
        show(fb)

    def from_text(_=None) -> None:
        if state["quiet"]:
            return
        try:
            fb = float_toy_state(box.value, pick.value)
        except ValueError:          # the readout says why; bits and picture keep the last good value
            readout.value = _float_toy_text({"format": pick.value, "value": box.value})
            return
        show(fb)

    def step(direction: str, _button=None) -> None:
        fb = state["fb"]
        target = fb.next_up if direction == "up" else fb.next_down
        (new,) = decompose_many(np.array([target]), fb.format)
        set_value(new)

    def flip(i: int, _button=None) -> None:
        fb = state["fb"]
        n = len(fb.bits)
        pattern = int(fb.bits, 2) ^ (1 << (n - 1 - i))
        (new,) = decompose_many(np.array([from_bits(pattern, fb.format)]), fb.format)
        set_value(new)

    box.observe(from_text, names="value")
    pick.observe(from_text, names="value")
    down.on_click(functools.partial(step, "down"))
    up.on_click(functools.partial(step, "up"))
    show(first)
    return W.VBox([_row(pick, box, down, up), bits, readout, image])


# --- chapter 07: benchmark --------------------------------------------------------------------

WORK_LABELS = {"tokens": "equal tokens (~16k slots a step)", "sequences": "equal sequences (32 a step)"}


def _work_key(shown: str) -> str:
    """A work control value as the page shows it (a label of :data:`WORK_LABELS`, or its key) -> the key."""
    key = next((k for k, v in WORK_LABELS.items() if v == shown), shown)
    check_choice("work", key, WORK_LABELS)
    return key


def bench_precisions(work: str) -> list[str]:
    """The precision policies the shipped run in ``work`` mode has rows for, in the run's order:
    the only ones the bench widget offers (the equal-sequences run measured fp32 and bf16-amp only)."""
    return list(dict.fromkeys(r["precision"] for r in result_for_work(_work_key(work))["rows"]))


def _bench_text(controls: Mapping[str, Any]) -> str:
    precision, work = controls["precision"], _work_key(controls["work"])
    result = result_for_work(work)
    row = best_row(result, precision=precision)
    if row is None:
        return f"{WORK_LABELS[work]}: no {precision} rows in this run"
    speed = speedups(result, precision=precision)[row_label(row)]
    return (f"{WORK_LABELS[work]}, {precision}: best {row_label(row)} "
            f"{row['real_tokens_per_s']:,.0f} real tokens/s ({speed:.1f}x fixed/fp32), "
            f"MFU {row['mfu']:.1%}, padded {row['padded_fraction']:.1%}")


READOUTS["bench_widget"] = _bench_text


def bench_widget(precision: str = "bf16-amp", work: str = "tokens") -> W.VBox:
    """The shipped H100 benchmark: pick the equal-work mode and a precision policy; the bars show
    every row's speed-up over fixed/fp32 and the readout the best row's real tokens/s and MFU
    (:func:`padlab.experiments.results.best_row`, :func:`padlab.experiments.results.speedups`).

    The precision dropdown offers only the policies the chosen run measured
    (:func:`bench_precisions`); switching the mode to a run without the current policy selects
    that run's first policy.
    """
    work = _work_key(work)
    check_choice("precision", precision, bench_precisions(work))
    pick = W.Dropdown(style=LABEL_STYLE, options=bench_precisions(work), value=precision, description="precision")
    mode = W.Dropdown(style=LABEL_STYLE, options=list(WORK_LABELS.values()), value=WORK_LABELS[work],
                      description="work", layout=W.Layout(width="330px"))
    readout = W.HTML()
    readout.add_class("padlab-readout")
    out = W.Image(format="png")
    state = {"quiet": False}

    def update(_=None) -> None:
        if state["quiet"]:
            return
        readout.value = _bench_text({"precision": pick.value, "work": mode.value})
        w = _work_key(mode.value)
        result = result_for_work(w)
        best = row_label(best_row(result, precision=pick.value))
        show_png(out, viz.speedup_bars(speedups(result, precision=pick.value), highlight=best,
                                       title=f"{pick.value}, {WORK_LABELS[w]} ({result['device']})"))

    def new_work(_=None) -> None:
        offered = bench_precisions(mode.value)
        if list(pick.options) != offered:
            keep = pick.value if pick.value in offered else offered[0]
            state["quiet"] = True          # new options select their first entry: one redraw, below
            try:
                pick.options = offered
                pick.value = keep
            finally:
                state["quiet"] = False
        update()

    pick.observe(update, names="value")
    mode.observe(new_work, names="value")
    update()
    return W.VBox([_row(mode, pick), readout, out])
