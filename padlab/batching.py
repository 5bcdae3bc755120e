"""Batch samplers that group sequences of similar length: buckets and token budgets.

Both samplers plug into ``DataLoader(dataset, batch_sampler=sampler, collate_fn=...)``:
iterating yields one list of dataset indices per batch, and ``len(sampler)`` is the exact
number of batches this rank will get this epoch.

How one epoch is built (the same for both samplers; everything is seeded by
``(seed, epoch)`` so every rank of a DDP job computes the same plan):

1. a random permutation of the examples (``shuffle=True``), cut into *pools*
   (``mega_batch`` batches' worth of examples, or tokens for the token budget);
2. each pool is sorted by length, optionally by a noisy length
   ``length * U(1 - noise, 1 + noise)`` (as AllenNLP's bucket sampler does), so neighbours
   in a pool have similar lengths but the pools themselves are random; ``mega_batch=1``
   gives random batches, ``mega_batch=None`` (or 0) one pool: a full sort;
3. each sorted pool is cut into batches (a fixed ``batch_size``, or as many rows as fit
   ``rows x longest <= max_tokens``);
4. the batches are shuffled (with ``num_replicas > 1``, *blocks* of ``num_replicas``
   neighbouring batches are shuffled, so the ranks of one step get similar lengths and
   none waits long for the others); ``longest_first`` moves the block holding the longest
   sequence to the front, so an out-of-memory error shows at step one.

DDP: ``num_replicas`` and ``rank`` default to ``torch.distributed``'s world size and rank
when a process group is initialised (else 1 and 0). Batch ``i`` of the epoch goes to rank
``i % num_replicas`` at step ``i // num_replicas``; every rank gets the same number of
batches. When the number of batches is not a multiple of ``num_replicas``:

* ``remainder="pad"`` (default, as ``DistributedSampler``): a few batches are repeated
  (chosen at random, or the first ones with ``shuffle=False``), so every example is seen
  at least once; ``last_epoch_stats.repeated`` counts the extra example occurrences;
* ``remainder="drop"``: a few batches are left out (at random, or the last ones with
  ``shuffle=False``), so no example is seen twice; ``last_epoch_stats.dropped`` counts
  the examples of the epoch that no rank sees (``drop_last`` and skipped oversized
  sequences included).

Every rank must build its sampler with the same lengths, options and seed, and call
``set_epoch`` with the same epoch (as with ``DistributedSampler``, nothing advances the
epoch by itself). Options are fixed at construction: build a new sampler to change them.

:func:`bucket_epoch_reference` is a bucket epoch's definition in a dozen plain lines, one example
at a time; the sampler is tested equal to it, batch for batch.

Speed: without noise, each example is one uint64 word ``[random | position | length]``;
one SIMD sort of the words shuffles them, a second one (per pool, after rotating the
length to the top) sorts the pools, and no step gathers at random. 10 million lengths
take well under a second (``benchmarks/bench_batching.py``). The sampler keeps two
uint64 per example between epochs (16 bytes per example), besides the current epoch's
batches. With noise, a general path sorts packed ``(noisy length, position)`` keys instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ._validate import check_bool, check_choice, check_float, check_int, check_lengths, fail

__all__ = ["BucketBatchSampler", "TokenBudgetBatchSampler", "EpochStats", "bucket_epoch_reference",
           "restore_order", "sorted_inference_batches"]

REMAINDERS = ("pad", "drop")
OVERSIZED = ("error", "skip")
# The packed path stores position and length in one uint64 beside >= 24 random bits.
_PAYLOAD_BITS = 40


@dataclass(frozen=True)
class EpochStats:
    """What one epoch's plan did with the examples, over all ranks.

    ``repeated`` counts example occurrences beyond the first (``remainder="pad"``);
    ``dropped`` counts examples that no rank sees this epoch (``drop_last``,
    ``remainder="drop"``, ``oversized="skip"``).
    """

    epoch: int
    examples: int
    batches: int
    batches_per_rank: int
    num_replicas: int
    repeated: int
    dropped: int


# ----------------------------------------------------------------------------- checks

def _check_noise(noise: Any) -> float:
    noise = check_float("noise", noise, min_value=0.0)
    if noise >= 1.0:
        raise fail("noise", noise, "be in [0, 1)")
    return noise


def _check_mega_batch(mega_batch: Any) -> int:
    """0 means one pool (a full sort); ``None`` is accepted as a synonym."""
    if mega_batch is None:
        return 0
    return check_int("mega_batch", mega_batch, min_value=0)


def _world(num_replicas: Any, rank: Any) -> tuple[int, int]:
    """Explicit values win; otherwise ``torch.distributed``'s, when initialised."""
    import torch.distributed as dist

    live = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if live else 1
    num_replicas = check_int("num_replicas", num_replicas, min_value=1)
    if rank is None:
        rank = dist.get_rank() if live else 0
    rank = check_int("rank", rank, min_value=0)
    if rank >= num_replicas:
        raise fail("rank", rank, f"be in [0, num_replicas) = [0, {num_replicas})")
    return num_replicas, rank


