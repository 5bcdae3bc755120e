"""What a set of batches wastes: padded tokens, attention scores, truncation, length grouping.

A batch is described by its :class:`BatchShape`: how many rows the tensor has, how wide
each row is (the padded length), and the lengths of the real sequences it holds (one per
row when padding, several per row when packing). Everything here is arithmetic on those
shapes, so it applies to any strategy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ._validate import check_int, check_lengths, fail

__all__ = ["BatchShape", "WasteReport", "waste", "padded_batches", "length_eta_squared"]


@dataclass(frozen=True)
class BatchShape:
    """One batch: a ``rows x width`` tensor holding sequences of ``seq_lengths`` real tokens."""

    rows: int
    width: int
    seq_lengths: np.ndarray

    def __post_init__(self) -> None:
        check_int("rows", self.rows, min_value=1)
        check_int("width", self.width, min_value=1)
        lens = check_lengths("seq_lengths", self.seq_lengths)
        if lens.sum() > self.rows * self.width:
            raise fail("seq_lengths", self.seq_lengths,
                       f"fit in rows x width = {self.rows} x {self.width} (sum is {int(lens.sum())})")


@dataclass(frozen=True)
class WasteReport:
    """Totals over a set of batches; ``padded_tokens`` counts pad slots only."""

    strategy: str
    batches: int
    sequences: int
    real_tokens: int
    padded_tokens: int
    computed_tokens: int
    efficiency: float
    attention_real: int
    attention_computed: int
    attention_efficiency: float
    truncated_tokens: int
    max_width: int

    def as_dict(self) -> dict:
        return asdict(self)


def waste(strategy: str, batches: Iterable[BatchShape], truncated_tokens: int = 0,
          *, block_diagonal: bool = False) -> WasteReport:
    """Measure what a set of batches computes against what it needs.

    * token efficiency = real tokens / (rows x width) summed over batches;
    * attention efficiency = sum of real ``length**2`` / sum of computed ``width**2`` per row:
      the quadratic score matrix that dense attention computes. With ``block_diagonal``
      (packed rows through a varlen kernel) a row computes only its own blocks, so the
      computed term becomes the sum of ``length**2`` plus nothing for the pad tail.
    """
    truncated_tokens = check_int("truncated_tokens", truncated_tokens, min_value=0)
    batches = list(batches)
    if not batches:
        raise fail("batches", batches, "hold at least one BatchShape")
    for i, b in enumerate(batches):
        if not isinstance(b, BatchShape):
            raise fail(f"batches[{i}]", b, "be a BatchShape")
    rows = np.array([b.rows for b in batches], dtype=np.int64)
    width = np.array([b.width for b in batches], dtype=np.int64)
    lens = np.concatenate([np.asarray(b.seq_lengths, dtype=np.int64) for b in batches])
    real = int(lens.sum())
    computed = int((rows * width).sum())
    att_real = int((lens * lens).sum())
    att_computed = att_real if block_diagonal else int((rows * width * width).sum())
    return WasteReport(
        strategy=strategy, batches=len(batches), sequences=int(lens.size), real_tokens=real,
        padded_tokens=computed - real, computed_tokens=computed, efficiency=real / computed,
        attention_real=att_real, attention_computed=att_computed,
        attention_efficiency=att_real / att_computed, truncated_tokens=truncated_tokens,
        max_width=int(width.max()))


def padded_batches(lengths: np.ndarray, batches: Sequence[np.ndarray], *, max_length: int | None = None,
                   fixed: bool = False, pad_to_multiple_of: int | None = None) -> tuple[list[BatchShape], int]:
    """Shapes of one-sequence-per-row batches, and the tokens truncation drops.

    ``batches`` holds arrays of indices into ``lengths``. With ``fixed`` every batch is
    ``max_length`` wide; otherwise each batch is as wide as its longest (kept) sequence,
    rounded up to ``pad_to_multiple_of``.
    """
    lengths = check_lengths("lengths", lengths)
    max_length = check_int("max_length", max_length, min_value=1, allow_none=True)
    if fixed and max_length is None:
        raise fail("max_length", max_length, "be given when fixed=True")
    mult = check_int("pad_to_multiple_of", pad_to_multiple_of, min_value=1, allow_none=True)
    n = lengths.size
    shapes, truncated = [], 0
    for i, idx in enumerate(batches):  # a loop over batches
        arr = np.asarray(idx)
        if arr.ndim != 1 or arr.size == 0 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise fail(f"batches[{i}]", idx, "be a non-empty 1-D array of integer indices")
        if arr.min() < 0 or arr.max() >= n:  # negative indices would wrap around silently
            raise fail(f"batches[{i}]", idx, f"hold indices in [0, {n}) (len(lengths) = {n})")
        lens = lengths[arr]
        kept = np.minimum(lens, max_length) if max_length is not None else lens
        truncated += int((lens - kept).sum())
        w = max_length if fixed else int(kept.max())
        if mult and not fixed:
            w = -(-w // mult) * mult
        shapes.append(BatchShape(rows=len(kept), width=w, seq_lengths=kept))
    return shapes, truncated


def length_eta_squared(lengths, batches: Sequence[np.ndarray]) -> float:
    """How much batch membership depends on length: the correlation ratio eta².

    ``SS_between / SS_total`` of the lengths grouped by batch (``batches`` holds arrays of
    indices into ``lengths``; an index that appears twice counts twice). 0: every batch has
    the same mean length (membership says nothing about length); 1: every batch holds one
    length only (knowing the batch is knowing the length). Random batches of ``b`` texts
    score about ``1 / b``; a full sort scores close to 1. Equal lengths everywhere give 0.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.number):
        raise fail("lengths", lengths, "be a non-empty 1-D array of numbers")
    if isinstance(batches, (str, bytes)) or len(batches) == 0:
        raise fail("batches", batches, "hold at least one batch of indices")
    arrays = [np.asarray(b) for b in batches]
    for i, b in enumerate(arrays):  # a loop over batches
        if b.ndim != 1 or b.size == 0 or not np.issubdtype(b.dtype, np.integer):
            raise fail(f"batches[{i}]", batches[i], "be a non-empty 1-D array of integer indices")
    order = np.concatenate(arrays)
    if order.min() < 0 or order.max() >= lengths.size:
        raise fail("batches", batches, f"hold indices in [0, {lengths.size})")
    x = lengths[order].astype(np.float64)
    sizes = np.fromiter((b.size for b in arrays), dtype=np.int64, count=len(arrays))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    grand = x.mean()
    total = float(((x - grand) ** 2).sum())
    if total == 0.0:
        return 0.0
    means = np.add.reduceat(x, starts) / sizes
    return float((sizes * (means - grand) ** 2).sum() / total)
