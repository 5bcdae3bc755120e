"""Float formats, their bit layouts, rounding and ranges.

Eight formats, from fp64 down to fp4::

    name         sign exp mant  bias  inf   NaN encoding
    fp64            1  11   52  1023  yes   exponent all ones, mantissa != 0
    fp32            1   8   23   127  yes   exponent all ones, mantissa != 0
    tf32            1   8   10   127  yes   exponent all ones, mantissa != 0   (19 bits)
    fp16            1   5   10    15  yes   exponent all ones, mantissa != 0
    bf16            1   8    7   127  yes   exponent all ones, mantissa != 0
    fp8-e4m3fn      1   4    3     7  no    only S.1111.111
    fp8-e5m2        1   5    2    15  yes   exponent all ones, mantissa != 0
    fp4-e2m1        1   2    1     1  no    none (every pattern is a number)

What it offers: :func:`decompose` (one value: bits, fields, kind, stored value, error, ULP,
neighbours) and its vectorised twins :func:`describe` / :func:`decompose_many`;
:func:`from_bits`, :func:`encode` / :func:`decode` (bit patterns), :func:`all_values` (every
pattern of a format up to 19 bits); :func:`round_to`, :func:`ulp`, :func:`next_up`,
:func:`next_down`; :func:`format_table` (ranges from the layout); :func:`range_fractions` /
:func:`underflow_fraction` (what a format does to, say, a model's gradients).

Rounding is round-to-nearest-even, done by numpy and ``ml_dtypes`` casts. The ``ml_dtypes``
casts (and ``torch``'s) go from float64 through float32, which rounds twice and can be wrong
next to a midpoint (``1 + 2**-8 + 2**-40`` becomes 1.0 in bf16, not ``1 + 2**-7``). Here
float64 goes to float32 by *round-to-odd* first, which makes the second, ordinary cast
correctly rounded. A float32 input skips that step, so float32 values round exactly as the
casts round them.

tf32 is what matrix units do to a float32 operand: round-to-nearest-even to 10 mantissa bits,
keeping float32's 8-bit exponent. No library casts to it, so it is written here.

Overflow follows ``ml_dtypes``: fp16, bf16, tf32 and fp8-e5m2 overflow to inf; fp8-e4m3fn,
which has no inf, overflows to NaN (from ``464 = 448 + 16``, half a step above its max;
``torch``'s cast saturates to 448 instead); fp4-e2m1, which has neither inf nor NaN,
saturates to +-6. A NaN cannot be stored in fp4-e2m1: :func:`round_to` gives NaN for it and
:func:`encode` / :func:`decompose` refuse it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import ml_dtypes
import numpy as np

from ._records import FieldMapping
from ._validate import fail

__all__ = [
    "FloatFormat", "FloatBits", "FORMATS", "get_format", "format_table", "decompose", "from_bits",
    "round_to", "ulp", "next_up", "next_down", "encode", "decode", "describe", "decompose_many",
    "all_values", "RangeFractions", "range_fractions", "underflow_fraction",
]

@dataclass(frozen=True)
class FloatFormat:
    """A binary float format: 1 sign bit, ``exponent_bits``, ``mantissa_bits`` (stored, no hidden bit).

    ``nan_encoding`` is ``"ieee"`` (exponent all ones and mantissa non-zero; all ones with a
    zero mantissa is inf), ``"all-ones"`` (only ``S.11..1.11..1`` is NaN, no inf: the top
    exponent holds numbers) or ``"none"`` (no NaN and no inf). Every range property is
    computed from this layout alone.
    """

    name: str
    total_bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    nan_encoding: str
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def finite_only(self) -> bool:
        """True when the format has no inf (e4m3fn, e2m1)."""
        return not self.has_inf

    @property
    def has_nan(self) -> bool:
        return self.nan_encoding != "none"

    @property
    def precision(self) -> int:
        """Significand bits, counting the hidden leading 1."""
        return self.mantissa_bits + 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (also used by subnormals)."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite number."""
        top = 2 ** self.exponent_bits - 1
        # IEEE formats spend the all-ones exponent on inf/NaN; the others keep it for numbers.
        return (top - 1 if self.nan_encoding == "ieee" else top) - self.bias

    @property
    def max_mantissa(self) -> int:
        """Mantissa field of the largest finite number."""
        full = 2 ** self.mantissa_bits - 1
        return full - 1 if self.nan_encoding == "all-ones" else full

    @property
    def max(self) -> float:
        """Largest finite value."""
        m = self.mantissa_bits
        return math.ldexp(float(2 ** m + self.max_mantissa), self.max_exponent - m)

    @property
    def smallest_normal(self) -> float:
        return math.ldexp(1.0, self.min_exponent)

    @property
    def smallest_subnormal(self) -> float:
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next larger value."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Decimal digits the significand holds: ``precision * log10(2)``."""
        return self.precision * math.log10(2)

    @property
    def overflow_threshold(self) -> float:
        """Half a step above ``max``: larger magnitudes overflow (a tie overflows if max's mantissa is odd)."""
        return self.max + math.ldexp(1.0, self.max_exponent - self.mantissa_bits - 1)

    def row(self) -> dict[str, Any]:
        """This format as one row of :func:`format_table`."""
        return {
            "format": self.name, "total_bits": self.total_bits, "sign_bits": 1,
            "exponent_bits": self.exponent_bits, "mantissa_bits": self.mantissa_bits,
            "bias": self.bias, "has_inf": self.has_inf, "nan_encoding": self.nan_encoding,
            "max": self.max, "smallest_normal": self.smallest_normal,
            "smallest_subnormal": self.smallest_subnormal, "eps": self.eps,
            "decimal_digits": self.decimal_digits, "min_exponent": self.min_exponent,
            "max_exponent": self.max_exponent,
        }


