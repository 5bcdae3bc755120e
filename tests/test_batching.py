"""Tests for padlab.batching: hand-derived epochs, reference implementations, properties."""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import padlab.batching as batching
from padlab._validate import PadlabError
from padlab.batching import (BucketBatchSampler, EpochStats, TokenBudgetBatchSampler, bucket_epoch_reference,
                             restore_order, sorted_inference_batches)

PROPS = settings(max_examples=60, deadline=None)


@contextmanager
def path(general: bool):
    """Without noise the samplers take a packed uint64 path; ``general`` forces the other one."""
    saved = batching._PAYLOAD_BITS
    batching._PAYLOAD_BITS = 0 if general else saved
    try:
        yield
    finally:
        batching._PAYLOAD_BITS = saved


def as_lists(batches):
    return [np.asarray(b).tolist() for b in batches]


# ------------------------------------------------------------------ reference code
# Deliberately naive: Python loops over examples, obviously correct, independent of the
# vectorised kernels under test.

def ref_greedy(lens, T, cap, bounds):
    """Greedy token-budget cuts over ``lens`` in the given order, pools given by ``bounds``."""
    starts = [0]
    for a, b in zip(bounds[:-1], bounds[1:]):
        count, width = 0, 0
        for i in range(a, b):
            w = max(width, lens[i])
            if count and ((count + 1) * w > T or count == cap):
                starts.append(i)
                count, w = 0, lens[i]
            count, width = count + 1, w
        if b > a:
            starts.append(b)
    return starts


def ref_token_pools(lengths_in_order, T, mega_batch):
    """Pool bounds: a pool starts where k * mega_batch * T tokens lie ahead."""
    n = len(lengths_in_order)
    if not mega_batch:
        return [0, n]
    bounds, ahead, size = [0], 0, mega_batch * T
    for i, x in enumerate(lengths_in_order):
        if i and ahead // size != (ahead - lengths_in_order[i - 1]) // size:
            bounds.append(i)
        ahead += x
    return bounds + [n]


def ref_token_unshuffled(lengths, T, mega_batch, cap=None):
    bounds = ref_token_pools(list(lengths), T, mega_batch)
    order = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        order += sorted(range(a, b), key=lambda i: (lengths[i], i))
    starts = ref_greedy([lengths[i] for i in order], T, cap or len(lengths), bounds)
    return [order[a:b] for a, b in zip(starts[:-1], starts[1:])]


# ------------------------------------------------------------------ hand-derived epochs

def test_full_sort_by_hand():
    # lengths 5,1,4,2,3,6 sorted: idx 1(1) 3(2) 4(3) 2(4) 0(5) 5(6)
    s = BucketBatchSampler([5, 1, 4, 2, 3, 6], 2, mega_batch=None, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[1, 3], [4, 2], [0, 5]]
    assert len(s) == 3
    assert list(iter(s)) == [[1, 3], [4, 2], [0, 5]]
    assert s.last_epoch_stats == EpochStats(epoch=0, examples=6, batches=3, batches_per_rank=3,
                                            num_replicas=1, repeated=0, dropped=0)


def test_mega_batch_pools_by_hand():
    lengths = [5, 1, 4, 2, 3, 6]
    # mega_batch=1: pools {0,1} {2,3} {4,5}, each sorted: random batches, sorted inside.
    s = BucketBatchSampler(lengths, 2, mega_batch=1, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[1, 0], [3, 2], [4, 5]]
    # mega_batch=2: pools {0..3} -> 1,3,2,0 and {4,5}.
    s = BucketBatchSampler(lengths, 2, mega_batch=2, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[1, 3], [2, 0], [4, 5]]
    # mega_batch=0 is the same as None: one pool.
    assert as_lists(BucketBatchSampler(lengths, 2, mega_batch=0, shuffle=False).epoch_batches()) == \
        [[1, 3], [4, 2], [0, 5]]


def test_short_batch_drop_last_and_ties_by_hand():
    s = BucketBatchSampler([5, 1, 4, 2, 3], 2, mega_batch=None, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[1, 3], [4, 2], [0]]
    s = BucketBatchSampler([5, 1, 4, 2, 3], 2, mega_batch=None, shuffle=False, drop_last=True)
    assert as_lists(s.epoch_batches()) == [[1, 3], [4, 2]]
    assert len(s) == 2 and s.last_epoch_stats.dropped == 1
    # Ties keep index order when nothing is shuffled.
    assert as_lists(BucketBatchSampler([3, 3, 3, 1], 2, mega_batch=None, shuffle=False).epoch_batches()) == \
        [[3, 0], [1, 2]]