# ------------------------------------------------------------------ vectorised kernels

def _permutation(m: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation of ``range(m)``, drawn by sorting random keys.

    Each index gets ``64 - bits(m)`` random high bits above its own value; one SIMD sort
    of these uint64 keys is several times faster than NumPy's Fisher-Yates shuffle (one
    bounded random draw per element). Ties of the random part (about
    ``m**2 / 2**(65 - bits)`` pairs: a few dozen for 10 million) keep index order.
    """
    low = np.uint64((1 << max(1, (m - 1).bit_length())) - 1)
    keys = rng.bit_generator.random_raw(m)
    keys &= ~low
    keys |= np.arange(m, dtype=np.uint64)
    keys.sort()
    keys &= low
    return keys.view(np.int64)


def _sort_pools(keys: np.ndarray, pool_size: int | None, bounds: np.ndarray | None) -> np.ndarray:
    """Positions that sort ``keys`` within each pool (ties keep position order).

    Pools are either ``pool_size`` long (the last may be shorter) or given by ``bounds``.
    The key and the position are packed into one uint64 (key in the high 32 bits), so a
    plain ``np.sort`` does the work of a stable argsort at a fraction of its cost, and
    every step after the first allocation happens in place.
    """
    m = keys.size
    if m >= 2**32 or (m and int(keys.max()) >= 2**32):  # pragma: no cover - beyond any real corpus
        pool_id = (np.arange(m) // pool_size) if pool_size else np.searchsorted(bounds, np.arange(m), "right") - 1
        return np.lexsort((np.arange(m), keys, pool_id))
    packed = keys.astype(np.uint64)
    packed <<= np.uint64(32)
    low = np.uint64(0xFFFFFFFF)
    pos = packed.view(np.int64)
    if pool_size is not None:
        full = (m // pool_size) * pool_size
        if full:
            # Pack the column inside the pool (small, broadcast), add the pool's start after.
            rows = packed[:full].reshape(-1, pool_size)
            rows |= np.arange(pool_size, dtype=np.uint64)
            rows.sort(axis=1)
            rows &= low
            pos[:full].reshape(-1, pool_size)[...] += np.arange(0, full, pool_size)[:, None]
        tail = packed[full:]
        tail |= np.arange(m - full, dtype=np.uint64)
        tail.sort()
        tail &= low
        pos[full:] += full
    else:
        packed |= np.arange(m, dtype=np.uint64)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):  # a loop over pools
            packed[a:b].sort()
        packed &= low
    return pos


def _sort_keys(lengths: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Integer sort keys: the lengths, or the bits of ``float32(length * U(1-noise, 1+noise))``.

    Positive float32 values order like their bit patterns read as uint32, so noisy keys
    can be packed and sorted as integers too.
    """
    if noise == 0.0:
        return lengths
    noisy = (lengths * rng.uniform(1.0 - noise, 1.0 + noise, lengths.size)).astype(np.float32)
    return noisy.view(np.uint32)


# --------------------------------------------------------------------------- samplers

