"""Argument checks shared by every module: each error names the argument and the value.

Every bad argument padlab refuses raises :class:`PadlabError` (a ``ValueError``), and only
that class: the command line catches it alone, so a bug inside numpy or torch still shows as
a bug with its traceback, never as a one-line "argument error".
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np

__all__ = ["PadlabError", "fail", "check_int", "check_float", "check_choice", "check_bool", "check_lengths"]


class PadlabError(ValueError):
    """A bad argument: the message names the argument, what it must be, and the value given."""


def fail(name: str, value: Any, must: str) -> PadlabError:
    """Build the one error format padlab uses: ``<name> must <must>; got <value!r>``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return PadlabError(f"{name} must {must}; got {text}")


def check_int(name: str, value: Any, *, min_value: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` as int, refusing bools, floats and values under ``min_value``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(name, value, "be an integer" + (f" >= {min_value}" if min_value is not None else ""))
    if min_value is not None and value < min_value:
        raise fail(name, value, f"be an integer >= {min_value}")
    return int(value)


def check_float(name: str, value: Any, *, min_value: float | None = None, max_value: float | None = None,
                min_inclusive: bool = True) -> float:
    """Return ``value`` as float within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(name, value, "be a real number")
    v = float(value)
    if v != v:
        raise fail(name, value, "not be NaN")
    if min_value is not None and (v < min_value or (not min_inclusive and v == min_value)):
        raise fail(name, value, f"be {'>=' if min_inclusive else '>'} {min_value}")
    if max_value is not None and v > max_value:
        raise fail(name, value, f"be <= {max_value}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise fail(name, value, f"be one of {', '.join(map(repr, choices))}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as bool, refusing everything that is not a bool (``0``/``1`` included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(name, value, "be True or False")
    return bool(value)


def check_lengths(name: str, value: Any, *, allow_empty: bool = False) -> np.ndarray:
    """A private, read-only int64 copy of a 1-D sequence of integers >= 1 (sequence lengths).

    Refuses nesting (ragged or not), floats, bools, strings, values < 1 and unsigned values
    beyond int64 (which a cast would wrap to negatives). The caller's object is never touched.
    """
    must = "be a " + ("" if allow_empty else "non-empty ") + "1-D sequence of integers >= 1"
    if isinstance(value, (str, bytes)) or isinstance(value, numbers.Number):
        raise fail(name, value, must)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, ints beyond int64
        raise fail(name, value, must) from None
    if arr.ndim != 1 or (arr.size == 0 and not allow_empty):
        raise fail(name, value, must)
    if arr.size == 0:
        out = np.zeros(0, dtype=np.int64)
        out.setflags(write=False)
        return out
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise fail(name, value, must)
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise fail(name, value, must + " that fit in int64")
    if arr.min() < 1:
        raise fail(name, value, must)
    out = np.array(arr, dtype=np.int64, copy=True)
    out.setflags(write=False)
    return out