def test_longest_first_by_hand():
    s = BucketBatchSampler([5, 1, 4, 2, 3, 6], 2, mega_batch=None, shuffle=False, longest_first=True)
    assert as_lists(s.epoch_batches()) == [[0, 5], [1, 3], [4, 2]]


def test_longest_first_with_shuffle_puts_the_longest_first():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 100, 500)
    lengths[123] = 1000
    for seed in range(5):
        s = BucketBatchSampler(lengths, 8, seed=seed, longest_first=True)
        assert 123 in s.epoch_batches()[0].tolist()
    # negative control: without it, the longest batch is rarely first
    firsts = [123 in BucketBatchSampler(lengths, 8, seed=seed).epoch_batches()[0].tolist() for seed in range(5)]
    assert not all(firsts)


def test_token_budget_by_hand():
    lengths = [5, 1, 4, 2, 3, 6, 7, 1, 1, 1]
    # sorted: 1,7,8,9 (1) 3(2) 4(3) 2(4) 0(5) 5(6) 6(7); budget 12:
    # [1,7,8,9,3]: 5x2=10 (+4 would be 6x3=18); [4,2]: 2x4=8 (+0: 15); [0,5]: 2x6=12; [6].
    s = TokenBudgetBatchSampler(lengths, 12, mega_batch=None, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[1, 7, 8, 9, 3], [4, 2], [0, 5], [6]]
    assert len(s) == 4
    # max_batch_size=3: [1,7,8] [9,3,4] (3x3) [2,0] (2x5) [5] (+6: 2x7=14) [6]
    s = TokenBudgetBatchSampler(lengths, 12, mega_batch=None, shuffle=False, max_batch_size=3)
    assert as_lists(s.epoch_batches()) == [[1, 7, 8], [9, 3, 4], [2, 0], [5], [6]]


def test_token_budget_drop_last_by_hand():
    lengths = [5, 1, 4, 2, 3, 6, 7, 1, 1, 1]
    # budget 12: the last batch [6] is full (2 x 7 = 14 > 12): kept.
    s = TokenBudgetBatchSampler(lengths, 12, mega_batch=None, shuffle=False, drop_last=True)
    assert as_lists(s.epoch_batches())[-1] == [6]
    assert s.last_epoch_stats.dropped == 0
    # budget 14: same cuts, but [6] could take a second row of 7 (14 <= 14): dropped.
    s = TokenBudgetBatchSampler(lengths, 14, mega_batch=None, shuffle=False, drop_last=True)
    assert as_lists(s.epoch_batches()) == [[1, 7, 8, 9, 3], [4, 2], [0, 5]]
    assert s.last_epoch_stats.dropped == 1


def test_token_budget_pools_by_hand():
    # budget 6, mega_batch 1: a pool starts once 6, 12, ... tokens lie ahead.
    # lengths 3,3,1,2,4,1: ahead 0,3,6,7,9,13 -> pools [0,1] [2,3,4] [5]
    s = TokenBudgetBatchSampler([3, 3, 1, 2, 4, 1], 6, mega_batch=1, shuffle=False)
    # pool 1 sorted: 2(1) 3(2) 4(4): [2,3] 2x2=4 (+4: 3x4=12) ; [4]
    assert as_lists(s.epoch_batches()) == [[0, 1], [2, 3], [4], [5]]


def test_oversized_sequences():
    with pytest.raises(ValueError, match=r"max_tokens must be >= the longest sequence \(9 tokens at index 1\).*; got 8"):
        TokenBudgetBatchSampler([3, 9, 2], 8)
    s = TokenBudgetBatchSampler([3, 9, 2, 8], 8, oversized="skip", mega_batch=None, shuffle=False)
    assert as_lists(s.epoch_batches()) == [[2, 0], [3]]
    assert s.last_epoch_stats.dropped == 1
    everything_skipped = TokenBudgetBatchSampler([9, 9], 8, oversized="skip")
    assert everything_skipped.epoch_batches() == [] and len(everything_skipped) == 0
    assert everything_skipped.last_epoch_stats.dropped == 2


# ------------------------------------------------------------------ against references

@PROPS
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=120), T=st.integers(30, 200),
       mega=st.sampled_from([None, 1, 2, 5]), cap=st.sampled_from([None, 1, 3, 8]), general=st.booleans())
def test_unshuffled_token_budget_matches_reference(lengths, T, mega, cap, general):
    with path(general):
        s = TokenBudgetBatchSampler(lengths, T, mega_batch=mega, shuffle=False, max_batch_size=cap)
        assert as_lists(s.epoch_batches()) == ref_token_unshuffled(lengths, T, mega, cap)


