"""padlab.floats: bit layouts by hand, exhaustive round trips, ranges against finfo, correct rounding."""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab import floats as F
from padlab._validate import PadlabError
from padlab.floats import (FORMATS, FloatBits, all_values, decode, decompose, decompose_many, describe,
                           encode, format_table, from_bits, get_format, next_down, next_up, range_fractions,
                           round_to, ulp, underflow_fraction)

# The layouts, written down independently of the module: exponent bits, mantissa bits, NaN kind.
LAYOUT = {
    "fp64": (11, 52, "ieee"), "fp32": (8, 23, "ieee"), "tf32": (8, 10, "ieee"), "fp16": (5, 10, "ieee"),
    "bf16": (8, 7, "ieee"), "fp8-e4m3fn": (4, 3, "all-ones"), "fp8-e5m2": (5, 2, "ieee"),
    "fp4-e2m1": (2, 1, "none"),
}
SMALL = ["tf32", "fp16", "bf16", "fp8-e4m3fn", "fp8-e5m2", "fp4-e2m1"]  # every pattern enumerable
NARROW = [n for n in SMALL if n != "tf32"]                               # ml_dtypes / numpy casts


def ref_decode(p: np.ndarray, name: str) -> np.ndarray:
    """Value of each pattern straight from the textbook formula (-1)^s * 1.m * 2^(E - bias)."""
    e, m, nan = LAYOUT[name]
    bias = 2 ** (e - 1) - 1
    p = p.astype(np.int64)
    s, E, M = p >> (e + m), (p >> m) & (2 ** e - 1), p & (2 ** m - 1)
    mag = np.where(E == 0, M / 2 ** m * 2.0 ** (1 - bias), (1 + M / 2 ** m) * np.ldexp(1.0, E - bias))
    top = E == 2 ** e - 1
    if nan == "ieee":
        mag = np.where(top, np.where(M == 0, np.inf, np.nan), mag)
    elif nan == "all-ones":
        mag = np.where(top & (M == 2 ** m - 1), np.nan, mag)
    return np.where(s == 1, -mag, mag)


def bits_of(*groups: str) -> str:
    return "".join(groups)


# ----------------------------------------------------------------------------- formats

def test_formats_match_the_layouts_written_here():
    assert list(FORMATS) == list(LAYOUT)
    for name, (e, m, nan) in LAYOUT.items():
        f = FORMATS[name]
        assert (f.exponent_bits, f.mantissa_bits, f.nan_encoding) == (e, m, nan)
        assert f.total_bits == 1 + e + m and f.bias == 2 ** (e - 1) - 1
        assert f.has_inf == (nan == "ieee") and f.finite_only == (nan != "ieee")


@pytest.mark.parametrize("alias,name", [
    ("float16", "fp16"), ("HALF", "fp16"), ("bfloat16", "bf16"), ("BF16", "bf16"), ("float", "fp32"),
    ("double", "fp64"), ("e4m3", "fp8-e4m3fn"), ("fp8_e4m3fn", "fp8-e4m3fn"), ("FP8_E5M2", "fp8-e5m2"),
    ("fp4", "fp4-e2m1"), ("e2m1", "fp4-e2m1"), ("TensorFloat32", "tf32"), (" fp16 ", "fp16"),
    (torch.bfloat16, "bf16"), (torch.float8_e4m3fn, "fp8-e4m3fn"), (torch.float32, "fp32"),
    (np.float16, "fp16"), (np.dtype("float64"), "fp64"), (ml_dtypes.float8_e5m2, "fp8-e5m2"),
    (ml_dtypes.float4_e2m1fn, "fp4-e2m1"),
])
def test_get_format_accepts_aliases_and_dtypes(alias, name):
    assert get_format(alias) is FORMATS[name]
    assert get_format(FORMATS[name]) is FORMATS[name]


@pytest.mark.parametrize("bad", ["fp12", "", "float8_e4m3", ml_dtypes.float8_e4m3, torch.int8, 3])
def test_get_format_rejects_unknown_formats(bad):
    # float8_e4m3 (IEEE-like, with inf) is a different format from e4m3fn and must not alias it.
    with pytest.raises(ValueError, match=r"format must be one of 'fp64'.*got"):
        get_format(bad)


# By hand: max = (2 - 2^-m or 2^(1-m)) * 2^emax, normal 2^(1-bias), subnormal 2^(1-bias-m), eps 2^-m.
BY_HAND = {
    "fp64": (1.7976931348623157e308, 2.0 ** -1022, 2.0 ** -1074, 2.0 ** -52),
    "fp32": ((2 - 2 ** -23) * 2.0 ** 127, 2.0 ** -126, 2.0 ** -149, 2.0 ** -23),
    "tf32": ((2 - 2 ** -10) * 2.0 ** 127, 2.0 ** -126, 2.0 ** -136, 2.0 ** -10),
    "fp16": (65504.0, 2.0 ** -14, 2.0 ** -24, 2.0 ** -10),
    "bf16": ((2 - 2 ** -7) * 2.0 ** 127, 2.0 ** -126, 2.0 ** -133, 2.0 ** -7),
    "fp8-e4m3fn": (448.0, 2.0 ** -6, 2.0 ** -9, 0.125),
    "fp8-e5m2": (57344.0, 2.0 ** -14, 2.0 ** -16, 0.25),
    "fp4-e2m1": (6.0, 1.0, 0.5, 0.5),
}


