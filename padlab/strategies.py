"""THE strategy registry: a strategy name -> which examples share each batch (indices only).

Every consumer plans from :data:`STRATEGIES` through :func:`plan`: the ``padlab waste`` command
and :func:`waste_table`, the benchmark harness (:mod:`padlab.experiments.bench`), the widgets
and the notebooks. A strategy returns batches of *indices*; turning them into tensors is the
collators' job (:mod:`padlab.padding`, :mod:`padlab.packing`); measuring them is
:mod:`padlab.waste`'. The mechanisms live in :mod:`padlab.batching` and :mod:`padlab.packing`.

=================  ===========================================================================
name               batches
=================  ===========================================================================
fixed              random batches of ``batch_size``; every row padded to ``max_length``
dynamic            random batches of ``batch_size``; padded to the batch's longest
dynamic-multiple   as dynamic, the width rounded up to ``pad_to_multiple_of``
sorted             one global length sort cut into batches of ``batch_size``, batch order shuffled
bucketed           length-sorted within pools of ``mega_batch x batch_size`` sequences (as
                   transformers' length-grouped sampler), batch order shuffled
token-budget       length-sorted within pools of ``mega_batch x max_tokens`` tokens, batches of at
                   most ``max_tokens`` padded tokens (``rows x longest``)
packed             first-fit-decreasing packs of ``max_length`` tokens, ``rows`` packs a batch;
                   dense attention over each whole row (block-diagonal mask)
packed-varlen      the same packs; attention per sequence only (a varlen kernel)
packed-flex        the same packs as rows of static shape; FlexAttention skips the tiles where no
                   token of a sequence meets another's (a block-sparse document mask)
=================  ===========================================================================

Each :class:`Plan` states its sorting pool (``pool_size`` in ``pool_unit``): ``None`` for random
batches and packs, the corpus size for ``sorted``. A pool of ``mega_batch=None`` (or larger than
the corpus) sorts globally: that is the ``sorted`` strategy, not a bucketing setting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._validate import check_bool, check_choice, check_int, check_lengths, fail
from .waste import BatchShape, WasteReport, length_eta_squared, padded_batches, waste

__all__ = ["STRATEGIES", "Strategy", "Plan", "plan", "plan_shapes", "plan_grids", "random_batches", "default_max_tokens", "batch_shapes",
           "waste_table", "BucketTradeoff", "bucket_tradeoff"]


@dataclass(frozen=True)
class Plan:
    """One epoch of a strategy: which examples share each batch.

    ``batches``: for padding strategies one index array per batch; for packing strategies
    (``packs`` true) one list of packs (index arrays) per batch. ``pool_size``/``pool_unit``:
    the sorting pool (``None`` where nothing is sorted into batches by length). ``options``:
    the strategy-specific settings used (``mega_batch``, ``max_tokens``, ``rows``, ...).
    """

    strategy: str
    batches: list
    packs: bool
    max_length: int
    fixed_width: bool
    pad_to_multiple_of: int | None
    block_diagonal: bool
    pool_size: int | None
    pool_unit: str | None
    epoch: int
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class Strategy:
    """One registry entry: its name, a one-line description, and the builder of its :class:`Plan`."""

    name: str
    description: str
    build: Callable[..., Plan]
    packs: bool = False


def random_batches(n: int, batch_size: int, seed: int, epoch: int = 0, *, drop_last: bool = False) -> list[np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into batches (the last may be short unless ``drop_last``).

    Epoch 0 shuffles with ``seed`` alone (as this function always has); epoch ``e > 0`` with ``(seed, e)``.
    """
    rng = np.random.default_rng(seed if epoch == 0 else (seed, epoch))
    perm = rng.permutation(n)
    out = np.split(perm, np.arange(batch_size, n, batch_size))
    if drop_last and out and len(out[-1]) < batch_size:
        out = out[:-1]
    return out


def default_max_tokens(lengths: np.ndarray, batch_size: int, max_length: int) -> int:
    """The token budget the ``token-budget`` strategy uses when none is given.

    ``batch_size`` rows of the mean (truncated) length, so it makes about as many batches
    as the fixed-size strategies (a few more, since bucketed rows still carry some
    padding); at least the longest truncated sequence, so every sequence fits.
    """
    kept = np.minimum(np.asarray(lengths), max_length)
    return max(batch_size * int(np.ceil(kept.mean())), int(kept.max()))


def _no_extra(name: str, options: dict[str, Any]) -> None:
    if options:
        key = sorted(options)[0]
        raise fail(key, options[key], f"not be given to strategy {name!r} (it takes no such option)")


