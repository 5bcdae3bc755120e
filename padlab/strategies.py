"""Named batching strategies, as used everywhere (CLI, JSON, notebooks, benchmark).

A strategy turns token lengths into batches: which sequences share a tensor and how wide
that tensor is. This module only wires samplers and packers to :mod:`padlab.metrics`;
the mechanisms live in :mod:`padlab.batching`, :mod:`padlab.packing` and
:mod:`padlab.padding`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._validate import check_choice, check_int, fail
from .waste import BatchShape, WasteReport, length_eta_squared, padded_batches, waste

# Order matters: it is the order of rows in every table.
STRATEGIES = ("fixed", "dynamic", "bucketed", "token-budget", "packed")


def random_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into batches (the last may be short)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.split(perm, np.arange(batch_size, n, batch_size))


def _fixed(lengths, batch_size, max_length, seed, **_):
    return padded_batches(lengths, random_batches(len(lengths), batch_size, seed),
                          max_length=max_length, fixed=True), False


def _dynamic(lengths, batch_size, max_length, seed, pad_to_multiple_of=None, **_):
    return padded_batches(lengths, random_batches(len(lengths), batch_size, seed),
                          max_length=max_length, pad_to_multiple_of=pad_to_multiple_of), False


def default_max_tokens(lengths: np.ndarray, batch_size: int, max_length: int) -> int:
    """The token budget the ``token-budget`` strategy uses when none is given.

    ``batch_size`` rows of the mean (truncated) length, so it makes about as many batches
    as the fixed-size strategies (a few more, since bucketed rows still carry some
    padding); at least the longest truncated sequence, so every sequence fits.
    """
    kept = np.minimum(np.asarray(lengths), max_length)
    return max(batch_size * int(np.ceil(kept.mean())), int(kept.max()))


def _bucketed(lengths, batch_size, max_length, seed, pad_to_multiple_of=None, mega_batch=50, noise=0.0, **_):
    from .batching import BucketBatchSampler

    # Sort by the length the collator will produce (truncated), not the raw one.
    kept = np.minimum(lengths, max_length)
    batches = BucketBatchSampler(kept, batch_size, mega_batch=mega_batch, noise=noise, seed=seed,
                                 num_replicas=1, rank=0).epoch_batches(0)
    return padded_batches(lengths, batches, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of), False


def _token_budget(lengths, batch_size, max_length, seed, pad_to_multiple_of=None, mega_batch=50, noise=0.0,
                  max_tokens=None, **_):
    from .batching import TokenBudgetBatchSampler

    kept = np.minimum(lengths, max_length)
    if max_tokens is None:
        max_tokens = default_max_tokens(lengths, batch_size, max_length)
    batches = TokenBudgetBatchSampler(kept, max_tokens, mega_batch=mega_batch, noise=noise, seed=seed,
                                      num_replicas=1, rank=0).epoch_batches(0)
    return padded_batches(lengths, batches, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of), False


def _packed(lengths, batch_size, max_length, seed, algorithm="ffd", max_per_pack=None, varlen=False, **_):
    """Packs of ``max_length`` tokens (sequences cut to it), in a seeded random order.

    A batch holds ``max(1, round(batch_size * mean kept length / max_length))`` packs, so it
    carries about ``batch_size`` sequences, like the other strategies' batches. A dense
    block-diagonal mask still computes every row's full ``max_length**2`` scores; ``varlen=True``
    models a varlen kernel that computes only each sequence's own block.
    """
    from .packing import pack

    if not isinstance(varlen, (bool, np.bool_)):
        raise fail("varlen", varlen, "be True or False")
    result = pack(lengths, max_length, algorithm=algorithm, max_per_pack=max_per_pack, truncation=True)
    rows = max(1, round(batch_size * float(result.lengths.mean()) / max_length))
    order = np.random.default_rng(seed).permutation(result.n_packs)
    packs = result.packs
    shapes = [BatchShape(rows=len(ps), width=max_length,
                         seq_lengths=result.lengths[np.concatenate([packs[p] for p in ps])])
              for ps in np.split(order, np.arange(rows, result.n_packs, rows))]
    return (shapes, result.truncated_tokens), bool(varlen)


# Each builder returns ((shapes, truncated_tokens), block_diagonal).
_BUILDERS: dict[str, Callable] = {"fixed": _fixed, "dynamic": _dynamic, "bucketed": _bucketed,
                                  "token-budget": _token_budget, "packed": _packed}


def available() -> tuple[str, ...]:
    """The strategies this installation can build, in table order."""
    return tuple(s for s in STRATEGIES if s in _BUILDERS)


def batch_shapes(strategy: str, lengths: np.ndarray, *, batch_size: int = 32, max_length: int = 512,
                 seed: int = 0, **options) -> tuple[list[BatchShape], int, bool]:
    """Shapes of one epoch of batches under ``strategy``: (shapes, truncated tokens, block_diagonal)."""
    check_choice("strategy", strategy, available())
    batch_size = check_int("batch_size", batch_size, min_value=1)
    max_length = check_int("max_length", max_length, min_value=1)
    seed = check_int("seed", seed)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 1:
        raise fail("lengths", lengths, "be a non-empty 1-D array of integers >= 1")
    (shapes, truncated), block = _BUILDERS[strategy](lengths, batch_size, max_length, seed, **options)
    return shapes, truncated, block


def waste_table(lengths: np.ndarray, strategies: tuple[str, ...] | None = None, *, batch_size: int = 32,
                max_length: int = 512, seed: int = 0, **options) -> list[WasteReport]:
    """One :class:`WasteReport` per strategy over the same lengths."""
    out = []
    for s in strategies or available():
        shapes, truncated, block = batch_shapes(s, lengths, batch_size=batch_size, max_length=max_length,
                                                seed=seed, **options)
        out.append(waste(s, shapes, truncated, block_diagonal=block))
    return out


@dataclass(frozen=True)
class BucketTradeoff:
    """One bucketing setting measured on one epoch: what padding costs against how random batches are.

    ``efficiency`` and ``attention_efficiency`` as in :class:`~padlab.metrics.WasteReport`;
    ``eta_squared`` is :func:`padlab.metrics.length_eta_squared` of the (truncated) lengths:
    the share of their variance that batch membership explains (about ``1 / batch_size`` for
    random batches, close to 1 for a full sort). ``mega_batch`` 0 means a full sort.
    """

    mega_batch: int
    noise: float
    batches: int
    efficiency: float
    attention_efficiency: float
    eta_squared: float


def bucket_tradeoff(lengths: np.ndarray, *, batch_size: int = 32, max_length: int = 512, mega_batch: int | None = 50,
                    noise: float = 0.0, seed: int = 0) -> BucketTradeoff:
    """Efficiency and eta² of the ``"bucketed"`` strategy's epoch (the batches :func:`waste_table` measures)."""
    from .batching import BucketBatchSampler

    batch_size = check_int("batch_size", batch_size, min_value=1)
    max_length = check_int("max_length", max_length, min_value=1)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 1:
        raise fail("lengths", lengths, "be a non-empty 1-D array of integers >= 1")
    kept = np.minimum(lengths, max_length)
    sampler = BucketBatchSampler(kept, batch_size, mega_batch=mega_batch, noise=noise, seed=seed,
                                 num_replicas=1, rank=0)
    batches = sampler.epoch_batches(0)
    shapes, truncated = padded_batches(lengths, batches, max_length=max_length)
    report = waste("bucketed", shapes, truncated)
    return BucketTradeoff(mega_batch=sampler.mega_batch, noise=sampler.noise, batches=report.batches,
                          efficiency=report.efficiency, attention_efficiency=report.attention_efficiency,
                          eta_squared=length_eta_squared(kept, batches))