@pytest.mark.parametrize("name", list(LAYOUT))
def test_format_table_by_hand(name):
    row = next(r for r in format_table() if r["format"] == name)
    assert (row["max"], row["smallest_normal"], row["smallest_subnormal"], row["eps"]) == BY_HAND[name]
    assert row["decimal_digits"] == pytest.approx((LAYOUT[name][1] + 1) * math.log10(2))
    assert row["total_bits"] == 1 + LAYOUT[name][0] + LAYOUT[name][1]


def test_decimal_digits_of_the_familiar_formats():
    digits = {r["format"]: r["decimal_digits"] for r in format_table(["fp32", "fp16", "bf16"])}
    assert digits == pytest.approx({"fp32": 7.22, "fp16": 3.31, "bf16": 2.41}, abs=0.01)


TORCH = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
         "fp8-e4m3fn": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}
NUMPY = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16,
         "fp8-e4m3fn": ml_dtypes.float8_e4m3fn, "fp8-e5m2": ml_dtypes.float8_e5m2,
         "fp4-e2m1": ml_dtypes.float4_e2m1fn}


@pytest.mark.parametrize("name", list(TORCH))
def test_format_table_matches_torch_finfo(name):
    f, fi = FORMATS[name], torch.finfo(TORCH[name])
    assert (f.max, f.smallest_normal, f.eps, f.total_bits) == (fi.max, fi.smallest_normal, fi.eps, fi.bits)
    assert -f.max == fi.min
    # torch's resolution is 10**-floor(mantissa_bits * log10 2)
    assert fi.resolution == pytest.approx(10.0 ** -math.floor(f.mantissa_bits * math.log10(2)))


@pytest.mark.parametrize("name", list(NUMPY))
def test_format_table_matches_ml_dtypes_finfo(name):
    f, fi = FORMATS[name], ml_dtypes.finfo(NUMPY[name])
    assert (f.max, f.smallest_normal, f.smallest_subnormal, f.eps) == (
        float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal), float(fi.eps))
    assert (f.exponent_bits, f.mantissa_bits, f.total_bits) == (fi.nexp, fi.nmant, fi.bits)
    assert (f.min_exponent, f.max_exponent + 1) == (fi.minexp, fi.maxexp)


@pytest.mark.parametrize("name", SMALL)
def test_table_agrees_with_the_enumerated_values(name):
    f, v = FORMATS[name], ref_decode(np.arange(2 ** FORMATS[name].total_bits), name)
    pos = v[np.isfinite(v) & (v > 0)]
    assert (pos.max(), pos.min()) == (f.max, f.smallest_subnormal)
    assert pos[pos > 1].min() - 1 == f.eps


# ----------------------------------------------------------------------------- known bit layouts

