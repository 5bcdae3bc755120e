"""What padding wastes: tokens, attention cost and memory, for a set of batches.

A batch is described by its :class:`BatchShape`: how many rows the tensor has, how wide
each row is (the padded length), and the lengths of the real sequences it holds (one per
row when padding, several per row when packing). Everything here is arithmetic on those
shapes, so it applies to any strategy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ._validate import check_int, fail


@dataclass(frozen=True)
class BatchShape:
    """One batch: a ``rows x width`` tensor holding sequences of ``seq_lengths`` real tokens."""

    rows: int
    width: int
    seq_lengths: np.ndarray

    def __post_init__(self) -> None:
        check_int("rows", self.rows, min_value=1)
        check_int("width", self.width, min_value=1)
        lens = np.asarray(self.seq_lengths)
        if lens.ndim != 1 or lens.size == 0 or not np.issubdtype(lens.dtype, np.integer):
            raise fail("seq_lengths", self.seq_lengths, "be a non-empty 1-D array of integers")
        if lens.min() < 1:
            raise fail("seq_lengths", self.seq_lengths, "hold lengths >= 1")
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
    lengths = np.asarray(lengths)
    if max_length is not None:
        max_length = check_int("max_length", max_length, min_value=1)
    if fixed and max_length is None:
        raise fail("max_length", max_length, "be given when fixed=True")
    mult = check_int("pad_to_multiple_of", pad_to_multiple_of, min_value=1, allow_none=True)
    shapes, truncated = [], 0
    for idx in batches:
        lens = lengths[np.asarray(idx, dtype=np.int64)]
        kept = np.minimum(lens, max_length) if max_length is not None else lens
        truncated += int((lens - kept).sum())
        w = max_length if fixed else int(kept.max())
        if mult and not fixed:
            w = -(-w // mult) * mult
        shapes.append(BatchShape(rows=len(kept), width=w, seq_lengths=kept))
    return shapes, truncated
