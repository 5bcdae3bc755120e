"""Chapter 05 figures (padlab.viz) and the Float Toy widget (padlab.widgets).

Expected bits and values are derived by hand in the comments; the widget's readouts are written
out (:data:`TOY`), never recomputed by ``widgets.READOUTS`` or :func:`padlab.floats.decompose`.
"""
from __future__ import annotations

import copy
import html
import re
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from padlab import floats, viz, widgets


def _cells(ax):
    """The unit bit cells, left to right (legend handles and axes backgrounds excluded)."""
    cells = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() == 1 and p.get_height() == 0.8]
    return sorted(cells, key=lambda p: (-p.get_y(), p.get_x()))


ON = {f: to_hex(c[0]) for f, c in viz.FIELD_COLOURS.items()}
OFF = {f: to_hex(c[1]) for f, c in viz.FIELD_COLOURS.items()}


# --- viz.bit_layout ---------------------------------------------------------------------------

def test_bit_layout_one_cell_per_bit_coloured_by_field():
    rows = [dict(format="a", total_bits=6, exponent_bits=3, mantissa_bits=2, bias=3, max=14.0),
            dict(format="b", total_bits=4, exponent_bits=2, mantissa_bits=1, bias=1, max=6.0)]
    fig = viz.bit_layout(rows)
    (ax,) = fig.get_axes()
    cells = _cells(ax)
    assert len(cells) == 10
    colours = [to_hex(c.get_facecolor()) for c in cells]
    assert colours[:6] == [ON["sign"]] + [ON["exponent"]] * 3 + [ON["mantissa"]] * 2
    assert colours[6:] == [ON["sign"]] + [ON["exponent"]] * 2 + [ON["mantissa"]]
    texts = [t.get_text() for t in ax.texts]
    assert "a (6 bits)" in texts and "b (4 bits)" in texts
    assert "bias 3, max 14" in texts and "bias 1, max 6" in texts


def test_bit_layout_of_the_real_table_shows_the_seed_layouts():
    fig = viz.bit_layout(floats.format_table(["fp64", "fp32", "fp16"]))
    (ax,) = fig.get_axes()
    assert len(_cells(ax)) == 64 + 32 + 16
    texts = [t.get_text() for t in ax.texts]
    for widths in (("1", "11", "52"), ("1", "8", "23"), ("1", "5", "10")):
        assert all(w in texts for w in widths)


# --- viz.float_bits ---------------------------------------------------------------------------

# 1.0 in fp16: sign 0, biased exponent 15 = 01111, mantissa 0.
ONE_FP16 = dict(format="fp16", value=1.0, rounded=1.0, bits="0011110000000000", hex="0x3c00", sign=0,
                exponent_bits="01111", mantissa_bits="0000000000", biased_exponent=15, exponent=0,
                mantissa=0, significand=1.0, kind="normal", abs_error=0.0, relative_error=0.0,
                ulp=2.0 ** -10, next_down=1 - 2.0 ** -11, next_up=1 + 2.0 ** -10)


def test_float_bits_colours_dark_ones_light_zeros_and_writes_the_formula():
    d = copy.deepcopy(ONE_FP16)
    fig = viz.float_bits(d)
    assert d == ONE_FP16                                      # the caller's dict is left alone
    (ax,) = fig.get_axes()
    cells = _cells(ax)
    assert len(cells) == 16
    fields = ["sign"] + ["exponent"] * 5 + ["mantissa"] * 10
    expected = [(ON if b == "1" else OFF)[f] for b, f in zip(d["bits"], fields)]
    assert [to_hex(c.get_facecolor()) for c in cells] == expected
    texts = [t.get_text() for t in ax.texts]
    assert texts[:16] == list(d["bits"])
    assert "normal:  +2^0 x 1 = 1.0" in texts
    assert "15 - bias 15 = 0" in texts
    assert ax.get_title() == "1.0 in fp16 (0x3c00)"


@pytest.mark.parametrize("value, fmt, words", [
    ("-inf", "fp16", ["inf:  -inf", "all ones"]),
    ("nan", "fp8-e4m3fn", ["nan:  NaN"]),
    ("0", "bf16", ["zero:  +0"]),
    ("1e-7", "fp16", ["0: subnormal, 2^-14"]),
])
def test_float_bits_special_kinds(value, fmt, words):
    fig = viz.float_bits(floats.decompose(value, fmt))
    texts = [t.get_text() for t in fig.get_axes()[0].texts]
    assert all(w in texts for w in words)


# --- viz.value_density ------------------------------------------------------------------------