KNOWN = [
    # value, format, sign exponent mantissa, stored, kind
    (1.0, "fp64", ("0", "01111111111", "0" * 52), 1.0, "normal"),
    (1.0, "fp32", ("0", "01111111", "0" * 23), 1.0, "normal"),
    (1.0, "tf32", ("0", "01111111", "0" * 10), 1.0, "normal"),
    (1.0, "fp16", ("0", "01111", "0" * 10), 1.0, "normal"),
    (1.0, "bf16", ("0", "01111111", "0" * 7), 1.0, "normal"),
    (1.0, "fp8-e4m3fn", ("0", "0111", "000"), 1.0, "normal"),
    (1.0, "fp8-e5m2", ("0", "01111", "00"), 1.0, "normal"),
    (1.0, "fp4-e2m1", ("0", "01", "0"), 1.0, "normal"),
    (-2.5, "fp64", ("1", "10000000000", "01" + "0" * 50), -2.5, "normal"),
    (-2.5, "fp32", ("1", "10000000", "01" + "0" * 21), -2.5, "normal"),
    (-2.5, "fp16", ("1", "10000", "0100000000"), -2.5, "normal"),
    (-2.5, "bf16", ("1", "10000000", "0100000"), -2.5, "normal"),
    (-2.5, "fp8-e4m3fn", ("1", "1000", "010"), -2.5, "normal"),
    (-2.5, "fp8-e5m2", ("1", "10000", "01"), -2.5, "normal"),
    (-2.5, "fp4-e2m1", ("1", "10", "0"), -2.0, "normal"),  # tie between -2 and -3: even mantissa
    (65504, "fp16", ("0", "11110", "1111111111"), 65504.0, "normal"),
    ("6.1035e-5", "fp16", ("0", "00001", "0000000000"), 2.0 ** -14, "normal"),
    (2.0 ** -24, "fp16", ("0", "00000", "0000000001"), 2.0 ** -24, "subnormal"),
    (2.0 ** -133, "bf16", ("0", "00000000", "0000001"), 2.0 ** -133, "subnormal"),
    (2.0 ** -149, "fp32", ("0", "00000000", "0" * 22 + "1"), 2.0 ** -149, "subnormal"),
    (5e-324, "fp64", ("0", "0" * 11, "0" * 51 + "1"), 5e-324, "subnormal"),
    (2.0 ** -9, "fp8-e4m3fn", ("0", "0000", "001"), 2.0 ** -9, "subnormal"),
    (2.0 ** -16, "fp8-e5m2", ("0", "00000", "01"), 2.0 ** -16, "subnormal"),
    (0.5, "fp4-e2m1", ("0", "00", "1"), 0.5, "subnormal"),
    (2.0 ** -25, "fp16", ("0", "00000", "0000000000"), 0.0, "zero"),  # tie with 2^-24: to even, 0
    (-0.0, "fp16", ("1", "00000", "0000000000"), -0.0, "zero"),
    ("inf", "fp16", ("0", "11111", "0000000000"), math.inf, "inf"),
    ("-inf", "fp32", ("1", "11111111", "0" * 23), -math.inf, "inf"),
    ("inf", "fp8-e5m2", ("0", "11111", "00"), math.inf, "inf"),
    ("inf", "fp4-e2m1", ("0", "11", "1"), 6.0, "normal"),  # no inf: saturates
    (448, "fp8-e4m3fn", ("0", "1111", "110"), 448.0, "normal"),
    (57344, "fp8-e5m2", ("0", "11110", "11"), 57344.0, "normal"),
    (65520, "fp16", ("0", "11111", "0000000000"), math.inf, "inf"),  # half a step above max
    (464, "fp8-e4m3fn", ("0", "1111", "110"), 448.0, "normal"),  # tie: 448 has the even mantissa
    ("nan", "fp8-e4m3fn", ("0", "1111", "111"), math.nan, "nan"),  # the only NaN pattern
    (465, "fp8-e4m3fn", ("0", "1111", "111"), math.nan, "nan"),  # no inf: overflow is NaN
]


@pytest.mark.parametrize("value,name,groups,stored,kind", KNOWN)
def test_known_bit_layouts(value, name, groups, stored, kind):
    fb = decompose(value, name)
    assert (fb.bits, fb.sign, fb.exponent_bits, fb.mantissa_bits) == (bits_of(*groups), int(groups[0]),
                                                                      groups[1], groups[2])
    assert fb.kind == kind and fb.format == name
    assert (math.isnan(fb.rounded) and math.isnan(stored)) or fb.rounded == stored
    assert math.copysign(1, fb.rounded) == math.copysign(1, stored) or math.isnan(stored)
    assert fb.hex.startswith("0x") and int(fb.hex, 16) == int(fb.bits, 2)
    assert len(fb.hex) == 2 + (len(fb.bits) + 3) // 4
    assert fb.biased_exponent == int(groups[1], 2) and fb.mantissa == int(groups[2], 2)


def test_fields_of_fp16_values_by_hand():
    fb = decompose(65504, "fp16")
    assert (fb.exponent, fb.mantissa, fb.significand, fb.ulp) == (15, 1023, 2 - 2 ** -10, 32.0)
    assert (fb.next_down, fb.next_up) == (65472.0, math.inf)
    sub = decompose(2.0 ** -24, "fp16")
    assert (sub.exponent, sub.biased_exponent, sub.significand) == (-14, 0, 2 ** -10)
    assert (sub.next_down, sub.next_up, sub.ulp) == (0.0, 2.0 ** -23, 2.0 ** -24)
    nan = decompose("nan", "fp16")
    assert nan.exponent_bits == "11111" and nan.mantissa != 0 and math.isnan(nan.significand)
    assert math.isnan(nan.abs_error) and math.isnan(nan.relative_error) and math.isnan(nan.ulp)


def test_error_of_0_1_in_fp16_by_hand():
    fb = decompose(0.1, "fp16")
    assert fb.rounded == 1638 / 16384  # 0.1 * 2^14 = 1638.4 -> 1638
    exact = abs(Fraction(0.1) - Fraction(1638, 16384))
    assert fb.abs_error == float(exact)
    assert fb.relative_error == pytest.approx(float(exact / Fraction(0.1)), rel=1e-15)


def test_decimal_string_is_measured_exactly():
    assert decompose(0.1, "fp64").relative_error == 0.0  # the double itself
    assert decompose("0.1", "fp64").relative_error == pytest.approx(5.551115123125783e-17, rel=1e-12)
    assert decompose("1e-400", "fp32").rounded == 0.0 and decompose("1e-400", "fp32").relative_error == 1.0
    big = decompose(10 ** 400, "fp32")
    assert big.rounded == math.inf and big.relative_error == math.inf