class _LengthGroupedSampler(Sampler):
    """Shared epoch machinery: permutation, pools, sort, block shuffle, DDP remainder."""

    _POOLS_NEED_LENGTHS = False  # pools by example count; True: by tokens (their lengths needed)

    def __init__(self, lengths: Any, *, mega_batch: int | None, noise: float, shuffle: bool,
                 longest_first: bool, drop_last: bool, seed: int, num_replicas: int | None,
                 rank: int | None, remainder: str) -> None:
        self.lengths = check_lengths("lengths", lengths)
        self.mega_batch = _check_mega_batch(mega_batch)
        self.noise = _check_noise(noise)
        self.shuffle = check_bool("shuffle", shuffle)
        self.longest_first = check_bool("longest_first", longest_first)
        self.drop_last = check_bool("drop_last", drop_last)
        self.seed = check_int("seed", seed, min_value=0)
        self.remainder = check_choice("remainder", remainder, REMAINDERS)
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.epoch = 0
        self.last_epoch_stats: EpochStats | None = None
        self._cache: tuple[int, list[np.ndarray], EpochStats] | None = None
        self._candidates: np.ndarray | None = None  # examples eligible for batches; None: all
        # A narrow copy of the lengths: gathering 2-byte values is cheaper than 8-byte ones.
        top = int(self.lengths.max())
        self._compact = self.lengths.astype(np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64)
        self._words: np.ndarray | None = None  # built on first use by the packed path
        self._scratch: np.ndarray | None = None
        self._spare: np.ndarray | None = None

    # Subclasses define the pools and how a sorted pool is cut into batches.
    def _pools(self, perm_lengths: np.ndarray) -> tuple[int | None, np.ndarray | None]:
        raise NotImplementedError

    def _cut(self, sorted_lengths: np.ndarray, pool_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch start offsets (ending with the total) and a mask of batches ``drop_last`` drops."""
        raise NotImplementedError

    def _needs_sorted_lengths(self) -> bool:
        return self.longest_first

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` from now on (call it on every rank before each epoch)."""
        self.epoch = check_int("epoch", epoch, min_value=0)

    def _rng(self, epoch: int) -> np.random.Generator:
        # (seed, epoch) as one seed sequence: seed 0 epoch 1 differs from seed 1 epoch 0.
        return np.random.default_rng((self.seed, epoch))

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Every batch of ``epoch`` (default: the current one) in step order, all ranks.

        Batch ``i`` goes to rank ``i % num_replicas``; the remainder policy is applied.
        Arrays are read-only views of dataset indices.
        """
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, min_value=0)
        if self._cache is not None and self._cache[0] == epoch:
            self.last_epoch_stats = self._cache[2]
            return self._cache[1]
        rng = self._rng(epoch)
        order, sorted_lengths, bounds = self._sorted_order(rng)
        order.setflags(write=False)
        starts, short = self._cut(sorted_lengths, bounds)
        sizes = np.diff(starts)
        keep = np.flatnonzero(~short) if self.drop_last else np.arange(sizes.size)
        src, repeated = self._apply_remainder(keep, sizes, rng)
        R = self.num_replicas
        blocks = src.reshape(-1, R)
        block_order = rng.permutation(len(blocks)) if self.shuffle else np.arange(len(blocks))
        if self.longest_first and len(blocks):
            widest = np.maximum.reduceat(sorted_lengths, starts[:-1])[blocks[block_order]].max(axis=1)
            top = int(np.argmax(widest))
            block_order = np.concatenate([block_order[top:top + 1], np.delete(block_order, top)])
        plan = blocks[block_order].ravel()
        batches = self._materialise(order, starts, plan)
        self._spare = None  # this epoch's key buffer is either handed out or recycled by now
        covered = np.zeros(sizes.size, dtype=bool)
        covered[plan] = True
        dropped = self.lengths.size - int(sizes[covered].sum())
        stats = EpochStats(epoch=epoch, examples=int(self.lengths.size), batches=len(batches),
                           batches_per_rank=len(batches) // R, num_replicas=R,
                           repeated=repeated, dropped=dropped)
        self._cache = (epoch, batches, stats)
        self.last_epoch_stats = stats
        return batches

    def _sorted_order(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Steps 1-2 of the epoch: dataset indices in pool-sorted order, their lengths, pool bounds."""
        cand = self._candidates
        m = self.lengths.size if cand is None else cand.size
        if m == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.int64)
        lbits = int(self._compact.max()).bit_length()
        if self.noise == 0.0 and (m - 1).bit_length() + lbits <= _PAYLOAD_BITS:
            return self._sorted_order_packed(rng, m, lbits)
        if cand is None:
            perm = _permutation(m, rng) if self.shuffle else np.arange(m)
        else:
            perm = cand[_permutation(m, rng)] if self.shuffle else cand
        perm_lengths = self._compact[perm]
        keys = _sort_keys(perm_lengths, self.noise, rng)
        pool_size, bounds = self._pools(perm_lengths)
        pos = _sort_pools(keys, pool_size, bounds)
        sorted_lengths = perm_lengths[pos] if self._needs_sorted_lengths() else None
        if bounds is None:
            bounds = np.append(np.arange(0, m, pool_size), m)
        return perm[pos], sorted_lengths, bounds

    def _sorted_order_packed(self, rng: np.random.Generator, m: int,
                             lbits: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The same steps without noise, on one uint64 per example and no random gathers.

        Each example is the word ``[random | position | length]`` (``self._words`` holds
        ``position | length``). Sorting the words shuffles them, carrying each length along;
        rotating the length to the top gives ``[length | random | position]``, and sorting
        that within each pool orders by length with random tie-breaks. A full sort needs
        only the second sort. Without shuffle the random bits are 0: ties keep index order.
        """
        ibits = max(1, (m - 1).bit_length())
        if self._words is None:
            lengths = self._compact if self._candidates is None else self._compact[self._candidates]
            self._words = np.arange(m, dtype=np.uint64) << np.uint64(lbits)
            self._words |= lengths
        low = np.uint64((1 << (ibits + lbits)) - 1)
        lmask = np.uint64((1 << lbits) - 1)
        if self.shuffle:
            key = rng.bit_generator.random_raw(m)  # 64 random bits each, the cheapest draw
            key &= ~low
            key |= self._words
        else:
            key = self._words.copy()
        if self._POOLS_NEED_LENGTHS:
            single = not self.mega_batch
        else:
            pool_size, bounds = self._pools(None)
            single = pool_size >= m
        if self.shuffle and not single:
            key.sort()  # the shuffle: random high bits first
        if self._POOLS_NEED_LENGTHS:  # pools by tokens, counted in the shuffled order
            pool_size, bounds = self._pools((key & lmask).astype(np.int64))
        if self._scratch is None:  # reused every epoch: a fresh 8-byte-per-example temporary costs page faults
            self._scratch = np.empty(m, dtype=np.uint64)
        top = np.left_shift(key, np.uint64(64 - lbits), out=self._scratch)
        key >>= np.uint64(lbits)
        key |= top  # rotated right by lbits: [length | random | position]
        if single:
            key.sort()
        elif pool_size is not None:
            full = (m // pool_size) * pool_size
            key[:full].reshape(-1, pool_size).sort(axis=1)
            key[full:].sort()
        else:
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):  # a loop over pools
                key[a:b].sort()
        sorted_lengths = (key >> np.uint64(64 - lbits)).astype(np.int64) if self._needs_sorted_lengths() else None
        key &= np.uint64((1 << ibits) - 1)
        self._spare = key  # may become the next epoch's scratch (see _materialise)
        order = key.view(np.int64)
        if self._candidates is not None:
            order = self._candidates[order]
        if bounds is None:
            bounds = np.append(np.arange(0, m, pool_size), m)
        return order, sorted_lengths, bounds

    def _apply_remainder(self, keep: np.ndarray, sizes: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Batch ids in sorted order, their count a multiple of ``num_replicas``."""
        R, nb = self.num_replicas, keep.size
        extra = (-nb) % R
        if extra == 0 or nb == 0:
            return keep, 0
        if self.remainder == "pad":
            if self.shuffle:
                picks = np.resize(rng.permutation(nb), extra)
            else:
                picks = np.resize(np.arange(nb), extra)
            # Sorting the batch ids puts each copy next to its original: the same step.
            src = np.sort(np.concatenate([keep, keep[picks]]))
            return src, int(sizes[keep[picks]].sum())
        gone = rng.choice(nb, nb % R, replace=False) if self.shuffle else np.arange(nb - nb % R, nb)
        return np.delete(keep, gone), 0

    def _materialise(self, order: np.ndarray, starts: np.ndarray, plan: np.ndarray) -> list[np.ndarray]:
        sizes = np.diff(starts)
        if sizes.size and (sizes[:-1] == sizes[0]).all():
            bs, nfull = int(sizes[0]), sizes.size - 1 + int(sizes[-1] == sizes[0])
            rows = order[:nfull * bs].reshape(nfull, bs)
            in_rows = plan < nfull
            k = int(in_rows.sum())
            if self._spare is not None and k * bs <= self._scratch.size:
                # Equal batches (the bucket case) on the packed path: gather the rows in step
                # order into the scratch buffer, which is handed out, and keep this epoch's key
                # buffer as the next scratch. Views then come in memory order, and no fresh
                # buffer (page faults) is needed.
                out = np.take(rows, plan[in_rows], axis=0, out=self._scratch.view(np.int64)[:k * bs].reshape(k, bs))
                out.setflags(write=False)
                self._scratch = self._spare
                batches = list(out)
                short = order[nfull * bs:].copy()  # a copy: the key buffer is recycled
                short.setflags(write=False)
                for p in np.flatnonzero(~in_rows).tolist():  # the short batch (repeated, if padded)
                    batches.insert(p, short)
                return batches
            views = list(rows)
            if nfull < sizes.size:
                views.append(order[nfull * bs:])
            return [views[i] for i in plan.tolist()]  # a loop over batches
        return [order[a:b] for a, b in zip(starts[plan].tolist(), starts[plan + 1].tolist())]  # per batch

    def epoch_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches for ``epoch`` (default: the current one), as index arrays."""
        return self.global_batches(epoch)[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.epoch_batches():
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.epoch_batches())


class BucketBatchSampler(_LengthGroupedSampler):
    """Batches of ``batch_size`` sequences of similar length, shuffled (a ``batch_sampler``).

    ``mega_batch`` is the pool size in batches (as ``mega_batch_mult`` in the
    transformers length-grouped sampler); ``noise`` the relative length noise before
    sorting; ``drop_last`` drops the one short batch; see the module docstring for the
    epoch plan, ``longest_first`` and the DDP remainder policy.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, *, mega_batch: int | None = 50,
                 noise: float = 0.0, shuffle: bool = True, longest_first: bool = False,
                 drop_last: bool = False, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, remainder: str = "pad") -> None:
        self.batch_size = check_int("batch_size", batch_size, min_value=1)
        super().__init__(lengths, mega_batch=mega_batch, noise=noise, shuffle=shuffle,
                         longest_first=longest_first, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank, remainder=remainder)

    def _pools(self, perm_lengths):
        n = self.lengths.size
        return (self.mega_batch * self.batch_size if self.mega_batch else n), None

    def _cut(self, sorted_lengths, pool_bounds):
        # Pools hold whole batches, so cutting the concatenation every batch_size is exact.
        n = int(pool_bounds[-1])
        starts = np.append(np.arange(0, n, self.batch_size), n)
        short = np.zeros(starts.size - 1, dtype=bool)
        short[-1] = n % self.batch_size != 0
        return starts, short

    def __len__(self) -> int:
        # Arithmetic, so a DataLoader can ask before the epoch is built.
        n, bs, R = self.lengths.size, self.batch_size, self.num_replicas
        nb = n // bs + int(n % bs != 0 and not self.drop_last)
        return -(-nb // R) if self.remainder == "pad" and nb else nb // R


def bucket_epoch_reference(lengths: Sequence[int] | np.ndarray, batch_size: int, *, mega_batch: int | None = 50,
                           seed: int = 0, epoch: int = 0, shuffle: bool = True,
                           drop_last: bool = False) -> list[list[int]]:
    """The definition of one :class:`BucketBatchSampler` epoch, one example at a time (for reading).

    One rank, no noise, no ``longest_first``. Each example draws a 64-bit random key; the
    permutation sorts by it (ties by index). Pools of ``mega_batch x batch_size`` consecutive
    examples are sorted by length (ties keep their shuffled order) and cut every ``batch_size``;
    then the batches are shuffled. The sampler's bit-packed fast path gives the same batches
    from the same ``(seed, epoch)``, batch for batch (it compares only the top ``64 - 40`` or more
    bits of each key, so two keys would have to agree on those to tell the two apart).
    """
    lengths = check_lengths("lengths", lengths).tolist()
    batch_size = check_int("batch_size", batch_size, min_value=1)
    mega_batch = _check_mega_batch(mega_batch)
    rng = np.random.default_rng((check_int("seed", seed, min_value=0), check_int("epoch", epoch, min_value=0)))
    n = len(lengths)
    order = list(range(n))
    if check_bool("shuffle", shuffle):
        keys = rng.bit_generator.random_raw(n).tolist()
        order.sort(key=lambda i: keys[i])  # a random permutation (sort is stable: ties by index)
    pool = mega_batch * batch_size if mega_batch else n
    order = [i for a in range(0, n, pool) for i in sorted(order[a:a + pool], key=lambda i: lengths[i])]
    batches = [order[a:a + batch_size] for a in range(0, n, batch_size)]
    if check_bool("drop_last", drop_last) and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


class TokenBudgetBatchSampler(_LengthGroupedSampler):
    """Variable-size batches with ``rows x longest <= max_tokens`` (fairseq's ``max_tokens``).

    * Pools hold ``mega_batch x max_tokens`` real tokens of the permuted examples;
      ``mega_batch=None`` (or 0) sorts everything (fairseq's behaviour).
    * Each sorted pool is cut greedily: a batch takes rows while ``rows x longest`` (over
      real lengths, even when sorting used noisy ones) stays within ``max_tokens`` and
      rows stay within ``max_batch_size``.
    * A sequence longer than ``max_tokens`` can never fit: ``oversized="error"`` (default)
      refuses such lengths at construction; ``oversized="skip"`` leaves them out of every
      epoch and counts them in ``last_epoch_stats.dropped`` (fairseq's
      ``skip_invalid_size_inputs_valid_test``).
    * ``drop_last`` drops each pool's last batch when it is not full (one more row of its
      own width would still have fitted): the analogue of a short fixed-size batch.
    * ``len(sampler)`` builds the current epoch's plan (the count varies with the epoch).
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, max_tokens: int, *, mega_batch: int | None = 50,
                 noise: float = 0.0, shuffle: bool = True, longest_first: bool = False,
                 max_batch_size: int | None = None, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, remainder: str = "pad", drop_last: bool = False,
                 oversized: str = "error") -> None:
        self.max_tokens = check_int("max_tokens", max_tokens, min_value=1)
        self.max_batch_size = check_int("max_batch_size", max_batch_size, min_value=1, allow_none=True)
        self.oversized = check_choice("oversized", oversized, OVERSIZED)
        super().__init__(lengths, mega_batch=mega_batch, noise=noise, shuffle=shuffle,
                         longest_first=longest_first, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank, remainder=remainder)
        too_long = self.lengths > self.max_tokens
        if too_long.any():
            if self.oversized == "error":
                i = int(np.argmax(self.lengths))
                raise fail("max_tokens", self.max_tokens,
                           f"be >= the longest sequence ({int(self.lengths[i])} tokens at index {i}), "
                           "or pass oversized='skip'")
            self._candidates = np.flatnonzero(~too_long)

    def _pools(self, perm_lengths):
        m = perm_lengths.size
        if not self.mega_batch or m == 0:
            return None, np.array([0, m])
        before = np.cumsum(perm_lengths, dtype=np.int64)
        before -= perm_lengths  # tokens ahead of each example
        size = self.mega_batch * self.max_tokens
        # A pool starts at the first example with at least k * size tokens ahead of it.
        cuts = np.unique(np.searchsorted(before, np.arange(size, int(before[-1]) + 1, size), side="left"))
        return None, np.concatenate([[0], cuts[(cuts > 0) & (cuts < m)], [m]]).astype(np.int64)

    _POOLS_NEED_LENGTHS = True

    def _needs_sorted_lengths(self) -> bool:
        return True

    def _cut(self, sorted_lengths, pool_bounds):
        T = self.max_tokens
        lens = sorted_lengths.astype(np.int64)
        m = lens.size
        cap = self.max_batch_size or max(m, 1)
        if self.noise == 0.0:
            starts = self._greedy_sorted(lens, pool_bounds, T, cap)
        else:
            starts = self._greedy_noisy(lens, pool_bounds, T, cap)
        sizes = np.diff(starts)
        width = np.maximum.reduceat(lens, starts[:-1]) if m else lens
        at_pool_end = np.isin(starts[1:], pool_bounds[1:])
        short = at_pool_end & (sizes < cap) & ((sizes + 1) * width <= T)
        return starts, short

    @staticmethod
    def _greedy_sorted(lens: np.ndarray, bounds: np.ndarray, T: int, cap: int) -> np.ndarray:
        """Greedy cuts over pools sorted by real length, without a loop over examples.

        In a sorted pool the batch ``[s, e)`` is ``e - s`` rows of width ``lens[e-1]``, so it
        fits iff ``s >= need(e) = e - T // lens[e-1]``. ``need`` rises with ``e`` within a
        pool; clamped to the pool's start it rises over the whole array, so one
        ``searchsorted`` gives every start its greedy end, and the walk from batch to
        batch is a loop over batches only.
        """
        m = lens.size
        if m == 0:
            return np.zeros(1, dtype=np.int64)
        # T // lens through a table of the few distinct lengths: integer division is slow.
        need = np.arange(1, m + 1)
        need -= (T // np.arange(1, int(lens.max()) + 1))[lens - 1]
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):  # a loop over pools
            # need(e) >= e - T, so only a pool's first T positions can fall below its start.
            head = need[a:min(b, a + T)]
            np.maximum(head, a, out=head)
        # need is non-decreasing and in [0, m): counting values <= s gives every greedy end.
        nxt = np.cumsum(np.bincount(need, minlength=m))
        if cap < m:
            np.minimum(nxt, np.arange(cap, m + cap), out=nxt)
        heads, ends = bounds[:-1], bounds[1:]
        if len(heads) == 1:
            starts, s = [0], 0
            while s < m:  # a loop over batches
                s = int(nxt[s])
                starts.append(s)
            return np.array(starts, dtype=np.int64)
        # Several pools: walk them all in step, one vectorised hop per batch of a pool.
        live = heads < ends
        cur, ends = heads[live], ends[live]
        found = []
        while cur.size:
            found.append(cur)
            cur = nxt[cur]
            live = cur < ends
            cur, ends = cur[live], ends[live]
        return np.sort(np.concatenate(found + [np.array([m])]))

    @staticmethod
    def _greedy_noisy(lens: np.ndarray, bounds: np.ndarray, T: int, cap: int) -> np.ndarray:
        """Greedy cuts when the sort used noisy lengths: a batch's width is its running max."""
        starts = [0]
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            s = a
            while s < b:  # a loop over batches, each a few vectorised steps
                # A batch is at least as wide as its first row, so it holds at most T // first rows.
                w = min(T // int(lens[s]), b - s, cap)
                cost = np.maximum.accumulate(lens[s:s + w]) * np.arange(1, w + 1)
                s += int(np.searchsorted(cost, T, side="right"))
                starts.append(s)
        return np.array(starts, dtype=np.int64)


# ------------------------------------------------------------------------- inference

def restore_order(values: Any, order: Any) -> Any:
    """Put per-example ``values`` computed in ``order`` back into dataset order.

    ``order`` is the concatenation of the index batches that were run (e.g.
    ``np.concatenate(batches)``) and must be a permutation of ``range(len(values))``;
    ``values[k]`` belongs to example ``order[k]``. ``values`` may be a list, a NumPy array
    or a torch tensor (first dimension aligned with ``order``); the result has the same
    type, and ``values`` is not modified.
    """
    idx = np.asarray(order)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise fail("order", order, "be a 1-D sequence of integer indices")
    idx = idx.astype(np.int64, copy=False)  # an empty list arrives as float64
    try:
        n = len(values)
    except TypeError:
        raise fail("values", values, "be a list, NumPy array or tensor") from None
    if n != idx.size:
        raise fail("order", order, f"have one index per value ({n} values, {idx.size} indices)")
    seen = np.zeros(n, dtype=bool)
    if n and (idx.min() < 0 or idx.max() >= n):
        raise fail("order", order, f"hold indices in [0, {n})")
    seen[idx] = True
    if not seen.all():
        raise fail("order", order, "be a permutation of range(len(values)) (an index repeats)")
    inverse = np.empty(n, dtype=np.int64)
    inverse[idx] = np.arange(n)
    if isinstance(values, np.ndarray):
        return values[inverse]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(values, torch.Tensor):
        return values[torch.as_tensor(inverse, device=values.device)]
    if isinstance(values, (list, tuple)):
        out = [values[i] for i in inverse.tolist()]
        return type(values)(out) if isinstance(values, tuple) else out
    raise fail("values", values, "be a list, tuple, NumPy array or tensor")


def sorted_inference_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, *,
                             descending: bool = True) -> list[np.ndarray]:
    """Inference batches over fully sorted lengths (no shuffle): the least padding there is.

    Longest first by default, so an out-of-memory error shows on the first batch. Feed
    the model batch by batch, then ``restore_order(outputs, np.concatenate(batches))``.
    """
    lengths = check_lengths("lengths", lengths)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    descending = check_bool("descending", descending)
    key = -lengths if descending else lengths
    order = np.argsort(key, kind="stable")
    return np.split(order, np.arange(batch_size, order.size, batch_size))