def _random(name: str, fixed: bool, multiple: bool):
    def build(lengths, batch_size, max_length, seed, epoch, drop_last, *, pad_to_multiple_of=None, **extra) -> Plan:
        _no_extra(name, extra)
        if multiple:
            pad_to_multiple_of = check_int("pad_to_multiple_of", 8 if pad_to_multiple_of is None else pad_to_multiple_of,
                                           min_value=1)
        else:
            pad_to_multiple_of = check_int("pad_to_multiple_of", pad_to_multiple_of, min_value=1, allow_none=True)
        batches = random_batches(len(lengths), batch_size, seed, epoch, drop_last=drop_last)
        return Plan(name, batches, False, max_length, fixed, None if fixed else pad_to_multiple_of, False, None, None,
                    epoch, {"pad_to_multiple_of": pad_to_multiple_of} if multiple else {})
    return build


def _bucket_plan(name: str, lengths, batch_size, max_length, seed, epoch, drop_last, *, mega_batch,
                 pad_to_multiple_of=None, noise=0.0, **extra) -> Plan:
    from .batching import BucketBatchSampler

    _no_extra(name, extra)
    kept = np.minimum(lengths, max_length)  # sort by the length the collator keeps
    sampler = BucketBatchSampler(kept, batch_size, mega_batch=mega_batch, noise=noise, seed=seed,
                                 num_replicas=1, rank=0, drop_last=drop_last)
    pool = min(len(kept), sampler.mega_batch * batch_size) if sampler.mega_batch else len(kept)
    return Plan(name, sampler.epoch_batches(epoch), False, max_length, False, pad_to_multiple_of, False, pool,
                "sequences", epoch, {"mega_batch": sampler.mega_batch or None, "noise": float(noise)})


def _bucketed(lengths, batch_size, max_length, seed, epoch, drop_last, *, mega_batch=50, **options) -> Plan:
    if mega_batch is None or mega_batch == 0:
        raise fail("mega_batch", mega_batch, "be an integer >= 1 for 'bucketed' (a global sort is the 'sorted' strategy)")
    return _bucket_plan("bucketed", lengths, batch_size, max_length, seed, epoch, drop_last, mega_batch=mega_batch,
                        **options)


def _sorted(lengths, batch_size, max_length, seed, epoch, drop_last, **options) -> Plan:
    return _bucket_plan("sorted", lengths, batch_size, max_length, seed, epoch, drop_last, mega_batch=None, **options)


def _token_budget(lengths, batch_size, max_length, seed, epoch, drop_last, *, pad_to_multiple_of=None,
                  mega_batch=50, noise=0.0, max_tokens=None, **extra) -> Plan:
    from .batching import TokenBudgetBatchSampler

    _no_extra("token-budget", extra)
    kept = np.minimum(lengths, max_length)
    if max_tokens is None:
        max_tokens = default_max_tokens(lengths, batch_size, max_length)
    sampler = TokenBudgetBatchSampler(kept, max_tokens, mega_batch=mega_batch, noise=noise, seed=seed,
                                      num_replicas=1, rank=0)
    pool, unit = ((sampler.mega_batch * sampler.max_tokens, "tokens") if sampler.mega_batch
                  else (len(kept), "sequences"))
    return Plan("token-budget", sampler.epoch_batches(epoch), False, max_length, False, pad_to_multiple_of, False,
                pool, unit, epoch, {"mega_batch": sampler.mega_batch or None, "noise": float(noise),
                                    "max_tokens": int(sampler.max_tokens)})


def _packer(name: str, varlen: bool):
    def build(lengths, batch_size, max_length, seed, epoch, drop_last, *, rows=None, algorithm="ffd",
              max_per_pack=None, within_batch=False, **extra) -> Plan:
        """Packs of ``max_length`` tokens (sequences cut to it).

        Default: the epoch's examples in a seeded random order are packed together (FFD), the
        packs shuffled and cut into batches of ``rows`` packs (default
        ``max(1, round(batch_size x mean kept length / max_length))``, about ``batch_size``
        sequences a batch). ``within_batch=True``: random batches of ``batch_size`` sequences,
        each packed on its own (as flattening a batch does).
        """
        from .packing import pack

        _no_extra(name, extra)
        within_batch = check_bool("within_batch", within_batch)
        rows = check_int("rows", rows, min_value=1, allow_none=True)
        n = len(lengths)
        if within_batch:
            batches = [[chunk[p] for p in pack(lengths[chunk], max_length, algorithm=algorithm,
                                                max_per_pack=max_per_pack, truncation=True).packs]
                       for chunk in random_batches(n, batch_size, seed, epoch, drop_last=drop_last)]
            opts = {"within_batch": True, "algorithm": algorithm}
        else:
            perm = np.random.default_rng((seed, epoch)).permutation(n)
            res = pack(lengths[perm], max_length, algorithm=algorithm, max_per_pack=max_per_pack, truncation=True)
            packs = [perm[p] for p in res.packs]
            if rows is None:
                rows = max(1, round(batch_size * float(res.lengths.mean()) / max_length))
            order = np.random.default_rng((seed, epoch, 1)).permutation(len(packs))
            packs = [packs[i] for i in order]
            stop = len(packs) - rows + 1 if drop_last else len(packs)
            batches = [packs[i:i + rows] for i in range(0, max(stop, 0), rows)]
            opts = {"rows": rows, "algorithm": algorithm}
        return Plan(name, batches, True, max_length, True, None, varlen, None, None, epoch, opts)
    return build