def test_bucket_epoch_reference_by_hand():
    # The definition itself, unshuffled (no random draws): the hand examples above.
    assert bucket_epoch_reference([5, 1, 4, 2, 3, 6], 2, mega_batch=None, shuffle=False) == [[1, 3], [4, 2], [0, 5]]
    assert bucket_epoch_reference([5, 1, 4, 2, 3, 6], 2, mega_batch=2, shuffle=False) == [[1, 3], [2, 0], [4, 5]]
    assert bucket_epoch_reference([5, 1, 4, 2, 3], 2, mega_batch=None, shuffle=False, drop_last=True) == \
        [[1, 3], [4, 2]]
    # Shuffled: every example once, the batches sorted inside, another plan for another epoch.
    lengths = list(range(40, 0, -1))
    a, b = (bucket_epoch_reference(lengths, 4, mega_batch=2, seed=3, epoch=e) for e in (0, 1))
    assert sorted(i for batch in a for i in batch) == list(range(40)) and a != b
    assert all([lengths[i] for i in batch] == sorted(lengths[i] for i in batch) for batch in a)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[[1, 2], [3]]), r"lengths must be a non-empty 1-D sequence of integers >= 1"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0"),
    (dict(seed=-1), r"seed must be an integer >= 0; got -1"),
    (dict(shuffle=1), r"shuffle must be True or False; got 1"),
])
def test_bucket_epoch_reference_bad_input(kwargs, match):
    args = dict(lengths=[3, 1, 2], batch_size=2)
    args.update(kwargs)
    with pytest.raises(PadlabError, match=match):
        bucket_epoch_reference(args.pop("lengths"), args.pop("batch_size"), **args)


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=150), bs=st.integers(1, 9),
       mega=st.sampled_from([None, 0, 1, 2, 5, 50]), seed=st.integers(0, 2**31), epoch=st.integers(0, 3),
       shuffle=st.booleans(), drop_last=st.booleans(), general=st.booleans())
def test_bucket_sampler_equals_the_reference_epoch(lengths, bs, mega, seed, epoch, shuffle, drop_last, general):
    # Shuffled epochs too: both fast paths draw the same random numbers as the definition.
    with path(general):
        s = BucketBatchSampler(lengths, bs, mega_batch=mega, seed=seed, shuffle=shuffle, drop_last=drop_last)
        assert as_lists(s.epoch_batches(epoch)) == bucket_epoch_reference(
            lengths, bs, mega_batch=mega, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)


@st.composite
def pooled(draw, sort):
    lens = draw(st.lists(st.integers(1, 20), min_size=1, max_size=100))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(lens)), max_size=5))) - {len(lens)})
    bounds = [0] + cuts + [len(lens)]
    if sort:
        lens = [x for a, b in zip(bounds[:-1], bounds[1:]) for x in sorted(lens[a:b])]
    return lens, bounds


@PROPS
@given(data=pooled(sort=True), T=st.integers(20, 120), cap=st.integers(1, 12))
def test_greedy_kernels_match_reference_on_sorted_pools(data, T, cap):
    lens, bounds = data
    arr, b = np.array(lens), np.array(bounds)
    want = ref_greedy(lens, T, cap, bounds)
    assert TokenBudgetBatchSampler._greedy_sorted(arr, b, T, cap).tolist() == want
    assert TokenBudgetBatchSampler._greedy_noisy(arr, b, T, cap).tolist() == want


@PROPS
@given(data=pooled(sort=False), T=st.integers(20, 120), cap=st.integers(1, 12))
def test_noisy_greedy_matches_reference_on_any_order(data, T, cap):
    lens, bounds = data
    assert TokenBudgetBatchSampler._greedy_noisy(np.array(lens), np.array(bounds), T, cap).tolist() == \
        ref_greedy(lens, T, cap, bounds)


# ------------------------------------------------------------------ properties

options = dict(mega=st.sampled_from([None, 0, 1, 2, 5, 50]), noise=st.sampled_from([0.0, 0.0, 0.1, 0.5]),
               seed=st.integers(0, 2**31), longest_first=st.booleans(), shuffle=st.booleans())


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=150), bs=st.integers(1, 9),
       general=st.booleans(), **options)
