"""Sequence packing: several whole sequences share one row, and nothing leaks between them.

Packing treats rows as bins of ``capacity`` tokens and sequences as items. Two algorithms:

* ``"ffd"``, first-fit-decreasing: take sequences longest first (ties in index order) and put each
  into the first pack that still has room, opening a new pack when none has.
* ``"spfhp"``, shortest-pack-first histogram-packing (Krell et al., arXiv:2107.02027): walk the
  length histogram from longest to shortest; each sequence goes into the open pack with the
  *most* room left that still fits it (the shortest pack, hence the name), else into a new pack.

``first_fit_decreasing_reference`` is FFD's definition in a dozen plain lines, one sequence at
a time; the fast path is tested equal to it, pack for pack.

Both work on the histogram of lengths, not on single sequences: all sequences of one length are
placed in bulk (``count x pack``), so the Python work grows with ``capacity`` and the number of
distinct pack states, not with the number of sequences; turning the result into indices is
vectorised. Sequences stay whole; one longer than ``capacity`` is refused unless
``truncation=True``, which keeps its first ``capacity`` tokens and counts the rest.

:class:`PackedCollator` turns packs of examples into one row per pack, with position ids that
restart at each sequence, per-token sequence ids, ``cu_seqlens`` offsets (the flash-attention
varlen convention) and a block-diagonal attention mask. A plain ``DataLoader`` drives it through
:class:`PackedDataset`, whose items are packs (lists of examples)::

    from torch.utils.data import DataLoader
    corpus = load_corpus("wordnet")
    result = pack(corpus.lengths, 256, algorithm="spfhp").validate()
    loader = DataLoader(PackedDataset(corpus, result), batch_size=8, shuffle=True,
                        collate_fn=PackedCollator(256))
    batch = next(iter(loader))   # input_ids 8 x 256, block_mask 8 x 256 x 256, cu_seqlens, ...

The packing itself is fixed; ``shuffle=True`` reorders whole packs each epoch. Both algorithms
are deterministic in the lengths: packing a permuted dataset (``corpus.select(perm)``) trades
sequences of equal length between packs, but the pack shapes stay the same.
"""
from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ._sequences import as_int_array, check_list, is_per_token, stack_scalars
from ._validate import check_bool, check_choice, check_int, check_lengths, fail

ALGORITHMS = ("ffd", "spfhp")