def _fmt(name: str, e: int, m: int, has_inf: bool, nan: str, description: str,
         aliases: tuple[str, ...]) -> FloatFormat:
    return FloatFormat(name, 1 + e + m, e, m, 2 ** (e - 1) - 1, has_inf, nan, description, aliases)


FORMATS: dict[str, FloatFormat] = {f.name: f for f in (
    _fmt("fp64", 11, 52, True, "ieee", "IEEE 754 binary64 (double)", ("float64", "double", "f64")),
    _fmt("fp32", 8, 23, True, "ieee", "IEEE 754 binary32 (single)", ("float32", "float", "single", "f32")),
    _fmt("tf32", 8, 10, True, "ieee", "TensorFloat-32: fp32's range, fp16's precision, in 19 bits; "
         "float32 operands of matrix units rounded to nearest even", ("tensorfloat32", "tensorfloat-32")),
    _fmt("fp16", 5, 10, True, "ieee", "IEEE 754 binary16 (half)", ("float16", "half", "f16")),
    _fmt("bf16", 8, 7, True, "ieee", "bfloat16: fp32's range with 8 bits of precision", ("bfloat16",)),
    _fmt("fp8-e4m3fn", 4, 3, False, "all-ones", "OCP FP8 E4M3: no inf, only S.1111.111 is NaN, max 448",
         ("e4m3fn", "e4m3", "fp8-e4m3", "float8-e4m3fn")),
    _fmt("fp8-e5m2", 5, 2, True, "ieee", "OCP FP8 E5M2: fp16's exponent with 2 mantissa bits",
         ("e5m2", "float8-e5m2")),
    _fmt("fp4-e2m1", 2, 1, False, "none", "OCP MX FP4 E2M1: no inf, no NaN; values 0, 0.5, 1, 1.5, 2, 3, 4, 6",
         ("e2m1", "fp4", "fp4-e2m1fn", "e2m1fn", "float4-e2m1fn")),
)}