#: THE registry, in table order (the order of rows in every table).
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("fixed", "random batches, every row padded to max_length", _random("fixed", True, False)),
    Strategy("dynamic", "random batches padded to their longest sequence", _random("dynamic", False, False)),
    Strategy("dynamic-multiple", "random batches padded to their longest, rounded up to pad_to_multiple_of",
             _random("dynamic-multiple", False, True)),
    Strategy("sorted", "one global length sort cut into batches; batch order shuffled", _sorted),
    Strategy("bucketed", "length-sorted within pools of mega_batch x batch_size sequences; batch order shuffled",
             _bucketed),
    Strategy("token-budget", "length-sorted within pools of mega_batch x max_tokens tokens; rows x longest <= "
             "max_tokens", _token_budget),
    Strategy("packed", "FFD packs of max_length tokens; dense block-diagonal attention per row",
             _packer("packed", False), packs=True),
    Strategy("packed-varlen", "the same packs; attention per sequence only (varlen kernel)",
             _packer("packed-varlen", True), packs=True),
    Strategy("packed-flex", "the same packs as static-shape rows; FlexAttention document mask (block-sparse tiles)",
             _packer("packed-flex", True), packs=True),
)}


def plan(strategy: str, lengths: Any, *, batch_size: int = 32, max_length: int = 512, seed: int = 0,
         epoch: int = 0, drop_last: bool = False, **options: Any) -> Plan:
    """One epoch of batches under ``strategy`` (a key of :data:`STRATEGIES`) for ``lengths``.

    ``options`` are the strategy's own: ``pad_to_multiple_of`` (padding strategies; default 8
    for ``dynamic-multiple``), ``mega_batch`` and ``noise`` (``bucketed``, ``token-budget``;
    ``sorted`` takes ``noise``), ``max_tokens`` (``token-budget``; default
    :func:`default_max_tokens`), ``rows``, ``algorithm``, ``max_per_pack``, ``within_batch``
    (packing). ``drop_last`` drops a short last batch (random, sorted, bucketed and packed batches).
    """
    check_choice("strategy", strategy, tuple(STRATEGIES))
    batch_size = check_int("batch_size", batch_size, min_value=1)
    max_length = check_int("max_length", max_length, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    epoch = check_int("epoch", epoch, min_value=0)
    drop_last = check_bool("drop_last", drop_last)
    lengths = check_lengths("lengths", lengths)
    return STRATEGIES[strategy].build(lengths, batch_size, max_length, seed, epoch, drop_last, **options)


def plan_shapes(p: Plan, lengths: Any) -> tuple[list[BatchShape], int]:
    """The :class:`~padlab.waste.BatchShape` of each batch of ``p`` and the tokens truncation drops."""
    lengths = check_lengths("lengths", lengths)
    if not p.packs:
        return padded_batches(lengths, p.batches, max_length=p.max_length, fixed=p.fixed_width,
                              pad_to_multiple_of=p.pad_to_multiple_of)
    kept = np.minimum(lengths, p.max_length)
    shapes = [BatchShape(rows=len(b), width=p.max_length, seq_lengths=kept[np.concatenate(b)]) for b in p.batches]
    return shapes, int((lengths - kept).sum())


def plan_grids(p: Plan, lengths: Any, *, batches: "int | None" = None) -> list[np.ndarray]:
    """Which text fills each token slot of each batch of ``p``: one ``rows x width`` int array per
    batch, the text's index in ``lengths`` or -1 on padding (the data of :func:`padlab.viz.layout_schematic`).

    Widths are :func:`plan_shapes`'s; a padded row holds its one text from column 0 (right padding),
    a pack its texts back to back in pack order, as the collators lay them out; a text longer than
    the width is cut. ``batches`` keeps only the first ones (schematics draw a few).
    """
    lengths = check_lengths("lengths", lengths)
    batches = check_int("batches", batches, min_value=1, allow_none=True)
    chosen = p.batches if batches is None else p.batches[:batches]
    shapes, _ = plan_shapes(dataclasses.replace(p, batches=chosen), lengths)
    grids = []
    for b, shape in zip(chosen, shapes):
        rows = [list(r) for r in b] if p.packs else [[int(i)] for i in b]
        grid = np.full((shape.rows, shape.width), -1, dtype=np.int64)
        for r, texts in enumerate(rows):
            kept = np.minimum(lengths[np.asarray(texts, dtype=np.int64)], shape.width)
            row = np.repeat(np.asarray(texts, dtype=np.int64), kept)[:shape.width]
            grid[r, :row.size] = row
        grids.append(grid)
    return grids


def batch_shapes(strategy: str, lengths: np.ndarray, *, batch_size: int = 32, max_length: int = 512,
                 seed: int = 0, **options) -> tuple[list[BatchShape], int, bool]:
    """Shapes of one epoch of batches under ``strategy``: (shapes, truncated tokens, block_diagonal)."""
    lengths = check_lengths("lengths", lengths)
    p = plan(strategy, lengths, batch_size=batch_size, max_length=max_length, seed=seed, **options)
    shapes, truncated = plan_shapes(p, lengths)
    return shapes, truncated, p.block_diagonal


def waste_table(lengths: np.ndarray, strategies: tuple[str, ...] | None = None, *, batch_size: int = 32,
                max_length: int = 512, seed: int = 0, **options) -> list[WasteReport]:
    """One :class:`WasteReport` per strategy (default: every name of :data:`STRATEGIES`) over the same lengths.

    ``options`` go to every strategy that takes them (``mega_batch`` to bucketed and token-budget, ...).
    """
    names = tuple(strategies or STRATEGIES)
    for s in names:
        check_choice("strategies", s, tuple(STRATEGIES))
    unused = sorted(set(options) - set().union(*(_OPTIONS[s] for s in names)))
    if unused:
        raise fail(unused[0], options[unused[0]], f"be an option of one of the strategies {names}")
    out = []
    for s in names:
        own = {k: v for k, v in options.items() if k in _OPTIONS[s]}
        shapes, truncated, block = batch_shapes(s, lengths, batch_size=batch_size, max_length=max_length,
                                                seed=seed, **own)
        out.append(waste(s, shapes, truncated, block_diagonal=block))
    return out


_PAD = {"pad_to_multiple_of"}
_PACK = {"rows", "algorithm", "max_per_pack", "within_batch"}
# Which options each strategy takes (waste_table passes each only those).
_OPTIONS: dict[str, set[str]] = {
    "fixed": set(), "dynamic": _PAD, "dynamic-multiple": _PAD, "sorted": _PAD | {"noise"},
    "bucketed": _PAD | {"mega_batch", "noise"}, "token-budget": _PAD | {"mega_batch", "noise", "max_tokens"},
    "packed": _PACK, "packed-varlen": _PACK, "packed-flex": _PACK,
}


@dataclass(frozen=True)
class BucketTradeoff:
    """One bucketing setting measured on one epoch: what padding costs against how random batches are.

    ``efficiency`` and ``attention_efficiency`` as in :class:`~padlab.waste.WasteReport`;
    ``eta_squared`` is :func:`padlab.waste.length_eta_squared` of the (truncated) lengths:
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
    """Efficiency and eta² of one epoch of length-grouped batches: the ``"bucketed"`` strategy's
    (``mega_batch`` >= 1) or the ``"sorted"`` one's (``mega_batch`` ``None`` or 0)."""
    name = "sorted" if mega_batch is None or mega_batch == 0 else "bucketed"
    extra = {} if name == "sorted" else {"mega_batch": mega_batch}
    p = plan(name, lengths, batch_size=batch_size, max_length=max_length, seed=seed, noise=noise, **extra)
    lengths = check_lengths("lengths", lengths)
    shapes, truncated = plan_shapes(p, lengths)
    report = waste(name, shapes, truncated)
    return BucketTradeoff(mega_batch=p.options["mega_batch"] or 0, noise=p.options["noise"], batches=report.batches,
                          efficiency=report.efficiency, attention_efficiency=report.attention_efficiency,
                          eta_squared=length_eta_squared(np.minimum(lengths, max_length), p.batches))