def test_value_density_counts_per_binade_by_hand():
    # fp8-e4m3fn (bias 7, 3 mantissa bits): subnormals m * 2**-9 for m = 1..7 fall 1, 2, 4 into
    # the binades 2**-9, 2**-8, 2**-7; normals fill 8 per binade from 2**-6 to 2**7; the top
    # binade [256, 512) holds 7 (mantissa 111 with exponent 1111 is NaN).
    values = floats.all_values("fp8-e4m3fn")
    before = values.copy()
    fig = viz.value_density({"fp8-e4m3fn": values})
    np.testing.assert_array_equal(values, before)
    (ax,) = fig.get_axes()
    (stairs,) = ax.patches
    counts, edges = stairs.get_data().values, stairs.get_data().edges
    by_binade = dict(zip(np.log2(edges[:-1]).astype(int), counts.astype(int)))
    expected = {-9: 1, -8: 2, -7: 4, **{k: 8 for k in range(-6, 8)}, 8: 7}
    assert {k: v for k, v in by_binade.items() if v} == expected
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_legend().get_texts()[0].get_text() == "fp8-e4m3fn: 126 positive values"


# --- viz.precision_vs_magnitude ---------------------------------------------------------------

def test_precision_vs_magnitude_gaps_and_bands():
    x = [1e-3, 1e-2, 1e-1, 1.0]
    fig = viz.precision_vs_magnitude(x, {"fp16": [1.0, 0.5, 0.0, np.inf], "bf16": [0.1, 0.1, 0.1, 0.1]},
                                     bands={"gradients": (1e-3, 1e-2)}, ylabel="rel")
    (ax,) = fig.get_axes()
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["fp16", "bf16"]
    np.testing.assert_array_equal(lines[0].get_ydata(), [1.0, 0.5, np.nan, np.nan])   # 0 and inf: gaps
    assert ax.get_ylabel() == "rel" and ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "gradients" in [t.get_text() for t in ax.texts]


# --- viz.format_ranges ------------------------------------------------------------------------

def test_format_ranges_bars_from_smallest_subnormal_to_max():
    rows = floats.format_table(["fp16", "fp8-e4m3fn"])
    fig = viz.format_ranges(rows, bands={"activations": (1e4, 1e6)})
    (ax,) = fig.get_axes()
    bars = [p for p in ax.patches if isinstance(p, Rectangle)][1:]  # after the band
    assert len(bars) == 4
    # fp16: subnormals from 2**-24 to 2**-14, normals from 2**-14 to 65504.
    assert bars[0].get_x() == pytest.approx(2.0 ** -24) and bars[0].get_x() + bars[0].get_width() == pytest.approx(2.0 ** -14)
    assert bars[1].get_x() == pytest.approx(2.0 ** -14) and bars[1].get_x() + bars[1].get_width() == pytest.approx(65504)
    # e4m3fn: 2**-9 .. 2**-6 .. 448.
    assert bars[2].get_x() == pytest.approx(2.0 ** -9) and bars[3].get_x() + bars[3].get_width() == pytest.approx(448)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fp16", "fp8-e4m3fn"]
    assert ax.get_xscale() == "log"


def test_format_ranges_cut_axis_prints_the_ends_at_the_edge():
    fig = viz.format_ranges(floats.format_table(["fp64", "fp16"]), xlim=(1e-40, 1e40))
    (ax,) = fig.get_axes()
    texts = [t.get_text() for t in ax.texts]
    assert "max 1.8e+308 \u2192" in texts and "\u2190 4.94e-324" in texts
    assert "65504" not in texts and "6.55e+04" in texts
    assert ax.get_xlim() == pytest.approx((1e-40, 1e40))


# --- widgets.float_toy_widget -----------------------------------------------------------------

def _parts(w):
    row, bits, readout, image = w.children
    pick, box, down, up = row.children
    return pick, box, down, up, bits.children, readout, image


def _bits(buttons):
    return "".join(b.description for b in buttons)


def _text(readout_html: str) -> str:
    """The readout as a browser shows it: tags dropped, lines joined with " | "."""
    return html.unescape(re.sub(r"<(?!br>)[^>]+>", "", readout_html).replace("<br>", " | "))