@pytest.mark.parametrize("text,expected", [
    ("1.00048828125000000000001", 1 + 2 ** -10),   # float64 makes this the tie 1 + 2^-11 ...
    ("1.00048828125", 1.0),                         # ... the tie itself goes to even ...
    ("1.000488281249999999999999", 1.0),            # ... and just below it down
    ("-1.00048828125000000000001", -(1 + 2 ** -10)),
    ("65519.99999999999999999999", 65504.0),        # float64 says 65520, which would overflow
    ("65520", math.inf),
])
def test_decimal_string_rounds_from_its_exact_value(text, expected):
    assert decompose(text, "fp16").rounded == expected
    assert float(text) in (1 + 2 ** -11, -(1 + 2 ** -11), 65520.0)  # the trap is real


def test_special_errors():
    assert (decompose("inf", "fp16").abs_error, decompose("inf", "fp16").relative_error) == (0.0, 0.0)
    sat = decompose("inf", "fp4-e2m1")
    assert sat.abs_error == math.inf and math.isnan(sat.relative_error)
    ovf = decompose(1e6, "fp16")
    assert (ovf.abs_error, ovf.relative_error) == (math.inf, math.inf)
    assert math.isnan(decompose(1e6, "fp8-e4m3fn").relative_error)
    assert decompose(0, "bf16").relative_error == 0.0


# ----------------------------------------------------------------------------- exhaustive round trips

@pytest.mark.parametrize("name", SMALL)
def test_decode_every_pattern_matches_the_formula(name):
    p = np.arange(2 ** FORMATS[name].total_bits, dtype=np.uint64)
    got, want = all_values(name), ref_decode(p, name)
    np.testing.assert_array_equal(got, want)  # NaN == NaN here
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # -0.0 included


@pytest.mark.parametrize("name", SMALL)
def test_every_pattern_round_trips_through_describe(name):
    f = FORMATS[name]
    p = np.arange(2 ** f.total_bits, dtype=np.uint64)
    d = describe(all_values(name), name)
    nan = np.isnan(d["rounded"])
    np.testing.assert_array_equal(d["pattern"][~nan], p[~nan])
    assert (d["kind"][nan] == "nan").all() and (d["kind"][~nan] != "nan").all()
    # a NaN comes back as a NaN pattern of the same class
    assert np.isnan(ref_decode(d["pattern"][nan], name)).all()
    fin = np.isfinite(d["rounded"])
    value = (-1.0) ** d["sign"][fin] * d["significand"][fin] * np.ldexp(1.0, d["exponent"][fin])
    np.testing.assert_array_equal(value, d["rounded"][fin])


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8-e4m3fn", "fp8-e5m2", "fp4-e2m1"])
def test_every_pattern_round_trips_through_decompose(name):
    f = FORMATS[name]
    items = decompose_many(all_values(name), name)
    assert all(isinstance(fb, FloatBits) for fb in items[:3])
    for p, fb in enumerate(items):
        want = format(p, f"0{f.total_bits}b")
        if fb.kind == "nan":
            assert math.isnan(ref_decode(np.array([p]), name)[0]) and math.isnan(fb.rounded)
        else:
            assert fb.bits == want, (p, fb)


@pytest.mark.parametrize("name", ["fp8-e4m3fn", "fp8-e5m2", "fp4-e2m1"])
def test_every_small_pattern_from_bits_then_decompose(name):
    f = FORMATS[name]
    for p in range(2 ** f.total_bits):
        bits = format(p, f"0{f.total_bits}b")
        v = from_bits(bits, name)
        assert from_bits(p, name) == v or math.isnan(v)
        fb = decompose(v, name)
        assert fb.bits == bits or (fb.kind == "nan" and math.isnan(v))


@pytest.mark.parametrize("name", ["fp16", "bf16", "tf32", "fp32", "fp64"])
def test_sampled_wide_patterns_from_bits_then_decompose(name):
    f = FORMATS[name]
    rng = np.random.default_rng(0)
    for p in rng.integers(0, 2 ** min(f.total_bits, 62), 300).tolist() + [0, 2 ** f.total_bits - 1]:
        bits = format(p, f"0{f.total_bits}b")
        v = from_bits(" ".join([bits[0], bits[1:1 + f.exponent_bits], bits[1 + f.exponent_bits:]]), name)
        fb = decompose(v, name)
        assert fb.bits == bits or (fb.kind == "nan" and math.isnan(v))


def test_from_bits_forms():
    assert from_bits("0 01111 0000000000", "fp16") == 1.0
    assert from_bits("0_11110_1111111111", "fp16") == 65504.0
    assert from_bits("0x3c00", "fp16") == 1.0 and from_bits(0x7BFF, "fp16") == 65504.0
    assert from_bits(np.uint8(0x7E), "e4m3fn") == 448.0
    assert from_bits("0 11110 11", "fp8-e5m2") == 57344.0


# ----------------------------------------------------------------------------- rounding