def test_bucket_every_index_once(lengths, bs, general, mega, noise, seed, longest_first, shuffle):
    before = list(lengths)
    s = BucketBatchSampler(lengths, bs, mega_batch=mega, noise=noise, seed=seed,
                           longest_first=longest_first, shuffle=shuffle)
    with path(general):
        batches = as_lists(s.epoch_batches())
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    sizes = [len(b) for b in batches]
    assert sizes.count(bs) == len(lengths) // bs and len(sizes) == -(-len(lengths) // bs)
    assert len(s) == len(batches) == len(list(iter(s)))
    assert s.last_epoch_stats.repeated == 0 and s.last_epoch_stats.dropped == 0
    assert lengths == before


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=150), bs=st.integers(1, 9), **options)
def test_bucket_drop_last_counts_what_it_drops(lengths, bs, mega, noise, seed, longest_first, shuffle):
    s = BucketBatchSampler(lengths, bs, mega_batch=mega, noise=noise, seed=seed, drop_last=True,
                           longest_first=longest_first, shuffle=shuffle)
    flat = [i for b in as_lists(s.epoch_batches()) for i in b]
    assert len(flat) == len(set(flat)) == len(lengths) - len(lengths) % bs
    assert s.last_epoch_stats.dropped == len(lengths) % bs == len(lengths) - len(flat)
    assert all(len(b) == bs for b in s.epoch_batches())


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=2, max_size=150), bs=st.integers(1, 9),
       seed=st.integers(0, 2**31), general=st.booleans())
def test_full_sort_batches_hold_neighbours(lengths, bs, seed, general):
    """With one pool and no noise, batches are runs of the sorted lengths: ranges never interleave."""
    with path(general):
        s = BucketBatchSampler(lengths, bs, mega_batch=None, seed=seed)
        s.epoch_batches()
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in as_lists(s.epoch_batches()))
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:]))


def test_neighbour_check_has_teeth():
    # negative control for the test above: random batches (mega_batch=1) interleave.
    lengths = list(np.random.default_rng(0).integers(1, 60, 200))
    s = BucketBatchSampler(lengths, 4, mega_batch=1, seed=0)
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in as_lists(s.epoch_batches()))
    assert not all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:]))


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=150), bs=st.integers(1, 9), **options)
def test_same_seed_same_batches(lengths, bs, mega, noise, seed, longest_first, shuffle):
    kw = dict(mega_batch=mega, noise=noise, seed=seed, longest_first=longest_first, shuffle=shuffle)
    a = BucketBatchSampler(lengths, bs, **kw)
    b = BucketBatchSampler(np.array(lengths), bs, **kw)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    t = max(lengths) * 3
    assert list(TokenBudgetBatchSampler(lengths, t, **kw)) == list(TokenBudgetBatchSampler(lengths, t, **kw))


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=64, max_size=200), bs=st.integers(1, 4),
       mega=st.sampled_from([None, 1, 2, 5]), noise=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**31))
def test_new_epoch_new_batches(lengths, bs, mega, noise, seed):
    s = BucketBatchSampler(lengths, bs, mega_batch=mega, noise=noise, seed=seed)
    first = as_lists(s.epoch_batches())
    s.set_epoch(1)
    assert as_lists(s.epoch_batches()) != first
    assert as_lists(s.epoch_batches(0)) == first  # epochs are reproducible
    t = TokenBudgetBatchSampler(lengths, 4 * max(lengths), mega_batch=mega, noise=noise, seed=seed)
    assert as_lists(t.epoch_batches(0)) != as_lists(t.epoch_batches(1))


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("mega", [None, 2])
def test_ties_are_broken_at_random(general, mega):
    # Equal lengths (as in a corpus stored class by class): a batch must not be a run of
    # neighbouring indices, or batch membership would follow the storage order.
    with path(general):
        batches = as_lists(BucketBatchSampler([7] * 320, 32, mega_batch=mega, seed=1).epoch_batches())
        spans = [max(b) - min(b) for b in batches]
        assert min(spans) > 100
        # negative control: without shuffling, ties keep index order and batches are runs
        unshuffled = as_lists(BucketBatchSampler([7] * 320, 32, mega_batch=mega, shuffle=False).epoch_batches())
        assert max(max(b) - min(b) for b in unshuffled) == 31


def test_packed_path_is_the_default_without_noise():
    s = BucketBatchSampler([3, 1, 2], 2)
    s.epoch_batches()
    assert s._words is not None
    noisy = BucketBatchSampler([3, 1, 2], 2, noise=0.1)
    noisy.epoch_batches()
    assert noisy._words is None


def test_shuffle_false_is_the_same_every_epoch():
    s = BucketBatchSampler([5, 1, 4, 2, 3, 6], 2, shuffle=False)
    assert as_lists(s.epoch_batches(0)) == as_lists(s.epoch_batches(7))


@PROPS
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=150), extra=st.integers(0, 100),
       cap=st.sampled_from([None, 1, 4]), drop_last=st.booleans(), general=st.booleans(), **options)