#: The Float Toy's readout, by hand, for (format, text in the value box).
TOY = {
    ("fp16", "0.1"): "fp16 0 01011 1001100110 = 0x2e66 (normal) | value 0.1 → stored 0.0999755859375 | "
                     "+2^-4 × 1.1001100110b (biased exponent 11, significand 1.599609375) | "
                     "absolute error 2.44e-05, relative error 0.000244; spacing here (ULP) 6.1e-05 | "
                     "neighbours: next down 0.09991455078125, next up 0.10003662109375",
    ("fp16", "1.0009765625"): "fp16 0 01111 0000000001 = 0x3c01 (normal) | value 1.0009765625 → stored 1.0009765625 | "
                              "+2^0 × 1.0000000001b (biased exponent 15, significand 1.0009765625) | "
                              "absolute error 0, relative error 0; spacing here (ULP) 0.000977 | "
                              "neighbours: next down 1.0, next up 1.001953125",
    ("fp16", "-65504.0"): "fp16 1 11110 1111111111 = 0xfbff (normal) | value -65504.0 → stored -65504.0 | "
                          "-2^15 × 1.1111111111b (biased exponent 30, significand 1.9990234375) | "
                          "absolute error 0, relative error 0; spacing here (ULP) 32 | "
                          "neighbours: next down -inf, next up -65472.0",
    ("fp4-e2m1", "-2.5"): "fp4-e2m1 1 10 0 = 0xc (normal) | value -2.5 → stored -2.0 | "
                          "-2^1 × 1.0b (biased exponent 2, significand 1.0) | "
                          "absolute error 0.5, relative error 0.2; spacing here (ULP) 1 | "
                          "neighbours: next down -3.0, next up -1.5",
    ("fp4-e2m1", "6"): "fp4-e2m1 0 11 1 = 0x7 (normal) | value 6 → stored 6.0 | "
                       "+2^2 × 1.1b (biased exponent 3, significand 1.5) | "
                       "absolute error 0, relative error 0; spacing here (ULP) 2 | "
                       "neighbours: next down 4.0, next up nan",
    ("bf16", "0x1ffff"): "bits must fit in 16 bits for bf16 (0 <= pattern < 65536); got '0x1ffff'",
}


def _check_readout(w):
    """The readout is the hand-written text for the controls a browser sees (format, value box)."""
    pick, box, *_, readout, _img = _parts(w)
    assert _text(readout.value) == TOY[pick.value, box.value]


def test_float_toy_readout_entry_reads_page_values():
    assert _text(widgets.READOUTS["float_toy_widget"]({"format": "fp16", "value": "0.1"})) == TOY["fp16", "0.1"]


def test_float_toy_defaults_show_point_one_in_fp16():
    # 0.1 = 1.6 * 2**-4: sign 0, biased exponent -4 + 15 = 11 = 01011, mantissa 0.6 * 1024 = 614.4
    # -> 614 = 1001100110; stored 1614/1024 * 2**-4 = 0.0999755859375, neighbours one ULP (2**-14) away.
    w = widgets.float_toy_widget()
    pick, box, down, up, buttons, readout, image = _parts(w)
    assert (pick.description, box.description, down.description, up.description) == \
        ("format", "value", "next down", "next up")
    assert "padlab-readout" in readout._dom_classes
    assert _bits(buttons) == "0" + "01011" + "1001100110"
    assert [b.style.button_color for b in buttons[:3]] == [OFF["sign"], OFF["exponent"], ON["exponent"]]
    text = readout.value
    assert "0x2e66 (normal)" in text and "stored 0.0999755859375" in text
    assert "absolute error 2.44e-05" in text           # 0.1 - 0.0999755859375 = 2.44140625e-5 (+ 0.1's tail)
    assert "relative error 0.000244" in text
    assert "next down 0.09991455078125, next up 0.10003662109375" in text
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    _check_readout(w)


def test_float_toy_buttons_step_and_flip_bits():
    w = widgets.float_toy_widget("1", "fp16")
    pick, box, down, up, buttons, readout, image = _parts(w)
    assert _bits(buttons) == "0011110000000000"
    png = image.value
    up.click()                                           # 1 + 2**-10
    assert box.value == "1.0009765625" and _bits(buttons) == "0011110000000001"
    assert image.value != png
    _check_readout(w)
    down.click()
    down.click()                                         # below 1 the spacing halves: 1 - 2**-11
    assert box.value == "0.99951171875" and _bits(buttons) == "0011101111111111"
    buttons[0].click()                                   # the sign bit
    assert box.value == "-0.99951171875" and _bits(buttons)[0] == "1"
    buttons[1].click()                                   # top exponent bit: 2**16 times larger
    assert box.value == "-65504.0" and _bits(buttons) == "1111101111111111"
    assert "relative error 0;" in readout.value          # a stored value has no error
    _check_readout(w)


def test_float_toy_switching_format_rebuilds_the_bits():
    w = widgets.float_toy_widget("-2.5", "fp16")
    pick, box, *_ = _parts(w)
    # -2.5 = -1.25 * 2**1: fp64 sign 1, exponent 1 + 1023 = 10000000000, mantissa 01000...
    pick.value = "fp64"
    buttons = _parts(w)[4]
    assert _bits(buttons) == "1" + "10000000000" + "01" + "0" * 50
    pick.value = "fp4-e2m1"
    # fp4 holds 2 and 3 but not 2.5: a tie, to the even mantissa: -2 = -1.0 * 2**(2 - 1).
    assert _bits(_parts(w)[4]) == "1" + "10" + "0" and box.value == "-2.5"
    _check_readout(w)