def correct_round(x: float, name: str, table: tuple[np.ndarray, np.ndarray]) -> float:
    """Nearest representable value by exact rational comparison; ties to the even pattern."""
    vals, pats = table
    f = FORMATS[name]
    a = abs(x)
    if a > f.max:
        step = 2.0 ** (f.max_exponent - f.mantissa_bits)
        beyond = Fraction(f.max) + Fraction(step)  # the value the exponent range no longer holds
        if Fraction(a) - Fraction(f.max) < beyond - Fraction(a) or (
                Fraction(a) - Fraction(f.max) == beyond - Fraction(a) and pats[-1] % 2 == 0):
            return math.copysign(f.max, x)
        return math.copysign(math.inf, x) if f.has_inf else (math.nan if f.has_nan else math.copysign(f.max, x))
    i = np.searchsorted(vals, a)
    if vals[i] == a:
        return math.copysign(a, x)
    lo, hi = Fraction(vals[i - 1]), Fraction(vals[i])
    dl, dh = Fraction(a) - lo, hi - Fraction(a)
    pick = i - 1 if dl < dh or (dl == dh and pats[i - 1] % 2 == 0) else i
    return math.copysign(float(vals[pick]), x)


def positive_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    v = ref_decode(np.arange(2 ** FORMATS[name].total_bits), name)
    pats = np.arange(v.size)
    keep = np.isfinite(v) & ~np.signbit(v)
    return v[keep], pats[keep]  # positive patterns: values increase with the pattern


def hard_cases(name: str, n: int, seed: int) -> np.ndarray:
    """Midpoints between neighbours, a hair either side of them, and random values in range."""
    vals, _ = positive_table(name)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, vals.size - 1, n)
    mid = (vals[i] + vals[i + 1]) / 2
    out = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, 0), mid * (1 + 2.0 ** -40),
                          mid * (1 - 2.0 ** -40), rng.uniform(0, vals[-1], n)])
    return out * rng.choice([-1.0, 1.0], out.size)


@pytest.mark.parametrize("name", SMALL)
def test_round_to_is_correctly_rounded_from_float64(name):
    table = positive_table(name)
    x = hard_cases(name, 300, seed=1)
    got = round_to(x, name)
    want = np.array([correct_round(v, name, table) for v in x])
    np.testing.assert_array_equal(got, want)


def test_double_rounding_negative_control():
    """Casting float64 -> float32 -> bf16 the plain way fails the reference the test above uses."""
    x = hard_cases("bf16", 300, seed=1)
    table = positive_table("bf16")
    want = np.array([correct_round(v, "bf16", table) for v in x])
    plain = x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    assert (plain != want).sum() > 50
    assert (round_to(x, "bf16") == want).all()
    assert round_to(1 + 2 ** -8 + 2 ** -40, "bf16") == 1 + 2 ** -7  # ml_dtypes and torch say 1.0


@pytest.mark.parametrize("name", NARROW + ["fp32"])
def test_float32_inputs_round_exactly_as_the_casts(name):
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(NUMPY[name]).astype(np.float64)
    got = round_to(x, name)
    if name == "fp4-e2m1":
        got = got[~np.isnan(x)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8-e5m2", "fp8-e4m3fn"])
def test_float32_inputs_round_as_torch(name):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.uniform(-12, 6, 100_000)).astype(np.float32)
    want = torch.from_numpy(x).to(TORCH[name]).double().numpy()
    got = round_to(x, name)
    if name == "fp8-e4m3fn":  # torch saturates to 448 where ml_dtypes (and padlab) give NaN
        keep = np.abs(x) <= 464
        assert np.isnan(got[~keep]).all() and (np.abs(want[~keep]) == 448).all()
        got, want = got[keep], want[keep]
    np.testing.assert_array_equal(got, want)


def tf32_reference(bits32: int) -> int:
    """Round a float32 bit pattern to 10 mantissa bits, nearest even, in plain integers."""
    if (bits32 >> 23) & 0xFF == 0xFF:  # inf and NaN are kept (NaN stays a NaN)
        return bits32 & ~0x1FFF | (0x400000 if bits32 & 0x7FFFFF else 0)
    keep, rest = divmod(bits32, 1 << 13)
    if rest > 1 << 12 or (rest == 1 << 12 and keep % 2 == 1):
        keep += 1  # may carry into the exponent, up to inf: that is the right answer
    return keep << 13


def test_tf32_against_integer_reference():
    rng = np.random.default_rng(4)
    pats = rng.integers(0, 2 ** 32, 20_000).tolist()
    pats += [p | 0x1000 for p in pats[:2000]] + [(p & ~0x1FFF) | 0x1000 for p in pats[2000:6000]]  # ties
    pats += [0x7F7FFFFF, 0x00000FFF, 0x00001000, 0x00003000, 0x3F801000, 0x3F803000, 0x7F800000, 0xFF800000]
    x = np.array(pats, dtype=np.uint32).view(np.float32)
    got = np.asarray(round_to(x, "tf32"), dtype=np.float32).view(np.uint32)
    want = np.array([tf32_reference(p) for p in pats], dtype=np.uint32)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(np.asarray(round_to(x[nan], "tf32"))).all()