def test_token_budget_properties(lengths, extra, cap, drop_last, general, mega, noise, seed, longest_first,
                                 shuffle):
    T = max(lengths) + extra
    s = TokenBudgetBatchSampler(lengths, T, mega_batch=mega, noise=noise, seed=seed, max_batch_size=cap,
                                longest_first=longest_first, shuffle=shuffle, drop_last=drop_last)
    with path(general):
        batches = as_lists(s.epoch_batches())
    for b in batches:
        assert 1 <= len(b) and len(b) * max(lengths[i] for i in b) <= T  # never over budget
        assert cap is None or len(b) <= cap
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert s.last_epoch_stats.dropped == len(lengths) - len(flat)
    if not drop_last:
        assert sorted(flat) == list(range(len(lengths)))
    assert len(s) == len(batches)
    if longest_first and batches:
        assert max(lengths[i] for i in flat) in [lengths[i] for i in batches[0]]


# ------------------------------------------------------------------ DDP (simulated ranks)

def ranks_of(cls, lengths, arg, R, **kw):
    samplers = [cls(lengths, arg, num_replicas=R, rank=r, **kw) for r in range(R)]
    return samplers, [as_lists(s.epoch_batches()) for s in samplers]


ddp_cases = dict(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=120), R=st.integers(1, 5),
                 bs=st.integers(1, 6), mega=st.sampled_from([None, 1, 3]), drop_last=st.booleans(),
                 seed=st.integers(0, 2**31), token=st.booleans(), shuffle=st.booleans(),
                 longest_first=st.booleans())


def _ddp(lengths, R, bs, mega, drop_last, seed, token, shuffle, longest_first, remainder):
    kw = dict(mega_batch=mega, drop_last=drop_last, seed=seed, shuffle=shuffle, longest_first=longest_first,
              remainder=remainder)
    if token:
        return ranks_of(TokenBudgetBatchSampler, lengths, max(lengths) * bs, R, **kw)
    return ranks_of(BucketBatchSampler, lengths, bs, R, **kw)


@PROPS
@given(**ddp_cases)
def test_ddp_pad_covers_everything_and_counts_repeats(lengths, R, bs, mega, drop_last, seed, token, shuffle,
                                                      longest_first):
    samplers, per_rank = _ddp(lengths, R, bs, mega, drop_last, seed, token, shuffle, longest_first, "pad")
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts == {len(s) for s in samplers}  # the same number of steps
    seen = Counter(i for batches in per_rank for b in batches for i in b)
    stats = samplers[0].last_epoch_stats
    assert all(s.last_epoch_stats == stats for s in samplers)  # every rank computes the same plan
    assert stats.repeated == sum(c - 1 for c in seen.values())
    assert stats.dropped == len(lengths) - len(seen)
    if not drop_last:
        assert set(seen) == set(range(len(lengths)))  # every example at least once
        assert stats.dropped == 0


@PROPS
@given(**ddp_cases)
def test_ddp_drop_never_repeats_and_counts_drops(lengths, R, bs, mega, drop_last, seed, token, shuffle,
                                                 longest_first):
    samplers, per_rank = _ddp(lengths, R, bs, mega, drop_last, seed, token, shuffle, longest_first, "drop")
    assert len({len(b) for b in per_rank}) == 1
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no example twice
    stats = samplers[0].last_epoch_stats
    assert stats.dropped == len(lengths) - len(flat) and stats.repeated == 0
    assert stats.batches == R * len(per_rank[0])


def test_ddp_by_hand():
    # sorted batches [1,3] [4,2] [0,5] [6]; 3 ranks need 6 batches.
    lengths = [5, 1, 4, 2, 3, 6, 7]
    _, per_rank = ranks_of(BucketBatchSampler, lengths, 2, 3, mega_batch=None, shuffle=False)
    # pad repeats the first two batches, each next to its original (same step):
    assert per_rank == [[[1, 3], [4, 2]], [[1, 3], [0, 5]], [[4, 2], [6]]]
    samplers, per_rank = ranks_of(BucketBatchSampler, lengths, 2, 3, mega_batch=None, shuffle=False,
                                  remainder="drop")
    assert per_rank == [[[1, 3]], [[4, 2]], [[0, 5]]]
    assert samplers[0].last_epoch_stats.dropped == 1 and len(samplers[2]) == 1