__all__ = ["ALGORITHMS", "PackResult", "pack", "first_fit_decreasing", "first_fit_decreasing_reference",
           "shortest_pack_first_histogram",
           "PackedCollator", "PackedDataset"]


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PackResult:
    """Which sequences share each pack, stored flat.

    ``indices[offsets[p]:offsets[p + 1]]`` are the sequences of pack ``p`` (indices into the
    caller's ``lengths``), in the order they sit in the row. ``lengths`` are the kept lengths
    (after truncation); ``truncated_tokens`` counts what truncation dropped.
    """

    indices: np.ndarray
    offsets: np.ndarray
    capacity: int
    lengths: np.ndarray
    truncated_tokens: int = 0
    max_per_pack: int | None = None
    algorithm: str = ""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_packs(cls, packs: Sequence[Sequence[int]], lengths: Any, capacity: int, *,
                   max_per_pack: int | None = None, algorithm: str = "") -> "PackResult":
        """Build a result from explicit packs (lists of indices); call :meth:`validate` to check it."""
        capacity = check_int("capacity", capacity, min_value=1)
        packs = [np.asarray(p, dtype=np.int64).reshape(-1) for p in packs]
        sizes = np.array([p.size for p in packs], dtype=np.int64)
        offsets = np.zeros(len(packs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.concatenate(packs) if packs else np.zeros(0, dtype=np.int64)
        lengths = np.array(lengths, dtype=np.int64)
        for a in (flat, offsets, lengths):
            a.setflags(write=False)
        return cls(flat, offsets, capacity, lengths, 0, max_per_pack, algorithm)

    @property
    def n_packs(self) -> int:
        """Number of packs (rows)."""
        return int(self.offsets.size - 1)

    @property
    def packs(self) -> list[np.ndarray]:
        """One array of sequence indices per pack (read-only views of :attr:`indices`)."""
        if "packs" not in self._cache:
            # Plain slicing: np.split builds the same views about three times slower.
            ends = self.offsets.tolist()
            self._cache["packs"] = [self.indices[i:j] for i, j in zip(ends[:-1], ends[1:])]
        return self._cache["packs"]

    @property
    def pack_sizes(self) -> np.ndarray:
        """Sequences per pack."""
        return np.diff(self.offsets)

    @property
    def pack_tokens(self) -> np.ndarray:
        """Kept tokens per pack."""
        if self.n_packs == 0:
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(self.lengths[self.indices], self.offsets[:-1])

    @property
    def efficiency(self) -> float:
        """Kept tokens over ``n_packs x capacity``: the share of the packed rows that is real."""
        if self.n_packs == 0:
            return float("nan")
        return float(self.lengths.sum()) / (self.n_packs * self.capacity)

    def validate(self, n: int | None = None) -> "PackResult":
        """Check a full assignment of ``n`` sequences (default: ``len(lengths)``); return ``self``.

        Every index in ``0..n-1`` in exactly one pack, no empty pack, no pack over ``capacity``
        tokens, and no pack over ``max_per_pack`` sequences. Raises ``AssertionError`` naming
        the first offence.
        """
        n = self.lengths.size if n is None else check_int("n", n, min_value=0)
        idx, off = self.indices, self.offsets
        # Explicit raises, not assert statements: the check must survive python -O.
        if self.lengths.size != n:
            raise AssertionError(f"lengths holds {self.lengths.size} sequences, expected {n}")
        if not (off.ndim == 1 and off.size >= 1 and off[0] == 0 and off[-1] == idx.size):
            raise AssertionError(f"offsets must run from 0 to len(indices)={idx.size}; "
                                 f"got {off[:3]}...{off[-3:]}")
        sizes = np.diff(off)
        if sizes.size and sizes.min() < 1:
            p = int(np.argmin(sizes))
            raise AssertionError(f"pack {p} is empty")
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= n:
                raise AssertionError(f"indices must lie in [0, {n}); found {lo if lo < 0 else hi}")
        # n indices in range that cover all n sequences: every sequence exactly once.
        seen = np.zeros(n, dtype=bool)
        seen[idx] = True
        if idx.size != n or not seen.all():
            counts = np.bincount(idx, minlength=n)  # only on failure: say what is wrong
            if idx.size and counts.max() > 1:
                i = int(np.argmax(counts > 1))
                raise AssertionError(f"sequence {i} is in {int(counts[i])} packs")
            raise AssertionError(f"{idx.size} sequences are assigned, expected {n}")
        if n == 0:
            return self
        tokens = self.pack_tokens
        if tokens.max() > self.capacity:
            p = int(np.argmax(tokens > self.capacity))
            raise AssertionError(f"pack {p} holds {int(tokens[p])} tokens > capacity {self.capacity}: "
                                 f"sequences {self.indices[off[p]:off[p + 1]].tolist()[:20]}")
        if self.max_per_pack is not None and sizes.max() > self.max_per_pack:
            p = int(np.argmax(sizes > self.max_per_pack))
            raise AssertionError(f"pack {p} holds {int(sizes[p])} sequences > max_per_pack {self.max_per_pack}")
        return self


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _prepare(lengths: Any, capacity: Any, max_per_pack: Any, truncation: Any
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int | None, int]:
    """Kept lengths (a fresh int64 array), length classes and counts, capacity, max_per_pack, truncated tokens."""
    capacity = check_int("capacity", capacity, min_value=1)
    max_per_pack = check_int("max_per_pack", max_per_pack, min_value=1, allow_none=True)
    truncation = check_bool("truncation", truncation)
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    arr = check_lengths("lengths", lengths)  # a fresh copy: the result must not alias the caller's array
    truncated = 0
    if int(arr.max()) > capacity:
        if not truncation:
            i = int(np.argmax(arr > capacity))
            raise fail(f"lengths[{i}]", int(arr[i]),
                       f"be at most capacity={capacity} (pass truncation=True to cut it)")
        over = arr[arr > capacity]
        truncated = int(over.sum()) - capacity * over.size
        kept = np.minimum(arr, capacity)
    else:
        kept = arr  # already a private, read-only copy
    # The length classes and their counts (what both algorithms work on).
    if kept.max() <= 1 << 22:
        hist = np.bincount(kept)
        values = np.flatnonzero(hist)
        counts = hist[values]
    else:  # huge capacities: a histogram would not fit in memory
        values, counts = np.unique(kept, return_counts=True)
    return kept, values, counts, capacity, max_per_pack, truncated


# ---------------------------------------------------------------------------------------------
# Bulk placements ("events") -> flat indices, shared by both algorithms
# ---------------------------------------------------------------------------------------------
# An event (L, start, count, k, before) says: packs start .. start+count-1 each receive k sequences
# of length L, at positions before .. before+k-1 of their row. Both algorithms emit events
# in order of decreasing L and, within one L, in increasing pack order.

def _class_order(kept: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices grouped by length class (``values``, ascending), each class in index order.

    A stable counting sort, done in whichever way numpy makes fastest: its stable sort is a
    radix sort for one- and two-byte keys (one pass per byte), and its plain sort of 32-bit
    integers is vectorised; so up to 256 classes sort as one-byte keys, and more sort as
    32-bit words ``class << b | index`` (unique, hence stable), in chunks of ``2**b`` indices
    whose class slices are then laid side by side.
    """
    n_classes = values.size
    if values[-1] < 256:
        return np.argsort(kept.astype(np.uint8), kind="stable")
    if values[-1] < 1 << 22:
        lut = np.zeros(int(values[-1]) + 1, dtype=np.uint32)
        lut[values] = np.arange(n_classes, dtype=np.uint32)
        key = lut[kept]
    else:
        key = np.searchsorted(values, kept).astype(np.uint32)
    if n_classes <= 256:
        return np.argsort(key.astype(np.uint8), kind="stable")
    bits = 32 - int(n_classes - 1).bit_length()
    chunk = 1 << bits
    n_chunks = -(-kept.size // chunk)
    if bits < 16 or n_classes * n_chunks > 8192:
        return np.argsort(key, kind="stable")
    probe = np.arange(n_classes, dtype=np.uint32) << np.uint32(bits)
    parts = []
    for s in range(0, kept.size, chunk):
        word = key[s:s + chunk] << np.uint32(bits)
        word |= np.arange(word.size, dtype=np.uint32)
        word.sort()
        bounds = np.append(np.searchsorted(word, probe), word.size)
        word &= np.uint32(chunk - 1)
        parts.append((word, s, bounds))
    order = np.empty(kept.size, dtype=np.int64)
    pos = 0
    for c in range(n_classes):
        for word, s, bounds in parts:
            lo, hi = bounds[c], bounds[c + 1]
            if hi > lo:
                seg = order[pos:pos + hi - lo]
                seg[:] = word[lo:hi]
                seg += s
                pos += hi - lo
    return order


def _expand(events: list[tuple[int, int, int, int, int]], n_packs: int, kept: np.ndarray,
            values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and pack offsets from the events, without a loop over sequences.

    Sequences of one length are handed to that length's events in index order, so FFD gets the
    textbook tie-break (equal lengths in index order, first pack first).
    """
    n = kept.size
    it = np.int32 if n < 2 ** 31 else np.int64  # half the memory traffic where it suffices
    ev = np.array(events, dtype=np.int64).reshape(-1, 5)
    L, start, count, k, before = ev.T
    # Sequences per pack from a difference array over the event ranges, then their offsets.
    step = np.zeros(n_packs + 1, dtype=np.int64)
    np.add.at(step, start, k)
    np.add.at(step, start + count, -k)
    offsets = np.zeros(n_packs + 1, dtype=np.int64)
    np.cumsum(np.cumsum(step[:-1]), out=offsets[1:])

    # Lay the slots out in the order of the length-sorted indices: events by increasing length
    # (stable, so one length's events keep pack order), each event pack-major. Then slot s takes
    # sorted index s, and only each slot's place in the flat output needs computing.
    o = np.argsort(L, kind="stable")
    start, count, k, before = start[o], count[o], k[o], before[o]
    slots = count * k
    # One "row" per (event, pack): k consecutive slots, all shifted by the same amount.
    row_ev = np.repeat(np.arange(o.size, dtype=it), count)
    row_j = np.arange(row_ev.size, dtype=it) - np.repeat((np.cumsum(count) - count).astype(it), count)
    row_k = k.astype(it)[row_ev]
    shift = (offsets[start[row_ev] + row_j] + before[row_ev] - (np.cumsum(slots) - slots)[row_ev]).astype(it)
    shift -= row_j * row_k
    dest = np.repeat(shift, row_k)
    dest += np.arange(n, dtype=it)
    order = _class_order(kept, values)
    flat = np.empty(n, dtype=np.int64)
    flat[dest] = order
    return flat, offsets


def _result(events, n_packs, kept, values, capacity, max_per_pack, truncated, algorithm) -> PackResult:
    flat, offsets = _expand(events, n_packs, kept, values)
    for a in (flat, offsets, kept):
        a.setflags(write=False)  # packs are views of flat; nobody should edit a result in place
    return PackResult(flat, offsets, capacity, kept, truncated, max_per_pack, algorithm)


# ---------------------------------------------------------------------------------------------
# First-fit-decreasing over length classes
# ---------------------------------------------------------------------------------------------

def _ffd_events(values: np.ndarray, counts: np.ndarray, capacity: int, limit: int | None) -> tuple[list, int]:
    """FFD on a histogram, one length class at a time.

    Packs live in runs of consecutive packs in the same state (room, size). Every pack of a run
    takes the same number of sequences of the current length, so first fit handles a whole run
    in one step, splitting at most one run per length. To find the first run (lowest pack) that
    fits without scanning them all, runs sit in heaps by the largest length class their room
    holds, under a segment tree that answers "lowest start among classes >= i".
    """
    lim = limit if limit is not None else np.iinfo(np.int64).max
    vals = values.tolist()
    K = len(vals)
    size = 1 << max(1, (K - 1).bit_length())
    INF = float("inf")
    tree = [INF] * (2 * size)       # leaf j: start * size + j of the lowest run in heap j
    heaps: list[list[tuple[int, int, int, int]]] = [[] for _ in range(K)]
    events: list[tuple[int, int, int, int, int]] = []
    n_packs = 0

    def refresh(j: int) -> None:
        h = heaps[j]
        p = j + size
        tree[p] = h[0][0] * size + j if h else INF
        p >>= 1
        while p:
            a, b = tree[2 * p], tree[2 * p + 1]
            tree[p] = a if a < b else b
            p >>= 1

    def lowest_from(i: int):
        lo, hi, best = i + size, K + size, INF
        while lo < hi:
            if lo & 1:
                best = min(best, tree[lo])
                lo += 1
            if hi & 1:
                hi -= 1
                best = min(best, tree[hi])
            lo >>= 1
            hi >>= 1
        return best

    def put(start: int, end: int, room: int, n: int) -> None:
        if room < vals[0] or n >= lim:
            return  # closed for good: its contents are already recorded in events
        j = bisect.bisect_right(vals, room) - 1
        heapq.heappush(heaps[j], (start, end, room, n))
        if heaps[j][0][0] == start:
            refresh(j)

    for i in range(K - 1, -1, -1):
        L, c = vals[i], int(counts[i])
        while c:
            key = lowest_from(i)
            if key == INF:
                break
            j = key % size
            s, e, room, n = heapq.heappop(heaps[j])
            refresh(j)
            k = min(room // L, lim - n)
            if (e - s) * k <= c:
                events.append((L, s, e - s, k, n))
                c -= (e - s) * k
                put(s, e, room - k * L, n + k)
                continue
            q, rest = divmod(c, k)
            if q:
                events.append((L, s, q, k, n))
                put(s, s + q, room - k * L, n + k)
            if rest:
                events.append((L, s + q, 1, rest, n))
                put(s + q, s + q + 1, room - rest * L, n + rest)
            tail = s + q + (1 if rest else 0)
            if tail < e:
                put(tail, e, room, n)
            c = 0
        if c:
            k = min(capacity // L, lim)
            q, rest = divmod(c, k)
            if q:
                events.append((L, n_packs, q, k, 0))
                put(n_packs, n_packs + q, capacity - k * L, k)
                n_packs += q
            if rest:
                events.append((L, n_packs, 1, rest, 0))
                put(n_packs, n_packs + 1, capacity - rest * L, rest)
                n_packs += 1
    return events, n_packs


def first_fit_decreasing(lengths: Any, capacity: int, *, max_per_pack: int | None = None,
                         truncation: bool = False) -> PackResult:
    """First-fit-decreasing: longest first (ties in index order), each into the first pack with room.

    ``max_per_pack`` also closes a pack once it holds that many sequences. Equal to the textbook
    one-sequence-at-a-time FFD, pack for pack, but computed over length classes.
    """
    kept, values, counts, capacity, max_per_pack, truncated = _prepare(lengths, capacity, max_per_pack, truncation)
    events, n_packs = _ffd_events(values, counts, capacity, max_per_pack)
    return _result(events, n_packs, kept, values, capacity, max_per_pack, truncated, "ffd")


def first_fit_decreasing_reference(lengths: Any, capacity: int, *,
                                   max_per_pack: int | None = None) -> list[list[int]]:
    """The definition of first-fit-decreasing, one sequence at a time (O(n x packs); for reading).

    Sequences are taken longest first (ties in index order); each goes into the first open pack
    that has room for it (and fewer than ``max_per_pack`` sequences), else opens a new pack.
    Returns the packs as lists of indices. :func:`first_fit_decreasing` gives the same packs,
    pack for pack, working on length classes instead of single sequences.
    """
    lengths = check_lengths("lengths", lengths).tolist()
    capacity = check_int("capacity", capacity, min_value=1)
    max_per_pack = check_int("max_per_pack", max_per_pack, min_value=1, allow_none=True)
    if max(lengths) > capacity:
        raise fail("lengths", lengths, f"be at most capacity={capacity} each")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep index order
        for p in range(len(packs)):
            if room[p] >= lengths[i] and (max_per_pack is None or len(packs[p]) < max_per_pack):
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:  # no open pack has room
            packs.append([i])
            room.append(capacity - lengths[i])
    return packs


# ---------------------------------------------------------------------------------------------
# Shortest-pack-first histogram-packing (arXiv:2107.02027)
# ---------------------------------------------------------------------------------------------

# A pack's contents, appended to in O(1): a chain of (length, run count, sequences in all, parent)
# nodes, one per run of equal lengths, newest run first; sibling strategies share their prefix.
_Node = tuple  # (int, int, int, _Node | None)


def _append(node: _Node | None, L: int, k: int) -> _Node:
    if node is not None and node[0] == L:
        return (L, node[1] + k, node[2] + k, node[3])
    return (L, k, (node[2] if node else 0) + k, node)


def _spfhp_strategies(values: np.ndarray, counts: np.ndarray, capacity: int, limit: int | None
                      ) -> list[tuple[int, _Node]]:
    """SPFHP on a histogram: a list of ``(repeat count, pack contents)`` strategies."""
    lim = limit if limit is not None else np.iinfo(np.int64).max
    min_len = int(values[0])
    done: list[tuple[int, _Node]] = []
    # Open strategies keyed by the room they leave; each key holds a stack [count, contents].
    open_: dict[int, list[list]] = {}
    keys: list[int] = []  # the rooms in open_, ascending

    def add(count: int, lengths: _Node, room: int) -> None:
        if room < min_len or lengths[2] >= lim:
            done.append((count, lengths))
            return
        if room not in open_:
            open_[room] = []
            bisect.insort(keys, room)
        open_[room].append([count, lengths])

    for L, c in zip(values[::-1].tolist(), counts[::-1].tolist()):
        j = len(keys) - 1
        # Most room first: the shortest pack that still fits takes the sequence.
        while c and j >= 0 and keys[j] >= L:
            room = keys[j]
            stack = open_[room]
            top = stack[-1]
            m = min(top[0], c)
            if m == top[0]:
                stack.pop()
                if not stack:
                    del open_[room]
                    keys.pop(j)
            else:
                top[0] -= m
            add(m, _append(top[1], L, 1), room - L)
            c -= m
            # The next candidate: the largest open room <= this one (add() may have made one).
            j = bisect.bisect_right(keys, room) - 1
        if c:
            # No open pack fits: as one-at-a-time SPFHP would, fill each new pack with this
            # length until it is full (a new pack has the most room, so it takes the next one too).
            k = min(capacity // L, lim)
            q, rest = divmod(c, k)
            if q:
                add(q, _append(None, L, k), capacity - k * L)
            if rest:
                add(1, _append(None, L, rest), capacity - rest * L)
    for stack in open_.values():
        done.extend((cnt, t) for cnt, t in stack)
    return done


def _strategy_events(strategies: list[tuple[int, _Node]]) -> tuple[list, int]:
    events: list[tuple[int, int, int, int, int]] = []
    n_packs = 0
    for count, node in strategies:
        # Each run of equal lengths is one event; the chain lists runs newest first.
        while node is not None:
            L, k, n, node = node
            events.append((L, n_packs, count, k, n - k))
        n_packs += count
    # Starts grow along the list, so within each length the events are already in pack order.
    return events, n_packs


def shortest_pack_first_histogram(lengths: Any, capacity: int, *, max_per_pack: int | None = None,
                                  truncation: bool = False) -> PackResult:
    """Shortest-pack-first histogram-packing (SPFHP, Krell et al. 2021, arXiv:2107.02027).

    Lengths are taken from the histogram, longest first. Open packs are kept as strategies
    ``(repeat count, lengths)`` keyed by the room they leave; all sequences of one length go,
    in bulk, into the open strategies with the most room that fits (the shortest packs), a
    strategy being split when fewer sequences remain than it has repeats. What no open pack
    takes starts new packs. ``max_per_pack`` closes a pack at that many sequences (the paper
    uses 3 for Wikipedia at 512).

    One deliberate difference from the paper's reference code: there, each leftover sequence
    of a length opens its own pack; here new packs are filled with that length as far as they
    fit, which is what placing the sequences one at a time by the same rule gives.
    """
    kept, values, counts, capacity, max_per_pack, truncated = _prepare(lengths, capacity, max_per_pack, truncation)
    events, n_packs = _strategy_events(_spfhp_strategies(values, counts, capacity, max_per_pack))
    return _result(events, n_packs, kept, values, capacity, max_per_pack, truncated, "spfhp")


def pack(lengths: Any, capacity: int, *, algorithm: str = "ffd", max_per_pack: int | None = None,
         truncation: bool = False) -> PackResult:
    """Pack sequences of ``lengths`` tokens into rows of ``capacity`` tokens.

    ``algorithm`` is ``"ffd"`` (:func:`first_fit_decreasing`) or ``"spfhp"``
    (:func:`shortest_pack_first_histogram`). A sequence longer than ``capacity`` is an error
    unless ``truncation=True`` (it then keeps ``capacity`` tokens; the result counts the rest).
    """
    check_choice("algorithm", algorithm, ALGORITHMS)
    fn = first_fit_decreasing if algorithm == "ffd" else shortest_pack_first_histogram
    return fn(lengths, capacity, max_per_pack=max_per_pack, truncation=truncation)


# ---------------------------------------------------------------------------------------------
# Dataset and collator
# ---------------------------------------------------------------------------------------------

class PackedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose item ``p`` is pack ``p``: the list ``[dataset[i] for i in pack]``.

    ``packs`` is a :class:`PackResult` or a sequence of index arrays. Use it with
    ``DataLoader(..., batch_size=packs_per_batch, collate_fn=PackedCollator(capacity))``.
    """

    def __init__(self, dataset: Any, packs: PackResult | Sequence[Sequence[int]]) -> None:
        try:
            n = len(dataset)
        except TypeError:
            raise fail("dataset", dataset, "be a map-style dataset with a length") from None
        plist = packs.packs if isinstance(packs, PackResult) else [np.asarray(p) for p in packs]
        if not plist:
            raise fail("packs", packs, "hold at least one pack")
        for p, idx in enumerate(plist):
            if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer) \
                    or idx.min() < 0 or idx.max() >= n:
                raise fail(f"packs[{p}]", idx, f"be a non-empty list of indices in [0, {n})")
        self.dataset = dataset
        self.packs = [tuple(int(i) for i in idx) for idx in plist]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, p: int) -> list[Any]:
        p = check_int("p", p)
        if not -len(self) <= p < len(self):
            raise fail("p", p, f"be in [-{len(self)}, {len(self)})")
        return [self.dataset[i] for i in self.packs[p]]


class PackedCollator:
    """A ``collate_fn`` that turns a list of packs into one row per pack.

    A pack is a list of examples; an example is a dict with ``"input_ids"`` and optional
    ``"labels"`` (one int per sequence, or a per-token list as long as its ids), or a plain
    sequence of ids. Every example of a batch has the same form. The result (``P`` packs,
    ``C = capacity``, ``S`` sequences in all, numbered pack by pack):

    * ``input_ids`` (long, P x C): sequences back to back from column 0, then ``pad_id``;
    * ``attention_mask`` (long, P x C): 1 on real tokens;
    * ``position_ids`` (long, P x C): ``0..len-1`` within each sequence, 0 on pads;
    * ``seq_ids`` (long, P x C): which sequence of its row a token belongs to (0, 1, ...), -1 on pads;
    * ``block_mask`` (bool, P x C x C, if ``return_block_mask``): ``[p, q, k]`` is True when query
      ``q`` may attend to key ``k``: both in the same sequence. A pad query attends to itself only,
      so no softmax row is empty (an all-False row makes SDPA return NaN); pad outputs mean nothing.
    * ``cu_seqlens`` (int32, S + 1): sequence offsets in the unpadded concatenation
      ``input_ids[attention_mask.bool()]`` (flash-attention varlen convention);
    * ``max_seqlen``: the longest sequence, a Python ``int``: the one value that is not a tensor
      (an integer maximum that a varlen kernel reads on the host, so it needs no device sync);
    * ``seq_lengths`` (long, S); ``seq_starts`` (long, S): the flat index ``row * C + column`` of
      each sequence's first token, so ``hidden.flatten(0, 1)[seq_starts]`` pools the ``[CLS]`` tokens;
    * ``labels``: long (S,) for one label per sequence, or long P x C with ``ignore_index`` on pads
      for per-token labels (never shifted across a boundary, since each sequence keeps its own);
    * ``truncated_tokens`` (0-d long): what ``truncation=True`` dropped.

    With ``truncation=True`` a sequence longer than ``capacity`` keeps its first ``capacity`` tokens
    (the rule of ``pack(..., truncation=True)``); a pack whose sequences together exceed ``capacity`` is
    always an error.
    """

    def __init__(self, capacity: int, *, pad_id: int = 0, ignore_index: int = -100,
                 return_block_mask: bool = True, truncation: bool = False) -> None:
        self.capacity = check_int("capacity", capacity, min_value=1)
        self.pad_id = check_int("pad_id", pad_id, min_value=0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.return_block_mask = check_bool("return_block_mask", return_block_mask)
        self.truncation = check_bool("truncation", truncation)

    def __repr__(self) -> str:
        return (f"PackedCollator(capacity={self.capacity}, pad_id={self.pad_id}, "
                f"ignore_index={self.ignore_index}, return_block_mask={self.return_block_mask}, "
                f"truncation={self.truncation})")

    def __call__(self, packs: Sequence[Sequence[Any]]) -> dict[str, Any]:
        packs = check_list("packs", packs, items="packs (each a list of examples)", item="pack")
        examples, rows = [], []
        for p, pk in enumerate(packs):
            if isinstance(pk, (torch.Tensor, np.ndarray)) and pk.ndim < 2:
                raise fail(f"packs[{p}]", pk, "be a list of examples")
            pk = check_list(f"packs[{p}]", pk, items="examples", item="example")
            examples.extend(pk)
            rows.extend([p] * len(pk))
        names = [f"packs[{p}][{j}]" for p, pk in enumerate(packs) for j in range(len(pk))]
        dicts = [isinstance(e, Mapping) for e in examples]
        if any(dicts) and not all(dicts):
            i = dicts.index(not dicts[0])
            raise fail(names[i], examples[i], "be the same kind as the first example "
                       "(dict and plain-list examples cannot be mixed)")
        labels = None
        if dicts[0]:
            for i, e in enumerate(examples):
                if "input_ids" not in e:
                    raise fail(names[i], e, "have an 'input_ids' key")
                extra = set(e) - {"input_ids", "labels"}
                if extra:
                    raise fail(names[i], e, f"hold only 'input_ids' and 'labels' (not {sorted(extra)})")
                if ("labels" in e) != ("labels" in examples[0]):
                    raise fail(names[i], e, "have 'labels' exactly when the first example has")
            ids = [as_int_array(f"{names[i]}['input_ids']", e["input_ids"], allow_negative=False,
                                 allow_empty=False) for i, e in enumerate(examples)]
            if "labels" in examples[0]:
                labels = [e["labels"] for e in examples]
        else:
            ids = [as_int_array(names[i], e, allow_negative=False, allow_empty=False)
                   for i, e in enumerate(examples)]
        id_names = [f"{nm}['input_ids']" for nm in names] if dicts[0] else names
        return self._build(ids, np.asarray(rows, dtype=np.int64), len(packs), labels, names, id_names)

    def _build(self, ids: list[np.ndarray], rows: np.ndarray, n_rows: int, labels: list | None,
               names: list[str], id_names: list[str]) -> dict[str, Any]:
        C = self.capacity
        full = np.fromiter((a.size for a in ids), dtype=np.int64, count=len(ids))
        if full.max() > C and not self.truncation:
            i = int(np.argmax(full > C))
            raise fail(id_names[i], ids[i].tolist(),
                       f"have at most capacity={C} tokens (it has {int(full[i])}; pass truncation=True)")
        lens = np.minimum(full, C)
        per_row = np.bincount(rows, weights=lens, minlength=n_rows).astype(np.int64)
        if per_row.max() > C:
            p = int(np.argmax(per_row > C))
            raise fail(f"packs[{p}]", [a.tolist() for a, r in zip(ids, rows) if r == p],
                       f"fit in capacity={C} tokens (it holds {int(per_row[p])})")
        flat = np.concatenate([a[:C] for a in ids])
        S, T = lens.size, int(lens.sum())
        cu = np.zeros(S + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        row_first_tok = np.zeros(n_rows, dtype=np.int64)
        np.cumsum(per_row[:-1], out=row_first_tok[1:])
        first_seq = np.searchsorted(rows, np.arange(n_rows))  # rows are non-decreasing
        seq_col = cu[:-1] - row_first_tok[rows]              # column of each sequence's first token
        seq_local = np.arange(S) - first_seq[rows]           # its number within the row
        tok_seq_start = np.repeat(cu[:-1], lens)
        tok_pos = np.arange(T) - tok_seq_start
        tok_dest = np.repeat(rows * C + seq_col, lens) + tok_pos  # flat slot in the P x C tensor

        def grid(fill: int, values: np.ndarray) -> torch.Tensor:
            out = np.full(n_rows * C, fill, dtype=np.int64)
            out[tok_dest] = values
            return torch.from_numpy(out.reshape(n_rows, C))

        seq_ids = grid(-1, np.repeat(seq_local, lens))
        out: dict[str, Any] = {
            "input_ids": grid(self.pad_id, flat),
            "attention_mask": (seq_ids >= 0).long(),
            "position_ids": grid(0, tok_pos),
            "seq_ids": seq_ids,
        }
        if self.return_block_mask:
            same = seq_ids[:, :, None] == seq_ids[:, None, :]
            real_q = (seq_ids >= 0)[:, :, None]
            eye = torch.eye(C, dtype=torch.bool)[None]
            out["block_mask"] = (same & real_q) | (eye & ~real_q)
        out["cu_seqlens"] = torch.from_numpy(cu.astype(np.int32))
        out["max_seqlen"] = int(lens.max())
        out["seq_lengths"] = torch.from_numpy(lens.copy())
        out["seq_starts"] = torch.from_numpy(rows * C + seq_col)
        if labels is not None:
            out["labels"] = self._labels(labels, full, lens, grid, names)
        out["truncated_tokens"] = torch.tensor(int((full - lens).sum()))
        return out

    def _labels(self, labels: list, full: np.ndarray, lens: np.ndarray, grid, names: list[str]) -> torch.Tensor:
        per_token = [is_per_token(v) for v in labels]
        if not any(per_token):
            return stack_scalars("labels", labels)
        for i, v in enumerate(labels):
            if not per_token[i]:
                raise fail(f"{names[i]}['labels']", v, "be a per-token list like the other examples' labels")
        arrays = [as_int_array(f"{names[i]}['labels']", v, allow_negative=True, allow_empty=True)
                  for i, v in enumerate(labels)]
        for i, a in enumerate(arrays):
            if a.size != full[i]:
                raise fail(f"{names[i]}['labels']", labels[i],
                           f"have one label per input id ({int(full[i])}), not {a.size}")
        flat = np.concatenate([a[:k] for a, k in zip(arrays, lens.tolist())])
        return grid(self.ignore_index, flat)