def test_tf32_against_fp16_rescaled():
    """tf32 and fp16 both keep 10 mantissa bits: scaled into [1, 2), numpy's fp16 cast is a reference."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(500_000) * 10.0 ** rng.uniform(-37, 37, 500_000)).astype(np.float32)
    x = x[np.abs(x) >= 2.0 ** -126].astype(np.float64)
    _, e = np.frexp(x)
    want = np.ldexp(np.ldexp(x, 1 - e).astype(np.float16).astype(np.float64), e - 1)
    np.testing.assert_array_equal(round_to(x, "tf32"), want)


def test_tf32_edges():
    assert round_to(1 + 2 ** -11, "tf32") == 1.0                       # tie to even
    assert round_to(1 + 3 * 2 ** -11, "tf32") == 1 + 2 ** -9           # tie to even, upward
    assert round_to(1 + 2 ** -11 + 2 ** -40, "tf32") == 1 + 2 ** -10   # above the tie (from float64)
    assert round_to(np.finfo(np.float32).max, "tf32") == math.inf
    assert round_to(FORMATS["tf32"].max, "tf32") == FORMATS["tf32"].max
    assert round_to(2.0 ** -137, "tf32") == 0.0 and round_to(2.0 ** -136, "tf32") == 2.0 ** -136


def test_overflow_conventions():
    assert list(round_to([65504, 65519, 65520, 1e9], "fp16")) == [65504, 65504, math.inf, math.inf]
    assert list(round_to([61439, 61440], "fp8-e5m2")) == [57344, math.inf]
    e4 = round_to([448, 463.9, 464, 464.1, -1e9], "fp8-e4m3fn")
    assert list(e4[:3]) == [448, 448, 448] and np.isnan(e4[3:]).all()
    assert list(round_to([6, 6.9, 7, 1e9, -math.inf], "fp4-e2m1")) == [6, 6, 6, 6, -6]
    assert np.isnan(round_to(math.nan, "fp4-e2m1"))  # never a silent -0.0


def test_round_to_scalars_and_types():
    r = round_to(0.1, "fp16")
    assert isinstance(r, np.float64) and r == 1638 / 16384
    assert round_to(np.float16(0.1), "fp16") == r
    assert round_to(ml_dtypes.bfloat16(3.0), "bf16") == 3.0
    assert round_to(np.array([1, 2, 3], dtype=np.int64), "fp4").tolist() == [1.0, 2.0, 3.0]
    t = torch.tensor([0.1, 1e-8], dtype=torch.bfloat16)
    assert round_to(t, "bf16").tolist() == t.double().tolist()
    assert round_to([[0.1]], "fp16").shape == (1, 1)


# ----------------------------------------------------------------------------- spacing and neighbours

@pytest.mark.parametrize("name,dtype", [("fp16", np.float16), ("fp32", np.float32), ("fp64", np.float64)])
def test_ulp_and_neighbours_match_numpy(name, dtype):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(20_000) * 10.0 ** rng.uniform(-8, 4, 20_000)).astype(dtype)
    f = FORMATS[name]
    x = np.concatenate([x, np.array([0, -0.0, f.smallest_subnormal, -f.smallest_subnormal, f.max, -f.max,
                                     f.smallest_normal, 1, -1], dtype=dtype)])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(next_up(x, name), np.nextafter(x, dtype(np.inf)).astype(np.float64))
        np.testing.assert_array_equal(next_down(x, name), np.nextafter(x, dtype(-np.inf)).astype(np.float64))
    ok = np.abs(x) < f.max
    np.testing.assert_array_equal(ulp(x[ok], name), np.abs(np.spacing(np.abs(x[ok]))).astype(np.float64))


@pytest.mark.parametrize("name", SMALL)
def test_neighbours_are_the_sorted_successors(name):
    vals, _ = positive_table(name)  # sorted, 0 first, max last
    assert np.array_equal(next_up(vals[:-1], name), vals[1:])
    assert np.array_equal(next_down(vals[1:], name), vals[:-1])
    assert np.array_equal(next_down(-vals[:-1], name), -vals[1:])
    f = FORMATS[name]
    top = next_up(f.max, name)
    assert top == math.inf if f.has_inf else math.isnan(top)
    assert next_down(0.0, name) == -f.smallest_subnormal and next_up(-0.0, name) == f.smallest_subnormal
    assert ulp(1.0, name) == f.eps and ulp(0.0, name) == f.smallest_subnormal
    assert ulp(f.max, name) == 2.0 ** (f.max_exponent - f.mantissa_bits)


def test_ulp_of_specials_is_nan():
    assert np.isnan(ulp([math.inf, math.nan], "fp16")).all()
    assert next_up(-math.inf, "fp16") == -65504 and next_down(math.inf, "fp16") == 65504


finite64 = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=100, deadline=None)
@given(x=finite64, y=finite64, name=st.sampled_from(list(LAYOUT)))
def test_rounding_properties(x, y, name):
    f = FORMATS[name]
    rx, ry = round_to(x, name), round_to(y, name)
    assert round_to(rx, name) == rx or math.isnan(rx)                      # idempotent
    if x <= y and not (math.isnan(rx) or math.isnan(ry)):
        assert rx <= ry                                                     # monotone
    if abs(x) < f.max:
        assert next_down(rx, name) <= x <= next_up(rx, name)                # between its neighbours
        assert abs(x - rx) <= ulp(rx, name) / 2 or abs(x) < abs(rx)         # within half a step


# ----------------------------------------------------------------------------- range statistics

def test_range_fractions_by_hand():
    x = np.array([0, 1e-9, 1e-6, 1.0, 1e5, np.inf, np.nan, -3e-8])
    want16 = {"zero": 1, "underflow": 1, "subnormal": 2, "normal": 1, "overflow": 1, "nonfinite": 2}
    f = range_fractions(x, "fp16")
    assert isinstance(f, F.RangeFractions) and f.underflow == f["underflow"] == want16["underflow"] / 8
    assert range_fractions(x, "fp16") == {k: v / 8 for k, v in want16.items()}
    want_bf = {"zero": 1, "underflow": 0, "subnormal": 0, "normal": 5, "overflow": 0, "nonfinite": 2}
    assert range_fractions(x, "bf16") == {k: v / 8 for k, v in want_bf.items()}
    assert underflow_fraction(x, "fp16") == 1 / 8
    # 2^-25 ties to 0 (underflow), just above it rounds up to the smallest subnormal
    assert range_fractions([2.0 ** -25, 2.0 ** -25 * 1.001], "fp16")["underflow"] == 0.5


def test_range_fractions_overflow_edges():
    e4 = range_fractions([448, 464, 464.5, -500], "fp8-e4m3fn")
    assert (e4["normal"], e4["overflow"]) == (0.5, 0.5)
    fp4 = range_fractions([6.9, 7.0, 0.2, 0.25, 0.3], "fp4-e2m1")
    assert (fp4["normal"], fp4["overflow"], fp4["underflow"], fp4["subnormal"]) == (0.2, 0.2, 0.4, 0.2)


def classify_by_rounding(x: np.ndarray, name: str) -> dict[str, float]:
    """The obvious way: round every value, then look at what came out."""
    f = FORMATS[name]
    x = np.asarray(x, dtype=np.float64)
    fin = np.isfinite(x)
    stored = np.abs(round_to(x, name))
    over = fin & ~np.isfinite(stored)
    if name == "fp4-e2m1":  # saturates to 6: overflow is rounding to 8 (the next step), from 7 up
        over = fin & (np.abs(x) >= 7.0)
    inrange = fin & ~over & (x != 0)
    counts = {"zero": x == 0, "underflow": inrange & (stored == 0),
              "subnormal": inrange & (stored > 0) & (stored < f.smallest_normal),
              "normal": inrange & (stored >= f.smallest_normal), "overflow": over, "nonfinite": ~fin}
    return {k: int(v.sum()) / x.size for k, v in counts.items()}


@pytest.mark.parametrize("name", list(LAYOUT))
def test_range_fractions_agree_with_rounding_every_value(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(30_000) * 10.0 ** rng.uniform(-50, 42, 30_000)
    if name in SMALL:
        x = np.concatenate([x, hard_cases(name, 2000, seed=9)])
    f = FORMATS[name]
    edges = [f.smallest_subnormal / 2, f.smallest_normal - f.smallest_subnormal / 2, f.overflow_threshold]
    x = np.concatenate([x, edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf), [0.0, np.nan, -np.inf]])
    assert range_fractions(x, name) == classify_by_rounding(x, name)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    assert range_fractions(x32, name) == classify_by_rounding(x32, name)
    assert range_fractions(torch.from_numpy(x32).to(torch.bfloat16), name) == classify_by_rounding(
        x32.astype(ml_dtypes.bfloat16).astype(np.float64), name)


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.floats(width=32), min_size=1, max_size=50), name=st.sampled_from(list(LAYOUT)))
def test_range_fractions_sum_to_one(xs, name):
    assert sum(range_fractions(np.array(xs), name).values()) == pytest.approx(1.0)


def test_underflow_of_gradient_sized_values_in_torch():
    g = torch.tensor([1e-3, 1e-5, 1e-7, 1e-9, 0.0], dtype=torch.float32, requires_grad=True)
    assert underflow_fraction(g, "fp16") == 1 / 5   # 1e-9 is below half of 2^-24
    assert underflow_fraction(g, "bf16") == 0.0
    assert range_fractions(g, "fp16")["subnormal"] == 2 / 5  # 1e-5 and 1e-7, both below 2^-14


# ----------------------------------------------------------------------------- no mutation

def test_inputs_are_not_mutated():
    x = np.array([0.1, -2.5, 1e-9, np.nan, np.inf])
    before = x.copy()
    outs = [round_to(x, "fp16"), ulp(x, "bf16"), next_up(x, "fp8-e5m2"), next_down(x, "tf32"),
            encode(x, "fp16"), describe(x, "fp16")["value"]]
    for out in outs[:4] + outs[5:]:
        assert out is not x and not np.shares_memory(out, x)
    outs[0][:] = 7
    outs[5][:] = 7
    np.testing.assert_array_equal(x, before)
    range_fractions(x, "fp16")
    np.testing.assert_array_equal(x, before)
    t = torch.tensor([0.1, 1e-9])
    underflow_fraction(t, "fp16")
    assert t.tolist() == torch.tensor([0.1, 1e-9]).tolist()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad", ["abc", "", "1.2.3", None, True, [1.0], object()])
def test_decompose_rejects_non_numeric_values(bad):
    with pytest.raises(ValueError, match=r"value must be a real number"):
        decompose(bad, "fp16")


@pytest.mark.parametrize("bad", ["abc", ["a", "b"], [1 + 2j], None])
def test_vectorised_functions_reject_non_numeric_values(bad):
    for fn in (round_to, ulp, encode, range_fractions):
        with pytest.raises(ValueError, match=r"values must be a number or an array"):
            fn(bad, "fp16")


def test_unknown_format_everywhere():
    for call in (lambda: round_to(1.0, "fp12"), lambda: decompose(1.0, "fp7"), lambda: from_bits(0, "x"),
                 lambda: format_table(["fp16", "nope"]), lambda: all_values("fp9")):
        with pytest.raises(ValueError, match=r"format must be one of"):
            call()


@pytest.mark.parametrize("bits,match", [
    ("0101", r"bits must have exactly 16 binary digits for fp16 \(it has 4\)"),
    ("0" * 17, r"bits must have exactly 16 binary digits"),
    ("0 01111 000000000", r"have exactly 16 binary digits for fp16 \(it has 15\)"),
    ("0120000000000000", r"bits must be a string of 16 binary digits \(0/1\)"),
    ("", r"bits must be a string of 16 binary digits"),
    ("0xzz", r"bits must be hexadecimal digits after '0x'"),
    ("0x10000", r"bits must fit in 16 bits for fp16"),
    (2 ** 16, r"bits must fit in 16 bits"),
    (-1, r"bits must fit in 16 bits"),
    (1.0, r"bits must be a string of 0/1 digits"),
    (True, r"bits must be a string of 0/1 digits"),
])
def test_from_bits_rejects_bad_patterns(bits, match):
    with pytest.raises(ValueError, match=match):
        from_bits(bits, "fp16")


def test_other_bad_inputs():
    with pytest.raises(ValueError, match=r"value must not be NaN: fp4-e2m1 has no NaN encoding"):
        decompose("nan", "fp4")
    with pytest.raises(ValueError, match=r"values must not hold NaN: fp4-e2m1 has no NaN encoding"):
        encode([1.0, math.nan], "fp4")
    with pytest.raises(ValueError, match=r"fmt must be a format of at most 19 bits"):
        all_values("fp32")
    with pytest.raises(ValueError, match=r"values must hold at least one value"):
        range_fractions([], "fp16")
    with pytest.raises(ValueError, match=r"patterns must be in \[0, 2\*\*8\)"):
        decode([256], "fp8-e5m2")
    with pytest.raises(ValueError, match=r"patterns must be integers"):
        decode([1.5], "fp8-e5m2")


# Found by an outside check: None meant fp64 (np.dtype(None) is float64), and a single name was
# read letter by letter.
@pytest.mark.parametrize("call", [lambda: get_format(None), lambda: round_to(0.1, None),
                                  lambda: decompose(0.1, None), lambda: ulp(1.0, None)])
def test_none_is_not_a_format(call):
    with pytest.raises(PadlabError, match=r"format must be one of 'fp64', .*; got None"):
        call()


@pytest.mark.parametrize("bad", ["fp16", 5, FORMATS["fp16"]])
def test_format_table_wants_a_list(bad):
    with pytest.raises(PadlabError, match=r"formats must be a list of format names \(such as \['fp16'\]\) or None; got"):
        format_table(bad)
    assert [r["format"] for r in format_table(["fp16"])] == ["fp16"]


def test_module_exports():
    assert set(F.__all__) <= set(dir(F))


def test_tf32_reference_negative_control():
    """Truncating to 10 bits (what a naive mask does) disagrees with the reference the tests use."""
    rng = np.random.default_rng(8)
    pats = rng.integers(0, 2 ** 31, 2000).tolist()
    truncated = [p & ~0x1FFF for p in pats]
    assert sum(t != tf32_reference(p) for p, t in zip(pats, truncated)) > 500


def test_decompose_and_decompose_many_agree():
    values = [0.1, -2.5, 65504.0, 1e-9, 0.0, -0.0, math.inf]
    many = decompose_many(np.array(values), "fp16")
    assert [repr(fb) for fb in many] == [repr(decompose(v, "fp16")) for v in values]  # NaN-safe
    assert list(many[0].as_dict()) == [
        "format", "value", "rounded", "bits", "hex", "sign", "exponent_bits", "mantissa_bits",
        "biased_exponent", "exponent", "mantissa", "significand", "kind", "abs_error", "relative_error",
        "ulp", "next_down", "next_up"]