def test_ddp_check_has_teeth():
    # negative control: naive sharding of the batch list gives ranks unequal step counts
    # (the last rank would wait forever at a collective), which the property tests forbid.
    batches = BucketBatchSampler([5, 1, 4, 2, 3, 6, 7], 2, num_replicas=1, rank=0).epoch_batches()
    assert len({len(batches[r::3]) for r in range(3)}) > 1
    # and pad does repeat examples, which the drop test forbids
    _, per_rank = ranks_of(BucketBatchSampler, [5, 1, 4, 2, 3, 6, 7], 2, 3)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) > len(set(flat))


def test_ranks_of_one_step_get_neighbouring_lengths():
    # Blocks of num_replicas neighbouring batches are shuffled as a whole: with a full sort,
    # the 2 ranks x 2 rows of a step are 4 consecutive lengths.
    lengths = np.random.default_rng(1).permutation(np.arange(1, 41))
    _, per_rank = ranks_of(BucketBatchSampler, lengths, 2, 2, mega_batch=None, seed=5)
    for a, b in zip(*per_rank):
        step = sorted(lengths[a + b])
        assert step == list(range(step[0], step[0] + 4))


def test_defaults_come_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    assert BucketBatchSampler([1, 2], 1).num_replicas == 1
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    s = BucketBatchSampler([1, 2, 3, 4, 5], 1)
    assert (s.num_replicas, s.rank) == (4, 3) and len(s) == 2
    assert TokenBudgetBatchSampler([1, 2], 4, rank=1).num_replicas == 4
    assert BucketBatchSampler([1, 2], 1, num_replicas=2, rank=0).num_replicas == 2  # explicit wins


# ------------------------------------------------------------------ DataLoader, inputs

def test_dataloader_with_padding_collator():
    from padlab.data import load_corpus
    from padlab.padding import PaddingCollator

    corpus = load_corpus("fortunes").subset(400, seed=0)
    sampler = BucketBatchSampler(corpus.lengths, 16, seed=0)
    loader = DataLoader(corpus, batch_sampler=sampler, collate_fn=PaddingCollator())
    assert len(loader) == 25
    seen, real, slots = [], 0, 0
    for idx, batch in zip(sampler, loader):
        assert batch["input_ids"].shape == (len(idx), int(corpus.lengths[idx].max()))
        assert batch["seq_lengths"].tolist() == corpus.lengths[idx].tolist()
        assert batch["labels"].tolist() == corpus.labels[idx].tolist()
        seen += idx
        real += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    assert sorted(seen) == list(range(400))
    # Bucketing pads far less than random batches of the same size.
    rnd = BucketBatchSampler(corpus.lengths, 16, mega_batch=1, seed=0)
    rnd_slots = sum(len(b) * int(corpus.lengths[b].max()) for b in rnd.epoch_batches())
    assert real / slots > 0.8 > real / rnd_slots
    tokens = DataLoader(corpus, batch_sampler=TokenBudgetBatchSampler(corpus.lengths, 2048, seed=0),
                        collate_fn=PaddingCollator())
    assert all(b["input_ids"].numel() <= 2048 for b in tokens)


def test_caller_data_is_never_touched():
    arr = np.array([5, 1, 4, 2, 3, 6])
    lst = [5, 1, 4, 2, 3, 6]
    s = BucketBatchSampler(arr, 2, mega_batch=None, shuffle=False)
    t = TokenBudgetBatchSampler(lst, 12, mega_batch=None, shuffle=False)
    list(s), list(t)
    assert arr.tolist() == lst == [5, 1, 4, 2, 3, 6] and arr.flags.writeable
    arr[:] = 1  # the sampler holds its own copy
    assert as_lists(s.epoch_batches()) == [[1, 3], [4, 2], [0, 5]]
    with pytest.raises(ValueError, match="read-only"):
        s.epoch_batches()[0][0] = 99


@pytest.mark.parametrize("kw", [dict(), dict(num_replicas=3, rank=1), dict(drop_last=True), dict(noise=0.2)])
def test_batches_of_an_old_epoch_stay_intact(kw):
    # Buffers are recycled between epochs; batches already handed out must never change.
    lengths = np.random.default_rng(0).integers(1, 50, 1003)
    s = BucketBatchSampler(lengths, 8, **kw)
    first = s.epoch_batches(0)
    saved = as_lists(first)
    for epoch in range(1, 5):
        s.epoch_batches(epoch)
    assert as_lists(first) == saved
    assert as_lists(BucketBatchSampler(lengths, 8, **kw).epoch_batches(0)) == saved


def test_iteration_yields_python_int_lists():
    batch = next(iter(TokenBudgetBatchSampler(np.array([3, 2, 1], dtype=np.int32), 9, seed=1)))
    assert isinstance(batch, list) and all(type(i) is int for i in batch)


