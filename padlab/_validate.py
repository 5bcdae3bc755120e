"""Argument checks shared by every module: each error names the argument and the value."""
from __future__ import annotations

import numbers
from typing import Any, Iterable


def fail(name: str, value: Any, must: str) -> "ValueError":
    """Build the one error format padlab uses: ``<name> must <must>; got <value!r>``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return ValueError(f"{name} must {must}; got {text}")


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