_ALIASES: dict[str, str] = {a: f.name for f in FORMATS.values() for a in (f.name, *f.aliases)}

# Per format: the dtype the cast lands in, the unsigned view of its bits, and how many low
# container bits are not part of the pattern (tf32 lives in the top 19 bits of a float32).
_STORE: dict[str, tuple[Any, Any, int]] = {
    "fp64": (np.float64, np.uint64, 0),
    "fp32": (np.float32, np.uint32, 0),
    "tf32": (np.float32, np.uint32, 13),
    "fp16": (np.float16, np.uint16, 0),
    "bf16": (ml_dtypes.bfloat16, np.uint16, 0),
    "fp8-e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8, 0),
    "fp8-e5m2": (ml_dtypes.float8_e5m2, np.uint8, 0),
    "fp4-e2m1": (ml_dtypes.float4_e2m1fn, np.uint8, 0),
}


def get_format(name: "str | FloatFormat | Any") -> FloatFormat:
    """The :class:`FloatFormat` for a name or alias (case, ``_`` and ``-`` do not matter).

    Also accepts a ``FloatFormat``, a numpy / ``ml_dtypes`` dtype or a ``torch.dtype``.
    """
    if isinstance(name, FloatFormat):
        return name
    if name is None:  # np.dtype(None) is float64: refuse it rather than mean fp64 silently
        raise fail("format", name, "be one of " + ", ".join(map(repr, FORMATS)) + " (or an alias)")
    key = name
    if not isinstance(name, str):
        text = str(name)
        if text.startswith("torch."):
            key = text[len("torch."):]
        else:
            try:
                key = np.dtype(name).name
            except TypeError:
                key = text
    key = key.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise fail("format", name, "be one of " + ", ".join(map(repr, FORMATS)) + " (or an alias)")
    return FORMATS[_ALIASES[key]]


def format_table(formats: "list[str] | None" = None) -> list[dict[str, Any]]:
    """One row per format: layout, max, smallest normal/subnormal, eps, decimal digits."""
    if formats is None:
        return [f.row() for f in FORMATS.values()]
    if isinstance(formats, (str, bytes, FloatFormat)):  # a single name would be read letter by letter
        raise fail("formats", formats, "be a list of format names (such as ['fp16']) or None")
    try:
        names = list(formats)
    except TypeError:
        raise fail("formats", formats, "be a list of format names (such as ['fp16']) or None") from None
    return [get_format(n).row() for n in names]


# ----------------------------------------------------------------------------- rounding

def _as_float64(values: Any, name: str = "values") -> np.ndarray:
    """``values`` as a float64 array (a new array, or the caller's, which is then only read)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch tensor, any dtype or device
        values = values.detach().cpu().double().numpy()
    if isinstance(values, (str, bytes)):
        raise fail(name, values, "be a number or an array of numbers")
    try:
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf" and arr.dtype.type not in _EXTRA_FLOATS:
            raise TypeError
        with np.errstate(invalid="ignore"):  # NaN in a narrow dtype
            return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise fail(name, values, "be a number or an array of real numbers") from None


_EXTRA_FLOATS = {ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
                 ml_dtypes.float4_e2m1fn}


def _as_float(values: Any, name: str = "values") -> np.ndarray:
    """Like :func:`_as_float64`, but float32 stays float32 and narrower floats widen to it (exactly)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        t = values.detach()
        narrow = str(t.dtype) in ("torch.float32", "torch.float16", "torch.bfloat16")
        values = (t.float() if narrow else t.double()).cpu().numpy()
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and (arr.dtype == np.float32 or arr.dtype.type in _EXTRA_FLOATS | {np.float16}):
        with np.errstate(invalid="ignore"):
            return arr.astype(np.float32, copy=False)
    return _as_float64(values, name)