# ------------------------------------------------------------------ inference order

def test_restore_order_by_hand_all_types():
    order = [2, 0, 1]
    assert restore_order(["c", "a", "b"], order) == ["a", "b", "c"]
    assert restore_order(("c", "a", "b"), np.array(order)) == ("a", "b", "c")
    np.testing.assert_array_equal(restore_order(np.array([[30], [10], [20]]), order), [[10], [20], [30]])
    t = torch.tensor([3.0, 1.0, 2.0])
    assert restore_order(t, order).tolist() == [1.0, 2.0, 3.0]
    assert t.tolist() == [3.0, 1.0, 2.0]  # values untouched
    assert restore_order([], []) == []


def test_sorted_inference_round_trip():
    lengths = [5, 1, 4, 2, 3, 6]
    batches = sorted_inference_batches(lengths, 4)
    assert as_lists(batches) == [[5, 0, 2, 4], [3, 1]]  # longest first
    assert as_lists(sorted_inference_batches(lengths, 4, descending=False)) == [[1, 3, 4, 2], [0, 5]]
    # a "model" whose prediction is a function of the example: length * 10 + index
    preds = [lengths[i] * 10 + i for b in batches for i in b.tolist()]
    order = np.concatenate(batches)
    want = [x * 10 + i for i, x in enumerate(lengths)]
    assert restore_order(preds, order) == want
    assert preds != want  # negative control: the sorted outputs are not in caller order


@PROPS
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=100), bs=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_restore_order_inverts_any_sampler_order(lengths, bs, seed):
    order = np.concatenate(BucketBatchSampler(lengths, bs, seed=seed).epoch_batches())
    values = torch.as_tensor(lengths)[torch.as_tensor(order)]
    assert restore_order(values, order).tolist() == lengths


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[]), r"lengths must be a non-empty 1-D sequence of integers >= 1; got \[\]"),
    (dict(lengths=[[1, 2]]), r"lengths must be a non-empty 1-D .*; got \[\[1, 2\]\]"),
    (dict(lengths=[1.5, 2.0]), r"lengths must .*; got \[1.5, 2.0\]"),
    (dict(lengths=[3, 0]), r"lengths must .* >= 1; got \[3, 0\]"),
    (dict(lengths=[True, False]), r"lengths must .*; got \[True, False\]"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0"),
    (dict(batch_size=2.0), r"batch_size must be an integer >= 1; got 2.0"),
    (dict(batch_size=True), r"batch_size must be an integer >= 1; got True"),
    (dict(mega_batch=-1), r"mega_batch must be an integer >= 0; got -1"),
    (dict(mega_batch=2.5), r"mega_batch must be an integer >= 0; got 2.5"),
    (dict(noise=-0.1), r"noise must be >= 0.0; got -0.1"),
    (dict(noise=1.0), r"noise must be in \[0, 1\); got 1.0"),
    (dict(noise="x"), r"noise must be a real number; got 'x'"),
    (dict(shuffle="yes"), r"shuffle must be True or False; got 'yes'"),
    (dict(longest_first=1), r"longest_first must be True or False; got 1"),
    (dict(drop_last=None), r"drop_last must be True or False; got None"),
    (dict(seed=-1), r"seed must be an integer >= 0; got -1"),
    (dict(remainder="keep"), r"remainder must be one of 'pad', 'drop'; got 'keep'"),
    (dict(num_replicas=0), r"num_replicas must be an integer >= 1; got 0"),
    (dict(num_replicas=2, rank=2), r"rank must be in \[0, num_replicas\) = \[0, 2\); got 2"),
    (dict(rank=-1), r"rank must be an integer >= 0; got -1"),
])
def test_bad_sampler_arguments(kwargs, match):
    args = dict(lengths=[3, 1, 2], batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        BucketBatchSampler(args.pop("lengths"), args.pop("batch_size"), **args)
    if "batch_size" not in kwargs:  # the token-budget sampler shares every other check
        args = dict(lengths=[3, 1, 2], max_tokens=9)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            TokenBudgetBatchSampler(args.pop("lengths"), args.pop("max_tokens"), **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), r"max_tokens must be an integer >= 1; got 0"),
    (dict(max_tokens=9.0), r"max_tokens must be an integer >= 1; got 9.0"),
    (dict(max_tokens=2), r"max_tokens must be >= the longest sequence \(3 tokens at index 0\)"),
    (dict(max_batch_size=0), r"max_batch_size must be an integer >= 1; got 0"),
    (dict(oversized="truncate"), r"oversized must be one of 'error', 'skip'; got 'truncate'"),
])
def test_bad_token_budget_arguments(kwargs, match):
    args = dict(max_tokens=9)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TokenBudgetBatchSampler([3, 1, 2], **args)


