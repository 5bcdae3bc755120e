"""Helpers that padding and packing share: token-id sequences in, checked arrays and tensors out.

A private module (nothing here is part of padlab's public API), but its names carry no
underscore: :mod:`padlab.padding` and :mod:`padlab.packing` both import them, and no module
imports another module's ``_`` names.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from ._validate import fail

__all__ = ["as_int_array", "is_per_token", "stack_scalars", "check_list"]


def as_int_array(name: str, seq: Any, *, allow_negative: bool, allow_empty: bool) -> np.ndarray:
    """``seq`` as a 1-D int64 array; refuses floats, bools, strings, nesting (and negatives)."""
    if type(seq) is np.ndarray and seq.ndim == 1 and seq.dtype.kind == "i" and seq.size:
        # Fast path for the common case (a corpus hands out int arrays): one reduction, no copies.
        if allow_negative or seq.min() >= 0:
            return seq.astype(np.int64, copy=False)
    must = "be a 1-D sequence of integer" + (" token ids >= 0" if not allow_negative else "s")
    if seq is None or isinstance(seq, (str, bytes, Mapping)) or isinstance(seq, numbers.Number):
        raise fail(name, seq, must)
    if isinstance(seq, torch.Tensor):
        if seq.dtype == torch.bool or seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dim() != 1:
            raise fail(name, seq, must)
        arr = seq.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(seq)
        except (ValueError, TypeError, OverflowError):  # ragged nesting, ints beyond int64
            raise fail(name, seq, must) from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            # An empty list becomes float64; it is an empty sequence, not a float one.
            if not (arr.ndim == 1 and arr.size == 0):
                raise fail(name, seq, must)
    if arr.size == 0:
        if not allow_empty:
            raise fail(name, seq, "hold at least one token")
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise fail(name, seq, must)
    arr = arr.astype(np.int64, copy=False)
    if not allow_negative and arr.min() < 0:
        raise fail(name, seq, must)
    return arr


def is_per_token(v: Any) -> bool:
    """True for a per-token value (a list, 1-D array or tensor), False for one value per example."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return v.ndim >= 1
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def stack_scalars(name: str, values: list[Any]) -> torch.Tensor:
    """Sequence-level values (labels, weights, ...) as one tensor: long if all ints, else float32."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0:
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise fail(f"examples[{i}][{name!r}]", v, "be an int or a float (one value per example)")
        out.append(v)
    if all(isinstance(v, numbers.Integral) for v in out):
        return torch.tensor([int(v) for v in out], dtype=torch.long)
    return torch.tensor([float(v) for v in out], dtype=torch.float32)


def check_list(name: str, value: Any, *, items: str, item: str) -> list[Any]:
    """``value`` (a list, tuple or other iterable) as a non-empty list.

    ``items`` completes "must be a list of ...", ``item`` "must hold at least one ...".
    ``None``, strings, mappings and numbers are refused with a :class:`PadlabError` naming
    ``name`` (where ``list(value)`` would give a bare ``TypeError``).
    """
    if value is None or isinstance(value, (str, bytes, Mapping)) or isinstance(value, numbers.Number):
        raise fail(name, value, f"be a list of {items}")
    try:
        out = list(value)
    except TypeError:
        raise fail(name, value, f"be a list of {items}") from None
    if not out:
        raise fail(name, out, f"hold at least one {item}")
    return out