def test_float_toy_nan_payload_and_edges():
    w = widgets.float_toy_widget("0x7e01", "fp16")
    pick, box, down, up, buttons, readout, _ = _parts(w)
    assert _bits(buttons) == "0111111000000001" and "(nan)" in readout.value
    assert down.disabled and up.disabled
    buttons[0].click()
    assert box.value == "0xfe01" and _bits(buttons) == "1111111000000001"
    box.value = "inf"
    assert up.disabled and not down.disabled
    down.click()
    assert box.value == "65504.0"
    pick.value = "fp8-e4m3fn"
    box.value = "448"                                   # the max, with no inf above it
    assert up.disabled and not down.disabled
    box.value = "500"                                   # beyond 464 = 448 + 16: NaN, as ml_dtypes
    assert _bits(_parts(w)[4]) == "01111111" and "(nan)" in readout.value
    pick.value = "fp4-e2m1"
    box.value = "6"
    assert up.disabled and _bits(_parts(w)[4]) == "0111"
    _check_readout(w)


def test_float_toy_bad_text_reports_and_keeps_the_bits():
    w = widgets.float_toy_widget("1", "bf16")
    pick, box, down, up, buttons, readout, _ = _parts(w)
    before = _bits(buttons)
    box.value = "one"
    assert "value must be a real number or a numeric string" in readout.value
    assert _bits(buttons) == before
    box.value = "0x1ffff"
    assert "bits must fit in 16 bits for bf16" in readout.value
    _check_readout(w)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fmt="fp12"), "format must be one of"),
    (dict(value="abc"), "value must be a real number or a numeric string"),
    (dict(value=True), "value must be a number or a numeric string"),
    (dict(value=[1.0]), "value must be a number or a numeric string"),
    (dict(value="nan", fmt="fp4-e2m1"), "value must not be NaN"),
    (dict(value="0x1ff", fmt="fp8-e5m2"), "bits must fit in 8 bits"),
])
def test_float_toy_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.float_toy_widget(**kwargs)


_TOY = {}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["fp32", "tf32", "fp16", "bf16", "fp8-e4m3fn", "fp8-e5m2", "fp4-e2m1"]), st.data())
def test_float_toy_bit_patterns_survive_the_text_box(fmt, data):
    # Any pattern typed as hex shows its bits; stepping up then down (away from zeros, NaN and the
    # ends of the range) returns to it, through text the box holds; the readout shows the buttons' bits.
    n = floats.get_format(fmt).total_bits
    pattern = data.draw(st.integers(0, 2 ** n - 1))
    w = _TOY.setdefault("w", widgets.float_toy_widget())
    pick, box, down, up, *_ = _parts(w)
    with mock.patch.object(widgets, "show_png", lambda image, fig: None), \
            mock.patch.object(viz, "float_bits", lambda bits: None):   # the picture is tested above
        _round_trip(w, fmt, n, pattern)


def _check_bits_in_readout(w):
    """The readout's first line shows the bits the buttons show, split into fields, and their hex."""
    pick, box, down, up, buttons, readout, _ = _parts(w)
    bits, e = _bits(buttons), floats.get_format(pick.value).exponent_bits
    m = re.match(r"(\S+) (\d) (\d+) (\d+) = 0x([0-9a-f]+) \(", _text(readout.value))
    assert m, readout.value
    assert m.groups()[:4] == (pick.value, bits[0], bits[1:1 + e], bits[1 + e:]) and int(m[5], 16) == int(bits, 2)


def _round_trip(w, fmt, n, pattern):
    pick, box, down, up, *_ = _parts(w)
    pick.value = fmt
    box.value = f"0x{pattern:x}"
    shown = _bits(_parts(w)[4])
    value = floats.from_bits(pattern, fmt)
    if np.isnan(value):
        # A NaN stays a NaN with its sign (exponent all ones, quiet bit set); its payload may change,
        # and the readout says so exactly when it did.
        e = floats.get_format(fmt).exponent_bits
        assert shown[0] == format(pattern, f"0{n}b")[0] and shown[1:2 + e] == "1" * (e + 1)
        assert ("does not keep bit for bit" in w.children[2].value) == (shown != format(pattern, f"0{n}b"))
    else:
        assert shown == format(pattern, f"0{n}b")
    _check_bits_in_readout(w)
    if np.isfinite(value) and value != 0 and not up.disabled:
        up.click()
        down.click()
        assert _bits(_parts(w)[4]) == format(pattern, f"0{n}b")
        assert widgets.float_toy_state(box.value, fmt).relative_error == 0.0   # the box holds it exactly
        _check_bits_in_readout(w)