def test_bad_epochs():
    s = BucketBatchSampler([3, 1, 2], 2)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0; got -1"):
        s.set_epoch(-1)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0; got 1.5"):
        s.epoch_batches(1.5)


@pytest.mark.parametrize("values, order, match", [
    ([1, 2], [0], r"order must have one index per value \(2 values, 1 indices\); got \[0\]"),
    ([1, 2], [0, 0], r"order must be a permutation of range\(len\(values\)\) \(an index repeats\); got \[0, 0\]"),
    ([1, 2], [0, 2], r"order must hold indices in \[0, 2\); got \[0, 2\]"),
    ([1, 2], [-1, 0], r"order must hold indices in \[0, 2\); got \[-1, 0\]"),
    ([1, 2], [0.0, 1.0], r"order must be a 1-D sequence of integer indices; got \[0.0, 1.0\]"),
    ([1, 2], [[0, 1]], r"order must be a 1-D sequence of integer indices"),
    (5, [0], r"values must be a list, NumPy array or tensor; got 5"),
    ({"a": 1}, [0], r"values must be a list, tuple, NumPy array or tensor; got \{'a': 1\}"),
])
def test_bad_restore_order(values, order, match):
    with pytest.raises(ValueError, match=match):
        restore_order(values, order)


def test_bad_sorted_inference_arguments():
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1; got 0"):
        sorted_inference_batches([1, 2], 0)
    with pytest.raises(ValueError, match=r"descending must be True or False; got 'yes'"):
        sorted_inference_batches([1, 2], 1, descending="yes")
    with pytest.raises(ValueError, match=r"lengths must .*; got \[0\]"):
        sorted_inference_batches([0], 1)


# ------------------------------------------------------------------ strategies wiring

def test_strategies_bucketed_and_token_budget():
    from padlab.data import load_corpus
    from padlab.strategies import batch_shapes, default_max_tokens, waste_table

    lengths = load_corpus("fortunes").lengths
    rows = {r.strategy: r for r in waste_table(lengths, ("dynamic", "bucketed", "token-budget"))}
    assert rows["bucketed"].efficiency > 0.8 > rows["dynamic"].efficiency
    assert rows["bucketed"].batches == rows["dynamic"].batches
    # default budget: comparable batch counts (a few more than fixed-size batching)
    assert rows["dynamic"].batches <= rows["token-budget"].batches <= 1.25 * rows["dynamic"].batches
    budget = default_max_tokens(lengths, 32, 512)
    shapes, _, block = batch_shapes("token-budget", lengths)
    assert not block and all(s.rows * s.width <= budget for s in shapes)
    shapes, _, _ = batch_shapes("token-budget", lengths, max_tokens=4096, noise=0.1, mega_batch=None)
    assert all(s.rows * s.width <= 4096 for s in shapes) and sum(s.rows for s in shapes) == len(lengths)
    full, _, _ = batch_shapes("sorted", lengths)   # one pool: the global sort
    rnd, _, _ = batch_shapes("bucketed", lengths, mega_batch=1)
    assert sum(s.rows * s.width for s in full) < sum(s.rows * s.width for s in rnd)


def test_default_max_tokens_by_hand():
    from padlab.strategies import default_max_tokens

    # kept lengths 10, 20, 512: mean 180.67 -> 181 x 2 = 362 < 512, the longest kept
    assert default_max_tokens(np.array([10, 20, 600]), 2, 512) == 512
    assert default_max_tokens(np.array([10, 20, 30]), 4, 512) == 80


# Found by an outside check: ragged nesting gave numpy's "inhomogeneous shape" message, and uint64
# lengths >= 2**63 became negative lengths that the samplers used.
@pytest.mark.parametrize("lengths, match", [
    ([[1, 2], [3]], r"lengths must be a non-empty 1-D sequence of integers >= 1; got \[\[1, 2\], \[3\]\]"),
    (np.array([3, 2**63], dtype=np.uint64), r"lengths must be a non-empty 1-D sequence of integers >= 1 that fit in int64"),
    (np.array([3, 2**64 - 1], dtype=np.uint64), r"that fit in int64"),
    (None, r"lengths must be a non-empty 1-D sequence of integers >= 1; got None"),
])
def test_bad_lengths_found_outside(lengths, match):
    with pytest.raises(PadlabError, match=match):
        BucketBatchSampler(lengths, 2)
    with pytest.raises(PadlabError, match=match):
        TokenBudgetBatchSampler(lengths, 2**62)
