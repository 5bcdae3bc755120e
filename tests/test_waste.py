"""Tests for padlab.waste and the fixed/dynamic strategies of padlab.strategies: hand-computed numbers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab._validate import PadlabError
from padlab.data import load_corpus
from padlab.padding import pad_batch
from padlab.strategies import batch_shapes, bucket_tradeoff, random_batches, waste_table
from padlab.waste import BatchShape, length_eta_squared, padded_batches, waste


def shape(rows, width, lens):
    return BatchShape(rows=rows, width=width, seq_lengths=np.array(lens, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# waste(): numbers by hand
# ---------------------------------------------------------------------------------------------

def test_waste_one_batch_by_hand():
    r = waste("dynamic", [shape(3, 5, [3, 5, 2])])
    assert (r.batches, r.sequences) == (1, 3)
    assert r.real_tokens == 10 and r.computed_tokens == 15 and r.padded_tokens == 5
    assert r.efficiency == pytest.approx(10 / 15)
    assert r.attention_real == 9 + 25 + 4 and r.attention_computed == 3 * 25
    assert r.attention_efficiency == pytest.approx(38 / 75)
    assert r.truncated_tokens == 0 and r.max_width == 5 and r.strategy == "dynamic"


def test_waste_two_batches_and_truncation_by_hand():
    r = waste("x", [shape(3, 5, [3, 5, 2]), shape(2, 4, [4, 1])], truncated_tokens=7)
    assert r.real_tokens == 15 and r.computed_tokens == 15 + 8 and r.padded_tokens == 8
    assert r.attention_real == 38 + 16 + 1 and r.attention_computed == 75 + 2 * 16
    assert r.efficiency == pytest.approx(15 / 23) and r.attention_efficiency == pytest.approx(55 / 107)
    assert r.truncated_tokens == 7 and r.max_width == 5 and r.sequences == 5


def test_waste_block_diagonal_packed_rows():
    # Two rows of width 6 holding three packed sequences: 10 real tokens, 2 pad slots.
    dense = waste("packed", [shape(2, 6, [3, 3, 4])])
    block = waste("packed", [shape(2, 6, [3, 3, 4])], block_diagonal=True)
    assert dense.attention_real == block.attention_real == 9 + 9 + 16
    assert dense.attention_computed == 2 * 36 and block.attention_computed == 34
    assert block.attention_efficiency == 1.0 and block.efficiency == pytest.approx(10 / 12)


def test_waste_as_dict_keys():
    d = waste("fixed", [shape(1, 2, [2])]).as_dict()
    assert {"strategy", "real_tokens", "padded_tokens", "efficiency", "attention_efficiency",
            "truncated_tokens", "batches"} <= set(d)


# ---------------------------------------------------------------------------------------------
# padded_batches(): shapes by hand
# ---------------------------------------------------------------------------------------------

LENS = np.array([3, 5, 2, 8])


def test_padded_batches_dynamic():
    shapes, trunc = padded_batches(LENS, [np.array([0, 1]), np.array([2, 3])])
    assert [(s.rows, s.width, s.seq_lengths.tolist()) for s in shapes] == [(2, 5, [3, 5]), (2, 8, [2, 8])]
    assert trunc == 0


def test_padded_batches_dynamic_truncation_and_multiple_of():
    shapes, trunc = padded_batches(LENS, [np.array([0, 1]), np.array([2, 3])], max_length=6, pad_to_multiple_of=4)
    assert [(s.width, s.seq_lengths.tolist()) for s in shapes] == [(8, [3, 5]), (8, [2, 6])]
    assert trunc == 2


def test_padded_batches_fixed():
    shapes, trunc = padded_batches(LENS, [np.array([3, 0, 2]), np.array([1])], max_length=4, fixed=True)
    assert [(s.rows, s.width, s.seq_lengths.tolist()) for s in shapes] == [(3, 4, [4, 3, 2]), (1, 4, [4])]
    assert trunc == 4 + 1


def test_padded_batches_never_mutates_input():
    lens, batches = LENS.copy(), [np.array([0, 1]), np.array([2, 3])]
    padded_batches(lens, batches, max_length=4)
    assert np.array_equal(lens, LENS) and [b.tolist() for b in batches] == [[0, 1], [2, 3]]


def test_padded_batches_widths_match_pad_batch_on_real_data():
    # The arithmetic here and the tensors padlab.padding builds must agree.
    corpus = load_corpus("wordnet").subset(40, seed=3)
    batches = random_batches(len(corpus), 8, seed=1)
    shapes, trunc = padded_batches(corpus.lengths, batches, max_length=20, pad_to_multiple_of=8)
    total_trunc = 0
    for s, idx in zip(shapes, batches):
        b = pad_batch([corpus.ids(int(i)) for i in idx], max_length=20, pad_to_multiple_of=8)
        assert b["input_ids"].shape == (s.rows, s.width)
        assert b["attention_mask"].sum(1).tolist() == s.seq_lengths.tolist()
        total_trunc += int(b["truncated_tokens"])
    assert total_trunc == trunc


# ---------------------------------------------------------------------------------------------
# waste_table(): fixed vs dynamic
# ---------------------------------------------------------------------------------------------

def test_waste_table_one_batch_by_hand():
    # batch_size 4 over 4 lengths: one batch whatever the shuffle.
    fixed, dyn = waste_table(LENS, ("fixed", "dynamic"), batch_size=4, max_length=10)
    assert fixed.real_tokens == dyn.real_tokens == 18
    assert fixed.computed_tokens == 40 and dyn.computed_tokens == 32
    assert fixed.efficiency == pytest.approx(0.45) and dyn.efficiency == pytest.approx(18 / 32)
    assert fixed.attention_real == dyn.attention_real == 9 + 25 + 4 + 64
    assert fixed.attention_computed == 4 * 100 and dyn.attention_computed == 4 * 64
    assert fixed.truncated_tokens == dyn.truncated_tokens == 0


def reference_table(lengths, batch_size, max_length, seed):
    """Loop reference: same seeded shuffle, then plain Python arithmetic per batch."""
    perm = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    out = {}
    for fixed in (True, False):
        real = computed = att_real = att_comp = trunc = 0
        for start in range(0, len(perm), batch_size):
            lens = [int(lengths[i]) for i in perm[start:start + batch_size]]
            kept = [min(n, max_length) for n in lens]
            trunc += sum(lens) - sum(kept)
            w = max_length if fixed else max(kept)
            real += sum(kept)
            computed += len(kept) * w
            att_real += sum(k * k for k in kept)
            att_comp += len(kept) * w * w
        out["fixed" if fixed else "dynamic"] = (real, computed, att_real, att_comp, trunc)
    return out


@pytest.mark.parametrize("batch_size,max_length,seed", [(3, 6, 0), (2, 4, 5), (7, 100, 1)])
def test_waste_table_matches_reference(batch_size, max_length, seed):
    lengths = np.array([4, 1, 7, 3, 9, 2, 5])
    ref = reference_table(lengths, batch_size, max_length, seed)
    for r in waste_table(lengths, ("fixed", "dynamic"), batch_size=batch_size, max_length=max_length, seed=seed):
        assert (r.real_tokens, r.computed_tokens, r.attention_real, r.attention_computed,
                r.truncated_tokens) == ref[r.strategy]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=50), batch_size=st.integers(1, 9),
       max_length=st.integers(1, 45), seed=st.integers(0, 2 ** 16))
def test_property_fixed_vs_dynamic(lengths, batch_size, max_length, seed):
    lengths = np.array(lengths)
    fixed, dyn = waste_table(lengths, ("fixed", "dynamic"), batch_size=batch_size, max_length=max_length, seed=seed)
    kept = np.minimum(lengths, max_length)
    # Nothing lost but truncation, whatever the order of batches.
    assert fixed.real_tokens == dyn.real_tokens == kept.sum()
    assert fixed.truncated_tokens == dyn.truncated_tokens == (lengths - kept).sum()
    assert fixed.computed_tokens == len(lengths) * max_length
    assert dyn.computed_tokens <= fixed.computed_tokens and dyn.efficiency >= fixed.efficiency
    assert fixed.sequences == dyn.sequences == len(lengths)
    assert fixed.batches == -(-len(lengths) // batch_size)


def test_same_seed_same_batches_new_seed_new_batches():
    lengths = np.arange(1, 41)
    a, _, _ = batch_shapes("dynamic", lengths, batch_size=4, seed=7)
    b, _, _ = batch_shapes("dynamic", lengths, batch_size=4, seed=7)
    c, _, _ = batch_shapes("dynamic", lengths, batch_size=4, seed=8)
    key = lambda shapes: [s.seq_lengths.tolist() for s in shapes]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [0, 1.5, True])
def test_error_batchshape_rows(rows):
    with pytest.raises(ValueError, match=r"rows must be an integer >= 1; got"):
        BatchShape(rows=rows, width=4, seq_lengths=np.array([1]))


def test_error_batchshape_width():
    with pytest.raises(ValueError, match=r"width must be an integer >= 1; got 0"):
        BatchShape(rows=1, width=0, seq_lengths=np.array([1]))


@pytest.mark.parametrize("lens", [np.array([], dtype=np.int64), np.array([[1]]), np.array([1.0]), [1, "a"]])
def test_error_batchshape_seq_lengths_kind(lens):
    with pytest.raises(ValueError, match=r"seq_lengths must be a non-empty 1-D sequence of integers >= 1"):
        BatchShape(rows=1, width=4, seq_lengths=lens)


def test_error_batchshape_zero_length():
    with pytest.raises(ValueError, match=r"seq_lengths must be .* integers >= 1; got array\(\[3, 0\]\)"):
        BatchShape(rows=2, width=4, seq_lengths=np.array([3, 0]))


def test_error_batchshape_overflow():
    with pytest.raises(ValueError, match=r"seq_lengths must fit in rows x width = 2 x 4 \(sum is 9\)"):
        BatchShape(rows=2, width=4, seq_lengths=np.array([4, 5]))


def test_error_waste_no_batches():
    with pytest.raises(ValueError, match=r"batches must hold at least one BatchShape; got \[\]"):
        waste("fixed", [])


def test_error_waste_not_a_batchshape():
    with pytest.raises(ValueError, match=r"batches\[1\] must be a BatchShape; got \(2, 3\)"):
        waste("fixed", [shape(1, 2, [2]), (2, 3)])


def test_error_waste_negative_truncated():
    with pytest.raises(ValueError, match=r"truncated_tokens must be an integer >= 0; got -1"):
        waste("fixed", [shape(1, 2, [2])], truncated_tokens=-1)


def test_error_padded_batches_fixed_without_max_length():
    with pytest.raises(ValueError, match=r"max_length must be given when fixed=True; got None"):
        padded_batches(LENS, [np.array([0])], fixed=True)


def test_error_padded_batches_max_length():
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 1; got 0"):
        padded_batches(LENS, [np.array([0])], max_length=0)


def test_error_padded_batches_multiple_of():
    with pytest.raises(ValueError, match=r"pad_to_multiple_of must be an integer >= 1; got 0"):
        padded_batches(LENS, [np.array([0])], pad_to_multiple_of=0)


@pytest.mark.parametrize("batch, match", [
    # A negative index would wrap around to the end of lengths: refused, not silently used.
    (np.array([0, -1]), r"batches\[0\] must hold indices in \[0, 4\) \(len\(lengths\) = 4\); got array\(\[ 0, -1\]\)"),
    (np.array([4]), r"batches\[0\] must hold indices in \[0, 4\) .*; got array\(\[4\]\)"),
    (np.array([], dtype=np.int64), r"batches\[0\] must be a non-empty 1-D array of integer indices"),
    (np.array([0.0, 1.0]), r"batches\[0\] must be a non-empty 1-D array of integer indices; got array\(\[0., 1.\]\)"),
    (np.array([True, False]), r"batches\[0\] must be a non-empty 1-D array of integer indices"),
])
def test_error_padded_batches_indices(batch, match):
    with pytest.raises(PadlabError, match=match):
        padded_batches(np.array([3, 1, 4, 1]), [batch])


@pytest.mark.parametrize("lengths", [[[1, 2], [3]], np.array([2**63], dtype=np.uint64), [3, 0]])
def test_error_padded_batches_lengths(lengths):
    with pytest.raises(PadlabError, match=r"lengths must be a non-empty 1-D sequence of integers >= 1"):
        padded_batches(lengths, [np.array([0])])


def test_error_strategy_unknown():
    with pytest.raises(ValueError, match=r"strategy must be one of .*'fixed'.*; got 'shuffled'"):
        batch_shapes("shuffled", LENS)


def test_error_strategy_batch_size():
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1; got 0"):
        waste_table(LENS, ("fixed",), batch_size=0)


def test_error_strategy_max_length():
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 1; got -2"):
        waste_table(LENS, ("dynamic",), max_length=-2)


def test_error_strategy_seed():
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0; got 0.5"):
        batch_shapes("fixed", LENS, seed=0.5)


@pytest.mark.parametrize("lengths", [np.array([], dtype=np.int64), np.array([3, 0]), np.array([1.5]),
                                     np.array([[1, 2]])])
def test_error_strategy_lengths(lengths):
    with pytest.raises(ValueError, match=r"lengths must be a non-empty 1-D sequence of integers >= 1"):
        batch_shapes("fixed", lengths)


# ---------------------------------------------------------------------------------------------
# length_eta_squared(): how much batch membership depends on length
# ---------------------------------------------------------------------------------------------

def _eta_reference(lengths, batches):
    """The textbook correlation ratio, batch by batch in plain Python."""
    values = [float(lengths[i]) for b in batches for i in b]
    grand = sum(values) / len(values)
    total = sum((v - grand) ** 2 for v in values)
    between = 0.0
    for b in batches:
        m = sum(float(lengths[i]) for i in b) / len(b)
        between += len(b) * (m - grand) ** 2
    return between / total if total else 0.0


def test_length_eta_squared_by_hand():
    lens = np.array([1, 2, 3, 4])
    # Grand mean 2.5, SS_total = 2.25 + 0.25 + 0.25 + 2.25 = 5; sorted pairs: means 1.5, 3.5 -> SS_between = 4.
    assert length_eta_squared(lens, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(0.8)
    # Pairs with equal means explain nothing.
    assert length_eta_squared(lens, [np.array([0, 3]), np.array([1, 2])]) == 0.0
    # One batch per length explains everything.
    assert length_eta_squared(lens, [np.array([i]) for i in range(4)]) == pytest.approx(1.0)
    # Unequal sizes: lengths 2, 4, 6 (mean 4, SS_total 8) in [0] and [1, 2] (means 2, 5): (4 + 2) / 8.
    assert length_eta_squared(np.array([2, 4, 6]), [[0], [1, 2]]) == pytest.approx(0.75)
    # No variance at all: 0, not a division by zero.
    assert length_eta_squared(np.array([7, 7, 7]), [[0, 1], [2]]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(1, 8), st.integers(0, 2**31))
def test_length_eta_squared_matches_reference(lengths, bs, seed):
    lens = np.array(lengths)
    perm = np.random.default_rng(seed).permutation(lens.size)
    batches = np.split(perm, np.arange(bs, lens.size, bs))
    got = length_eta_squared(lens, batches)
    assert got == pytest.approx(_eta_reference(lens, batches), abs=1e-12)
    assert 0.0 <= got <= 1.0 + 1e-12


def test_length_eta_squared_random_against_sorted_on_a_corpus():
    lens = load_corpus("fortunes").lengths
    shuffled = random_batches(lens.size, 32, seed=0)
    ordered = np.split(np.argsort(lens, kind="stable"), np.arange(32, lens.size, 32))
    # Random batches of 32 explain about 1/32 of the variance; a full sort nearly all of it.
    assert length_eta_squared(lens, shuffled) < 0.06
    assert length_eta_squared(lens, ordered) > 0.99


def test_length_eta_squared_leaves_inputs_alone():
    lens = np.array([5, 1, 3])
    batches = [np.array([2, 0]), np.array([1])]
    length_eta_squared(lens, batches)
    assert lens.tolist() == [5, 1, 3] and [b.tolist() for b in batches] == [[2, 0], [1]]


@pytest.mark.parametrize("lengths, batches, match", [
    (np.array([[1, 2]]), [[0]], r"lengths must be a non-empty 1-D array of numbers"),
    (np.array([], dtype=np.int64), [[0]], r"lengths must be a non-empty 1-D array of numbers"),
    (np.array([1, 2]), [], r"batches must hold at least one batch of indices"),
    (np.array([1, 2]), [[0], []], r"batches\[1\] must be a non-empty 1-D array of integer indices"),
    (np.array([1, 2]), [[0.5]], r"batches\[0\] must be a non-empty 1-D array of integer indices"),
    (np.array([1, 2]), [[0, 2]], r"batches must hold indices in \[0, 2\)"),
])
def test_error_length_eta_squared(lengths, batches, match):
    with pytest.raises(ValueError, match=match):
        length_eta_squared(lengths, batches)


# ---------------------------------------------------------------------------------------------
# strategies.bucket_tradeoff(): efficiency against eta² for one bucketing setting
# ---------------------------------------------------------------------------------------------

def test_bucket_tradeoff_by_hand():
    # A full sort of 1, 2, 3, 4 in batches of 2: [1, 2] and [3, 4] -> widths 2 and 4, 12 computed, 10 real.
    r = bucket_tradeoff(np.array([4, 1, 3, 2]), batch_size=2, mega_batch=None)
    assert (r.mega_batch, r.noise, r.batches) == (0, 0.0, 2)
    assert r.efficiency == pytest.approx(10 / 12)
    assert r.attention_efficiency == pytest.approx((1 + 4 + 9 + 16) / (2 * 4 + 2 * 16))
    assert r.eta_squared == pytest.approx(0.8)


@pytest.mark.parametrize("mega_batch, noise", [(1, 0.0), (5, 0.0), (50, 0.2), (None, 0.0)])
def test_bucket_tradeoff_matches_waste_table_and_the_sampler(mega_batch, noise):
    from padlab.batching import BucketBatchSampler

    lens = load_corpus("fortunes").lengths
    r = bucket_tradeoff(lens, batch_size=32, max_length=256, mega_batch=mega_batch, noise=noise, seed=3)
    # mega_batch=None is one pool: the registry's "sorted" strategy
    name, opts = ("sorted", {}) if mega_batch is None else ("bucketed", {"mega_batch": mega_batch})
    (w,) = waste_table(lens, (name,), batch_size=32, max_length=256, noise=noise, seed=3, **opts)
    assert (r.efficiency, r.attention_efficiency, r.batches) == (w.efficiency, w.attention_efficiency, w.batches)
    kept = np.minimum(lens, 256)
    batches = BucketBatchSampler(kept, 32, mega_batch=mega_batch, noise=noise, seed=3).epoch_batches(0)
    assert r.eta_squared == length_eta_squared(kept, batches)


def test_bucket_tradeoff_random_to_sorted():
    lens = load_corpus("fortunes").lengths
    rows = [bucket_tradeoff(lens, mega_batch=m) for m in (1, 10, None)]
    # Larger pools: more efficient, and batch membership explains more of the length.
    assert rows[0].efficiency < rows[1].efficiency < rows[2].efficiency
    assert rows[0].eta_squared < 0.06 < rows[1].eta_squared < rows[2].eta_squared


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0"),
    (dict(max_length=0), r"max_length must be an integer >= 1; got 0"),
    (dict(mega_batch=-1), r"mega_batch must be an integer >= 0; got -1"),
    (dict(noise=1.0), r"noise must be in \[0, 1\); got 1.0"),
])
def test_error_bucket_tradeoff(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bucket_tradeoff(LENS, **kwargs)


def test_error_bucket_tradeoff_lengths():
    with pytest.raises(ValueError, match=r"lengths must be a non-empty 1-D sequence of integers >= 1"):
        bucket_tradeoff(np.array([2, 0]))