def _round_to_odd_f32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounding to odd: truncate, then set the last bit if anything was lost.

    A later round-to-nearest cast to any format with at least two bits less precision than
    float32 is then correctly rounded, as if it had gone straight from float64.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = x.astype(np.float32)
        over = np.abs(t.astype(np.float64)) > np.abs(x)  # the cast went away from zero: step back
        t = np.where(over, np.nextafter(t, np.float32(0)), t)
        inexact = (t.astype(np.float64) != x) & np.isfinite(x)
    return (t.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


def _tf32_from_f32(t: np.ndarray) -> np.ndarray:
    """Round float32 to 10 mantissa bits, nearest even; a carry may ripple into the exponent (to inf)."""
    b = t.view(np.uint32)
    half = np.uint32(0x0FFF) + ((b >> np.uint32(13)) & np.uint32(1))
    r = (b + half) & np.uint32(0xFFFFE000)
    # NaN: keep it NaN (quiet bit set) rather than let the add carry it anywhere.
    r = np.where(np.isnan(t), (b | np.uint32(0x00400000)) & np.uint32(0xFFFFE000), r)
    return r.astype(np.uint32).view(np.float32)


def _cast(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """``x`` (float64, or float32) rounded into the format's storage dtype, as a new array."""
    store = _STORE[fmt.name][0]
    if fmt.name in ("fp64", "fp32"):
        with np.errstate(over="ignore", invalid="ignore"):
            return x.astype(store)
    # float32 needs no round-to-odd step: it is exact already.
    t = x if x.dtype == np.float32 else _round_to_odd_f32(x)
    if fmt.name == "tf32":
        return _tf32_from_f32(t)
    with np.errstate(over="ignore", invalid="ignore"):
        return t.astype(store)


def round_to(values: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """The values ``fmt`` stores for ``values``, as float64 (a scalar in, a numpy scalar out).

    NaN stays NaN even in fp4-e2m1, which cannot store it.
    """
    fmt = get_format(fmt)
    x = _as_float(values)
    out = _cast(x, fmt).astype(np.float64)
    if fmt.nan_encoding == "none":
        out = np.where(np.isnan(x), np.nan, out)
    return out if out.ndim else out[()]


# ----------------------------------------------------------------------------- bits

def _patterns(stored: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    _, uint, shift = _STORE[fmt.name]
    return (stored.view(uint) >> uint(shift)).astype(np.uint64)


def encode(values: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """Bit patterns (uint64, sign bit highest) of ``values`` rounded to ``fmt``."""
    fmt = get_format(fmt)
    x = _as_float64(values)
    if fmt.nan_encoding == "none" and np.isnan(x).any():
        raise fail("values", values, f"not hold NaN: {fmt.name} has no NaN encoding")
    return _patterns(_cast(x, fmt), fmt)


def decode(patterns: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """The float64 value of each bit pattern of ``fmt`` (vectorised :func:`from_bits`)."""
    fmt = get_format(fmt)
    p = np.asarray(patterns)
    if p.dtype.kind not in "iu":
        raise fail("patterns", patterns, "be integers")
    if p.size and (p.min() < 0 or int(p.max()) >= 2 ** fmt.total_bits):
        raise fail("patterns", patterns, f"be in [0, 2**{fmt.total_bits}) for {fmt.name}")
    store, uint, shift = _STORE[fmt.name]
    stored = (p.astype(np.uint64) << np.uint64(shift)).astype(uint).view(store)
    with np.errstate(invalid="ignore"):  # NaN patterns
        out = stored.astype(np.float64)
    return out if out.ndim else out[()]


def from_bits(bits: "str | int", fmt: "str | FloatFormat") -> float:
    """The value of one bit pattern: ``"0 01111 0000000000"`` (spaces and ``_`` ignored), ``"0x3c00"`` or an int."""
    fmt = get_format(fmt)
    n = fmt.total_bits
    if isinstance(bits, str):
        text = bits.strip().replace(" ", "").replace("_", "")
        if text[:2].lower() == "0x":
            try:
                pattern = int(text[2:], 16)
            except ValueError:
                raise fail("bits", bits, "be hexadecimal digits after '0x'") from None
        else:
            if not text or set(text) - {"0", "1"}:
                raise fail("bits", bits, f"be a string of {n} binary digits (0/1) for {fmt.name}")
            if len(text) != n:
                raise fail("bits", bits, f"have exactly {n} binary digits for {fmt.name} (it has {len(text)})")
            pattern = int(text, 2)
    elif isinstance(bits, numbers.Integral) and not isinstance(bits, bool):
        pattern = int(bits)
    else:
        raise fail("bits", bits, "be a string of 0/1 digits, a '0x' hex string or an int")
    if not 0 <= pattern < 2 ** n:
        raise fail("bits", bits, f"fit in {n} bits for {fmt.name} (0 <= pattern < {2 ** n})")
    return float(decode(np.uint64(pattern), fmt))


def all_values(fmt: "str | FloatFormat") -> np.ndarray:
    """Every bit pattern's value, indexed by pattern (NaNs and -0.0 included); formats up to 19 bits."""
    fmt = get_format(fmt)
    if fmt.total_bits > 19:
        raise fail("fmt", fmt.name, "be a format of at most 19 bits (fp16, bf16, tf32, fp8, fp4)")
    return decode(np.arange(2 ** fmt.total_bits, dtype=np.uint64), fmt)


# ----------------------------------------------------------------------------- spacing

def _ulp_stored(r: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    a = np.abs(r)
    with np.errstate(invalid="ignore"):
        _, k = np.frexp(a)
        out = np.ldexp(1.0, np.maximum(k - 1, fmt.min_exponent) - fmt.mantissa_bits)
    out = np.where(a == 0, fmt.smallest_subnormal, out)
    return np.where(np.isfinite(r), out, np.nan)


def _next_up_stored(r: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Next value above each stored value ``r`` (NaN past max where there is no inf)."""
    with np.errstate(invalid="ignore"):
        pos = (r > 0) & (r < fmt.max)
        neg = (r < 0) & np.isfinite(r)
    p = _patterns(_cast(np.where(np.isfinite(r), r, 0.0), fmt), fmt)
    # Sign-magnitude: one step up is +1 on a positive pattern, -1 on a negative one.
    step = p + pos.astype(np.uint64) - neg.astype(np.uint64)
    out = np.asarray(decode(step, fmt), dtype=np.float64)
    beyond = np.inf if fmt.has_inf else np.nan
    out = np.where(r == 0, fmt.smallest_subnormal, out)
    out = np.where(r == fmt.max, beyond, out)
    out = np.where(r == -np.inf, -fmt.max, out)
    out = np.where(r == np.inf, np.inf, out)
    return np.where(np.isnan(r), np.nan, out)


def _stored(values: Any, fmt: FloatFormat) -> np.ndarray:
    return np.asarray(round_to(values, fmt), dtype=np.float64)


def _scalar_or_array(out: np.ndarray) -> np.ndarray:
    return out if out.ndim else out[()]


def ulp(values: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """Spacing of ``fmt`` at the stored value: ``2**(exponent - mantissa_bits)``.

    At a power of two this is the gap above (the gap below is half of it); at zero it is the
    smallest subnormal; NaN for inf and NaN.
    """
    fmt = get_format(fmt)
    return _scalar_or_array(_ulp_stored(_stored(values, fmt), fmt))


def next_up(values: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """The next value of ``fmt`` above the stored value (inf past max; NaN where the format has no inf)."""
    fmt = get_format(fmt)
    return _scalar_or_array(_next_up_stored(_stored(values, fmt), fmt))


def next_down(values: Any, fmt: "str | FloatFormat") -> np.ndarray:
    """The next value of ``fmt`` below the stored value (the mirror of :func:`next_up`)."""
    fmt = get_format(fmt)
    return _scalar_or_array(-_next_up_stored(-_stored(values, fmt), fmt))


# ----------------------------------------------------------------------------- description

def _errors(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative error of storing ``x`` as ``r``, inf/NaN aware.

    NaN in or out: NaN, NaN. inf stored as the same inf: 0, 0; as anything else: inf, NaN.
    Finite stored as inf: inf, inf. ``x - r`` is exact when ``r`` is the nearest value (Sterbenz).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(x - r)
        rel = np.where(x == 0, 0.0, err / np.where(x == 0, 1.0, np.abs(x)))
    xinf, rinf = np.isinf(x), np.isinf(r)
    err = np.where(xinf, np.where(x == r, 0.0, np.inf), err)
    rel = np.where(xinf, np.where(x == r, 0.0, np.nan), rel)
    rel = np.where(~xinf & rinf, np.inf, rel)
    bad = np.isnan(x) | np.isnan(r)
    return np.where(bad, np.nan, err), np.where(bad, np.nan, rel)


def describe(values: Any, fmt: "str | FloatFormat") -> dict[str, np.ndarray]:
    """Vectorised :func:`decompose`: one array per field, for many values at once.

    Keys: ``value``, ``rounded``, ``pattern`` (uint64), ``sign``, ``biased_exponent``,
    ``exponent`` (unbiased; ``1 - bias`` for zeros and subnormals), ``mantissa`` (the field as
    an int), ``significand`` (``1.m``, ``0.m``, NaN for inf/NaN), ``kind`` (``normal``,
    ``subnormal``, ``zero``, ``inf``, ``nan``), ``abs_error``, ``relative_error``, ``ulp``,
    ``next_down``, ``next_up``.
    """
    fmt = get_format(fmt)
    x = _as_float64(values)
    if not fmt.has_nan and np.isnan(x).any():
        raise fail("values", values, f"not hold NaN: {fmt.name} has no NaN encoding")
    stored = _cast(x, fmt)
    r = stored.astype(np.float64)
    p = _patterns(stored, fmt)  # from the cast itself, so a NaN keeps the payload and sign it got
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    biased = ((p >> np.uint64(m)) & np.uint64(2 ** e - 1)).astype(np.int64)
    mant = (p & np.uint64(2 ** m - 1)).astype(np.int64)
    abs_err, rel_err = _errors(x, r)
    return {
        "value": x.copy(), "rounded": r, "pattern": p,
        "sign": (p >> np.uint64(fmt.total_bits - 1)).astype(np.int64),
        "biased_exponent": biased,
        "exponent": np.where(biased == 0, 1 - fmt.bias, biased - fmt.bias),
        "mantissa": mant,
        "significand": np.where(np.isfinite(r), (biased > 0) + mant / 2.0 ** m, np.nan),
        "kind": np.select([np.isnan(r), np.isinf(r), r == 0, biased == 0],
                          ["nan", "inf", "zero", "subnormal"], "normal"),
        "abs_error": abs_err, "relative_error": rel_err, "ulp": _ulp_stored(r, fmt),
        "next_down": -_next_up_stored(-r, fmt), "next_up": _next_up_stored(r, fmt),
    }


@dataclass(frozen=True)
class FloatBits:
    """One value in one format: its bits, fields, stored value, error, spacing and neighbours."""

    format: str
    value: float            # the input, as float64
    rounded: float          # the value the format stores
    bits: str               # 0/1 digits, sign bit first
    hex: str
    sign: int
    exponent_bits: str
    mantissa_bits: str
    biased_exponent: int
    exponent: int           # unbiased; 1 - bias for zeros and subnormals
    mantissa: int           # the mantissa field as an integer
    significand: float      # 1.m for normals, 0.m for subnormals and zeros, NaN for inf/NaN
    kind: str               # normal, subnormal, zero, inf, nan
    abs_error: float
    relative_error: float
    ulp: float
    next_down: float
    next_up: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floatbits(d: dict[str, list], i: int, fmt: FloatFormat) -> FloatBits:
    """Entry ``i`` of :func:`describe`'s output (converted with ``tolist``) as a FloatBits."""
    n = fmt.total_bits
    pattern = d["pattern"][i]
    bits = format(pattern, f"0{n}b")
    return FloatBits(
        format=fmt.name, value=d["value"][i], rounded=d["rounded"][i], bits=bits,
        hex=f"0x{pattern:0{(n + 3) // 4}x}", sign=d["sign"][i],
        exponent_bits=bits[1:1 + fmt.exponent_bits], mantissa_bits=bits[1 + fmt.exponent_bits:],
        biased_exponent=d["biased_exponent"][i], exponent=d["exponent"][i], mantissa=d["mantissa"][i],
        significand=d["significand"][i], kind=d["kind"][i], abs_error=d["abs_error"][i],
        relative_error=d["relative_error"][i], ulp=d["ulp"][i], next_down=d["next_down"][i],
        next_up=d["next_up"][i],
    )


def _lists(d: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in d.items()}


def decompose_many(values: Any, fmt: "str | FloatFormat") -> list[FloatBits]:
    """:func:`decompose` for every value of an array of floats (flattened), in one vectorised pass."""
    fmt = get_format(fmt)
    d = _lists(describe(np.ravel(_as_float64(values)), fmt))
    return [_floatbits(d, i, fmt) for i in range(len(d["value"]))]


def _parse_value(value: Any) -> Decimal:
    """The exact value of a number or numeric string, as a Decimal."""
    numeric = isinstance(value, (str, numbers.Real, Decimal)) or type(value) in _EXTRA_FLOATS
    if isinstance(value, (bool, np.bool_)) or not numeric:
        raise fail("value", value, "be a real number or a numeric string")
    try:
        if isinstance(value, (str, Decimal)):
            dec = Decimal(value.strip() if isinstance(value, str) else value)
        elif isinstance(value, numbers.Integral):
            dec = Decimal(int(value))
        else:
            dec = Decimal(float(value))
    except (InvalidOperation, ValueError):
        raise fail("value", value, "be a real number or a numeric string such as '0.1', '-2.5e-3', 'inf'") from None
    return Decimal("NaN") if dec.is_nan() else dec


def _round_decimal(dec: Decimal, x64: float, fmt: FloatFormat) -> float:
    """Round the exact value ``dec`` (``x64 = float(dec)``, not equal to it) to ``fmt``.

    Rounding ``x64`` is right unless ``x64`` sits exactly on a midpoint of ``fmt`` that ``dec``
    itself does not: then ``dec``'s side of the midpoint decides.
    """
    r = float(round_to(x64, fmt))
    if fmt.name == "fp64" or not math.isfinite(x64) or x64 == 0:
        return r
    a = abs(x64)
    _, k = math.frexp(a)
    gap = math.ldexp(1.0, max(k - 1, fmt.min_exponent) - fmt.mantissa_bits)
    lo = math.floor(a / gap) * gap
    if a - lo != gap / 2:
        return r
    mag = lo if abs(dec) < Decimal(a) else lo + gap
    return float(round_to(math.copysign(mag, x64), fmt))


def decompose(value: Any, fmt: "str | FloatFormat") -> FloatBits:
    """Everything about ``value`` stored in ``fmt``: bits, fields, kind, error, ulp, neighbours.

    ``value`` may be a number or a numeric string (``"0.1"``, ``"-2.5e-3"``, ``"inf"``, ``"nan"``).
    A string is rounded and its error measured from its exact decimal value, so ``"0.1"`` has
    an error in fp64 too, and a string that float64 would round onto a midpoint of ``fmt``
    still rounds to the correct side.
    """
    fmt = get_format(fmt)
    dec = _parse_value(value)
    x64 = float(dec)
    if math.isnan(x64) and not fmt.has_nan:
        raise fail("value", value, f"not be NaN: {fmt.name} has no NaN encoding")
    if dec.is_nan() or Decimal(x64) == dec:
        return _floatbits(_lists(describe(np.array([x64]), fmt)), 0, fmt)
    # More digits than float64 holds: round from the exact value, measure error against it.
    rounded = _round_decimal(dec, x64, fmt)
    d = describe(np.array([rounded]), fmt)
    d["value"] = np.array([x64])
    if math.isnan(rounded):  # overflow to NaN (e4m3fn): take the pattern the cast gives x64
        d = {**describe(np.array([x64]), fmt), "value": np.array([x64])}
    if math.isfinite(rounded):
        with localcontext() as ctx:
            ctx.prec = 40
            err = abs(dec - Decimal(rounded))
            d["abs_error"] = np.array([float(err)])
            d["relative_error"] = np.array([float(err / abs(dec)) if dec != 0 else 0.0])
    else:  # a finite value overflowed: to inf (unbounded error) or to NaN (undefined)
        bad = math.nan if math.isnan(rounded) else math.inf
        d["abs_error"], d["relative_error"] = np.array([bad]), np.array([bad])
    return _floatbits(_lists(d), 0, fmt)


# ----------------------------------------------------------------------------- statistics

@dataclass(frozen=True, eq=False)
class RangeFractions(FieldMapping):
    """The share of values in each outcome of storing them in a format (the six sum to 1).

    Also a read-only mapping of its fields (``f["underflow"]``, ``f.values()``), in this order.
    """

    zero: float
    underflow: float
    subnormal: float
    normal: float
    overflow: float
    nonfinite: float


def range_fractions(values: Any, fmt: "str | FloatFormat") -> RangeFractions:
    """What ``fmt`` does to ``values``: the fraction of all values in each outcome (they sum to 1).

    ``zero`` (already zero), ``underflow`` (non-zero, stored as zero), ``subnormal`` (stored as a
    subnormal, losing precision), ``normal``, ``overflow`` (finite, beyond half a step above
    max: inf, NaN or saturated, by format) and ``nonfinite`` (already inf or NaN).
    Accepts numpy arrays and torch tensors of any float dtype.
    """
    fmt = get_format(fmt)
    x = _as_float(values).ravel()
    if x.size == 0:
        raise fail("values", values, "hold at least one value")
    # Where round-to-nearest-even puts a magnitude, read off thresholds (no rounding needed):
    # half the smallest subnormal ties to 0; the midpoint below the smallest normal ties up to
    # it; at the overflow threshold a tie overflows only if max's mantissa is odd.
    tiny = fmt.smallest_subnormal / 2
    edge = fmt.smallest_normal - tiny
    top = fmt.overflow_threshold
    with np.errstate(over="ignore"):
        exact = all(float(x.dtype.type(t)) == t for t in (tiny, edge, top))
    if not exact:  # compare in float64 unless every threshold is exact in the input's dtype
        x = x.astype(np.float64)
    a = np.abs(x)
    n = a.size
    nonfinite = n - np.count_nonzero(np.isfinite(a))
    zero = np.count_nonzero(a == 0)
    underflow = np.count_nonzero(a <= tiny) - zero
    subnormal = np.count_nonzero(a < edge) - zero - underflow
    overflow = np.count_nonzero(a > top) - np.count_nonzero(np.isinf(a))
    if fmt.max_mantissa % 2:
        overflow += np.count_nonzero(a == top)
    normal = n - nonfinite - zero - underflow - subnormal - overflow
    counts = {"zero": zero, "underflow": underflow, "subnormal": subnormal, "normal": normal,
              "overflow": overflow, "nonfinite": nonfinite}
    return RangeFractions(**{k: int(v) / n for k, v in counts.items()})


def underflow_fraction(values: Any, fmt: "str | FloatFormat") -> float:
    """Fraction of ``values`` that are non-zero but would be stored as zero in ``fmt``."""
    return range_fractions(values, fmt).underflow
