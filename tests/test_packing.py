"""Tests for padlab.packing: packers (full assignment, hand examples, references), collator, dataset."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from padlab._validate import PadlabError
from padlab.packing import (PackedCollator, PackedDataset, PackResult, first_fit_decreasing,
                            first_fit_decreasing_reference, pack, shortest_pack_first_histogram)

FAST = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------------------------------------
# Obviously-correct references: one sequence at a time, O(n^2). FFD's lives in the package
# (packing.first_fit_decreasing_reference, checked by hand below); SPFHP's is here.
# ---------------------------------------------------------------------------------------------

def naive_spf(lengths, capacity):
    """SPFHP as the paper describes it, one sequence at a time: longest first, each into the open
    pack with the most room that fits, else a new pack. Returns the pack token totals."""
    rooms = []
    for L in sorted(lengths, reverse=True):
        fits = [p for p in range(len(rooms)) if rooms[p] >= L]
        if fits:
            p = max(fits, key=lambda q: rooms[q])
            rooms[p] -= L
        else:
            rooms.append(capacity - L)
    return sorted(capacity - r for r in rooms)


def as_lists(result):
    return [p.tolist() for p in result.packs]


def pack_length_tuples(result, lengths):
    return sorted(tuple(lengths[i] for i in p) for p in as_lists(result))


# ---------------------------------------------------------------------------------------------
# Hand-derived examples
# ---------------------------------------------------------------------------------------------

def test_ffd_hand_example():
    # 6 opens A (room 1), 5 opens B (2), 4 opens C (3); 3 fits only C, 2 only B, 1 only A.
    r = pack([6, 5, 4, 3, 2, 1], 7)
    assert as_lists(r) == [[0, 5], [1, 4], [2, 3]]
    assert r.n_packs == 3 and r.efficiency == 1.0 and r.truncated_tokens == 0
    assert r.pack_tokens.tolist() == [7, 7, 7]


def test_ffd_reference_by_hand():
    # The definition itself, on the hand examples above and below.
    assert first_fit_decreasing_reference([6, 5, 4, 3, 2, 1], 7) == [[0, 5], [1, 4], [2, 3]]
    assert first_fit_decreasing_reference([3, 3, 3, 3], 10) == [[0, 1, 2], [3]]
    assert first_fit_decreasing_reference([3, 3, 3, 3], 10, max_per_pack=2) == [[0, 1], [2, 3]]
    assert first_fit_decreasing_reference([7, 5, 2], 10) == [[0, 2], [1]]


@pytest.mark.parametrize("args, match", [
    (([3, 9], 8), r"lengths must be at most capacity=8 each; got \[3, 9\]"),
    (([[1, 2], [3]], 8), r"lengths must be a non-empty 1-D sequence of integers >= 1"),
    (([3], 0), r"capacity must be an integer >= 1; got 0"),
])
def test_ffd_reference_bad_input(args, match):
    with pytest.raises(PadlabError, match=match):
        first_fit_decreasing_reference(*args)


def test_ffd_ties_and_max_per_pack_by_hand():
    assert as_lists(pack([3, 3, 3, 3], 10)) == [[0, 1, 2], [3]]
    assert as_lists(pack([3, 3, 3, 3], 10, max_per_pack=2)) == [[0, 1], [2, 3]]
    # First fit, not best fit: 2 goes to the first pack with room (7's), not the tighter one.
    assert as_lists(pack([7, 5, 2], 10)) == [[0, 2], [1]]


def test_spfhp_hand_example_most_room_first():
    # 7 opens A (room 3), 5 opens B (room 5); 2 fits both and goes to B, the shortest pack.
    r = shortest_pack_first_histogram([7, 5, 2], 10)
    assert as_lists(r) == [[0], [1, 2]]
    # 8, 8 open two packs (room 2 each); 5 fits neither: new pack (room 5). The 2s: first into
    # the room-5 pack (room 3), then again into it (room 3 > 2), not into the 8s.
    r = pack([8, 8, 5, 2, 2], 10, algorithm="spfhp")
    assert pack_length_tuples(r, [8, 8, 5, 2, 2]) == [(5, 2, 2), (8,), (8,)]
    assert pack_length_tuples(pack([8, 8, 5, 2, 2], 10), [8, 8, 5, 2, 2]) == [(5,), (8, 2), (8, 2)]


def test_spfhp_hand_example_bulk_split():
    # 6, 6 -> strategy 2 x [6] (room 4). 4 -> splits it: 1 x [6, 4] (full) + 1 x [6].
    # 3, 3 -> one into [6] (room 1, closed); the other opens [3] (room 7).
    # 2, 2, 2 -> [3] has the most room each time: [3, 2] (5), [3, 2, 2] (3), [3, 2, 2, 2] (1).
    lengths = [6, 6, 4, 3, 3, 2, 2, 2]
    r = pack(lengths, 10, algorithm="spfhp").validate()
    assert pack_length_tuples(r, lengths) == [(3, 2, 2, 2), (6, 3), (6, 4)]


def test_spfhp_max_per_pack_by_hand():
    # 4 x3 with at most 2 per pack: [4, 4] (closed by the limit) and [4] (room 6).
    # 1 x3: [4, 1] (closed), then no open pack: [1, 1].
    lengths = [4, 4, 4, 1, 1, 1]
    r = pack(lengths, 10, algorithm="spfhp", max_per_pack=2).validate()
    assert pack_length_tuples(r, lengths) == [(1, 1), (4, 1), (4, 4)]
    assert r.pack_sizes.max() == 2


def test_spfhp_fills_new_packs_like_one_at_a_time():
    # The paper's reference code would open one pack per leftover 2 here; one at a time, each 2
    # goes into the pack with the most room, which is the one just opened.
    r = pack([2] * 5, 10, algorithm="spfhp")
    assert as_lists(r) == [[0, 1, 2, 3, 4]]


def test_truncation_counts_lost_tokens():
    r = pack([3, 12, 5], 10, truncation=True)
    assert r.truncated_tokens == 2
    assert r.lengths.tolist() == [3, 10, 5]
    assert sorted(r.pack_tokens.tolist()) == [8, 10]
    r = pack(np.array([11, 25, 4], dtype=np.uint16), 10, algorithm="spfhp", truncation=True).validate()
    assert r.truncated_tokens == 1 + 15
    with pytest.raises(ValueError, match=r"lengths\[1\] must be at most capacity=10 .*; got 12"):
        pack([3, 12, 5], 10)


def test_real_corpora_efficiency_at_512():
    from padlab.data import load_corpus

    for name in ("wordnet", "fortunes"):
        lengths = load_corpus(name).lengths
        for algorithm in ("ffd", "spfhp"):
            r = pack(lengths, 512, algorithm=algorithm, truncation=True).validate()
            assert r.efficiency >= 0.995, (name, algorithm, r.efficiency)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

@st.composite
def packing_inputs(draw):
    capacity = draw(st.integers(1, 48))
    lengths = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=80))
    limit = draw(st.one_of(st.none(), st.integers(1, 5)))
    return lengths, capacity, limit


@FAST
@given(packing_inputs(), st.sampled_from(["ffd", "spfhp"]))
def test_full_assignment(inp, algorithm):
    lengths, capacity, limit = inp
    r = pack(lengths, capacity, algorithm=algorithm, max_per_pack=limit)
    r.validate(len(lengths))
    flat = np.concatenate(r.packs)
    assert sorted(flat.tolist()) == list(range(len(lengths)))      # nothing lost, nothing twice
    assert all(sum(lengths[i] for i in p) <= capacity for p in as_lists(r))
    if limit is not None:
        assert max(len(p) for p in r.packs) <= limit
    assert r.efficiency == pytest.approx(sum(lengths) / (r.n_packs * capacity))
    assert r.n_packs >= -(-sum(lengths) // capacity)


@FAST
@given(packing_inputs())
def test_ffd_equals_the_reference(inp):
    lengths, capacity, limit = inp
    assert as_lists(first_fit_decreasing(lengths, capacity, max_per_pack=limit)) == \
        first_fit_decreasing_reference(lengths, capacity, max_per_pack=limit)


@FAST
@given(packing_inputs())
def test_spfhp_equals_one_at_a_time_reference(inp):
    lengths, capacity, _ = inp
    r = shortest_pack_first_histogram(lengths, capacity)
    # Packs with equal room are interchangeable, so the pack totals do not depend on tie-breaks.
    assert sorted(r.pack_tokens.tolist()) == naive_spf(lengths, capacity)


def test_ffd_equals_reference_on_real_lengths():
    from padlab.data import load_corpus

    lengths = load_corpus("fortunes").subset(600, seed=1).lengths
    r = pack(lengths, 256, truncation=True)
    assert as_lists(r) == first_fit_decreasing_reference(np.minimum(lengths, 256), 256)


@FAST
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.sampled_from(["ffd", "spfhp"]))
def test_deterministic_and_input_not_mutated(lengths, algorithm):
    arr = np.array(lengths, dtype=np.int64)
    before = arr.copy()
    a = pack(arr, 40, algorithm=algorithm)
    b = pack(list(lengths), 40, algorithm=algorithm)
    assert np.array_equal(arr, before) and arr.flags.writeable
    assert as_lists(a) == as_lists(b)
    arr[:] = 1  # the result keeps its own copy
    assert a.lengths.tolist() == lengths


def test_torch_lengths_and_int_dtypes():
    for lengths in (torch.tensor([6, 5, 4, 3, 2, 1]), np.array([6, 5, 4, 3, 2, 1], dtype=np.uint8)):
        assert as_lists(pack(lengths, 7)) == [[0, 5], [1, 4], [2, 3]]


# ---------------------------------------------------------------------------------------------
# validate(): each offence is caught (negative controls for the full-assignment check)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("packs, lengths, capacity, limit, message", [
    ([[0, 1], [1]], [2, 2], 5, None, "sequence 1 is in 2 packs"),
    ([[0]], [2, 2], 5, None, "1 sequences are assigned, expected 2"),
    ([[0, 1]], [3, 3], 5, None, "pack 0 holds 6 tokens > capacity 5"),
    ([[0], [], [1]], [2, 2], 5, None, "pack 1 is empty"),
    ([[0, 1, 2]], [1, 1, 1], 5, 2, "pack 0 holds 3 sequences > max_per_pack 2"),
    ([[0, 5]], [1, 1], 5, None, r"indices must lie in \[0, 2\)"),
])
def test_validate_catches(packs, lengths, capacity, limit, message):
    bad = PackResult.from_packs(packs, lengths, capacity, max_per_pack=limit)
    with pytest.raises(AssertionError, match=message):
        bad.validate()


def test_validate_passes_a_good_hand_assignment():
    PackResult.from_packs([[1], [0, 2]], [4, 5, 1], 5, max_per_pack=2).validate()


# ---------------------------------------------------------------------------------------------
# Bad inputs to the packers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[[1, 2]]), r"lengths must be a non-empty 1-D sequence of integers >= 1"),
    (dict(lengths=[]), r"lengths must be a non-empty 1-D sequence"),
    (dict(lengths=[1.5, 2.0]), r"lengths must be a non-empty 1-D sequence of integers"),
    (dict(lengths=[True, False]), r"lengths must be a non-empty 1-D sequence of integers"),
    (dict(lengths=[3, 0, 2]), r"lengths must be .* >= 1; got \[3, 0, 2\]"),
    (dict(lengths=[3, -1, 2]), r"lengths must be .* >= 1; got \[3, -1, 2\]"),
    (dict(capacity=0), r"capacity must be an integer >= 1; got 0"),
    (dict(capacity=8.0), r"capacity must be an integer >= 1; got 8.0"),
    (dict(algorithm="bfd"), r"algorithm must be one of 'ffd', 'spfhp'; got 'bfd'"),
    (dict(max_per_pack=0), r"max_per_pack must be an integer >= 1; got 0"),
    (dict(truncation="yes"), r"truncation must be True or False; got 'yes'"),
    (dict(lengths=[3, 9]), r"lengths\[1\] must be at most capacity=8"),
])
def test_bad_pack_arguments(kwargs, match):
    args = dict(lengths=[3, 4], capacity=8)
    args.update(kwargs)
    lengths, capacity = args.pop("lengths"), args.pop("capacity")
    with pytest.raises(ValueError, match=match):
        pack(lengths, capacity, **args)


# ---------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------

TINY = [[{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8, 9], "labels": 0}],
        [{"input_ids": [10, 11, 12, 13], "labels": 2}]]


def test_collator_exact_tensors():
    b = PackedCollator(6)(TINY)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert b["seq_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    # Drawn by hand: a 3-block and a 2-block, the pad query sees itself only.
    assert b["block_mask"].int().tolist() == [
        [[1, 1, 1, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [0, 0, 0, 1, 1, 0],
         [0, 0, 0, 1, 1, 0],
         [0, 0, 0, 0, 0, 1]],
        [[1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [1, 1, 1, 1, 0, 0],
         [0, 0, 0, 0, 1, 0],
         [0, 0, 0, 0, 0, 1]]]
    assert b["block_mask"].dtype == torch.bool
    assert b["cu_seqlens"].tolist() == [0, 3, 5, 9] and b["cu_seqlens"].dtype == torch.int32
    assert b["max_seqlen"] == 4
    assert b["seq_lengths"].tolist() == [3, 2, 4]
    assert b["seq_starts"].tolist() == [0, 3, 6]
    assert b["labels"].tolist() == [1, 0, 2]
    assert int(b["truncated_tokens"]) == 0
    # cu_seqlens index the unpadded concatenation.
    assert b["input_ids"][b["attention_mask"].bool()].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_collator_token_labels_and_plain_lists():
    packs = [[{"input_ids": [5, 6, 7], "labels": [1, 2, 3]}, {"input_ids": [8, 9], "labels": [4, -100]}]]
    b = PackedCollator(7, ignore_index=-1)(packs)
    assert b["labels"].tolist() == [[1, 2, 3, 4, -100, -1, -1]]
    b = PackedCollator(4, pad_id=9, return_block_mask=False)([[[5, 6], [7]], [np.array([1, 2, 3, 4])]])
    assert b["input_ids"].tolist() == [[5, 6, 7, 9], [1, 2, 3, 4]]
    assert "labels" not in b and "block_mask" not in b
    assert b["seq_starts"].tolist() == [0, 2, 4]


def test_collator_truncation():
    b = PackedCollator(4, truncation=True)([[{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [1, 2, 3, 4, 5, 6]}]])
    assert b["input_ids"].tolist() == [[1, 2, 3, 4]] and b["labels"].tolist() == [[1, 2, 3, 4]]
    assert int(b["truncated_tokens"]) == 2
    with pytest.raises(ValueError, match=r"packs\[0\]\[0\]\['input_ids'\] must have at most capacity=4"):
        PackedCollator(4)([[{"input_ids": [1, 2, 3, 4, 5, 6]}]])


def crossings(allowed: torch.Tensor, seq_ids: torch.Tensor) -> int:
    """Count query/key pairs an attention mask allows across sequences (or from a real query to a pad)."""
    q, k = seq_ids[:, :, None], seq_ids[:, None, :]
    bad = allowed & (q >= 0) & (q != k)
    return int(bad.sum())


def test_block_mask_has_no_crossings_and_the_check_has_teeth():
    b = PackedCollator(6)(TINY)
    assert crossings(b["block_mask"], b["seq_ids"]) == 0
    # Negative control: the plain padding mask lets sequence 0 and 1 of row 0 see each other.
    am = b["attention_mask"].bool()
    padding_only = am[:, :, None] & am[:, None, :]
    assert crossings(padding_only, b["seq_ids"]) == 2 * 3 * 2


def test_block_mask_makes_attention_equal_to_attention_alone():
    torch.manual_seed(0)
    seqs = [[3, 5, 7, 11], [2, 4], [6, 8, 10], [1, 9, 12, 13, 14]]
    packs = [[seqs[0], seqs[1]], [seqs[2], seqs[3]]]
    b = PackedCollator(9)(packs)
    emb = torch.randn(16, 8)

    def attend(ids, mask):
        x = emb[ids]
        return F.scaled_dot_product_attention(x, x, x, attn_mask=mask)

    packed = attend(b["input_ids"], b["block_mask"])
    assert torch.isfinite(packed).all()  # pad queries see themselves: no empty softmax row
    flat = packed[b["attention_mask"].bool()]
    cu = b["cu_seqlens"].tolist()
    alone = torch.cat([attend(torch.tensor(s), None) for s in seqs])
    torch.testing.assert_close(flat, alone, rtol=1e-5, atol=1e-6)
    # Negative control: without the block mask, packed outputs differ from the outputs alone.
    am = b["attention_mask"].bool()
    leaky = attend(b["input_ids"], am[:, :, None] & am[:, None, :])[am]
    assert not torch.allclose(leaky[cu[0]:cu[1]], alone[cu[0]:cu[1]], atol=1e-4)


@st.composite
def packs_of_sequences(draw):
    capacity = draw(st.integers(1, 16))
    n_packs = draw(st.integers(1, 4))
    packs = []
    for _ in range(n_packs):
        room, pk = capacity, []
        while room and (not pk or draw(st.booleans())):
            L = draw(st.integers(1, room))
            pk.append(draw(st.lists(st.integers(0, 50), min_size=L, max_size=L)))
            room -= L
        packs.append(pk)
    return capacity, packs


@FAST
@given(packs_of_sequences())
def test_collator_matches_loop_reference(inp):
    capacity, packs = inp
    before = copy.deepcopy(packs)
    b = PackedCollator(capacity)(packs)
    assert packs == before  # input not mutated
    P = len(packs)
    ids = np.zeros((P, capacity), dtype=np.int64)
    pos = np.zeros((P, capacity), dtype=np.int64)
    sid = np.full((P, capacity), -1, dtype=np.int64)
    for p, pk in enumerate(packs):
        col = 0
        for j, s in enumerate(pk):
            for t, tok in enumerate(s):
                ids[p, col], pos[p, col], sid[p, col] = tok, t, j
                col += 1
    mask = np.zeros((P, capacity, capacity), dtype=bool)
    for p in range(P):
        for q in range(capacity):
            for k in range(capacity):
                mask[p, q, k] = (sid[p, q] >= 0 and sid[p, q] == sid[p, k]) or (sid[p, q] < 0 and q == k)
    lens = [len(s) for pk in packs for s in pk]
    assert b["input_ids"].numpy().tolist() == ids.tolist()
    assert b["position_ids"].numpy().tolist() == pos.tolist()
    assert b["seq_ids"].numpy().tolist() == sid.tolist()
    assert b["attention_mask"].sum(1).tolist() == [sum(len(s) for s in pk) for pk in packs]
    assert np.array_equal(b["block_mask"].numpy(), mask)
    assert b["cu_seqlens"].tolist() == np.concatenate([[0], np.cumsum(lens)]).tolist()
    assert b["seq_lengths"].tolist() == lens
    assert crossings(b["block_mask"], b["seq_ids"]) == 0
    flat_ids = b["input_ids"].flatten()
    assert flat_ids[b["seq_starts"]].tolist() == [s[0] for pk in packs for s in pk]


@pytest.mark.parametrize("packs, match", [
    ({"input_ids": [1]}, r"packs must be a list of packs"),
    ([], r"packs must hold at least one pack"),
    ([[]], r"packs\[0\] must hold at least one example"),
    ([[1, 2]], r"packs\[0\]\[0\] must be a 1-D sequence of integer token ids"),
    ([[{"input_ids": [1]}, [2]]], r"packs\[0\]\[1\] must be the same kind as the first example"),
    ([[{"ids": [1]}]], r"packs\[0\]\[0\] must have an 'input_ids' key"),
    ([[{"input_ids": [1], "weight": 1.0}]], r"packs\[0\]\[0\] must hold only 'input_ids' and 'labels'"),
    ([[{"input_ids": [1], "labels": 1}, {"input_ids": [2]}]], r"packs\[0\]\[1\] must have 'labels' exactly"),
    ([[{"input_ids": [1, 2], "labels": [1]}]], r"packs\[0\]\[0\]\['labels'\] must have one label per input id"),
    ([[{"input_ids": [1], "labels": [1]}, {"input_ids": [2], "labels": 0}]],
     r"packs\[0\]\[1\]\['labels'\] must be a per-token list"),
    ([[[1, 2, 3], [4, 5]]], r"packs\[0\] must fit in capacity=4 tokens \(it holds 5\)"),
    ([[[1.5, 2.0]]], r"packs\[0\]\[0\] must be a 1-D sequence of integer token ids"),
    ([[[-1, 2]]], r"packs\[0\]\[0\] must be a 1-D sequence of integer token ids >= 0"),
    ([[[]]], r"packs\[0\]\[0\] must hold at least one token"),
])
def test_bad_collator_input(packs, match):
    with pytest.raises(ValueError, match=match):
        PackedCollator(4)(packs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(capacity=0), r"capacity must be an integer >= 1; got 0"),
    (dict(capacity=4, pad_id=-1), r"pad_id must be an integer >= 0; got -1"),
    (dict(capacity=4, ignore_index=1.5), r"ignore_index must be an integer; got 1.5"),
    (dict(capacity=4, return_block_mask="yes"), r"return_block_mask must be True or False; got 'yes'"),
    (dict(capacity=4, truncation=1), r"truncation must be True or False; got 1"),
])
def test_bad_collator_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PackedCollator(**kwargs)


# ---------------------------------------------------------------------------------------------
# Dataset + DataLoader
# ---------------------------------------------------------------------------------------------

def test_dataloader_epoch_sees_every_sequence_once():
    from padlab.data import load_corpus

    corpus = load_corpus("wordnet").subset(300, seed=0)
    result = pack(corpus.lengths, 128, algorithm="spfhp").validate()
    ds = PackedDataset(corpus, result)
    assert len(ds) == result.n_packs
    assert [e["input_ids"] for e in ds[0]] == [corpus[int(i)]["input_ids"] for i in result.packs[0]]
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=PackedCollator(128),
                        generator=torch.Generator().manual_seed(0))
    seen_labels, tokens = [], 0
    for batch in loader:
        assert crossings(batch["block_mask"], batch["seq_ids"]) == 0
        seen_labels.extend(batch["labels"].tolist())
        tokens += int(batch["attention_mask"].sum())
    assert tokens == int(corpus.lengths.sum())
    assert sorted(seen_labels) == sorted(corpus.labels.tolist())


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match=r"packs\[1\] must be a non-empty list of indices in \[0, 3\)"):
        PackedDataset([1, 2, 3], [[0], [3]])
    with pytest.raises(ValueError, match=r"packs must hold at least one pack"):
        PackedDataset([1, 2, 3], [])
    with pytest.raises(ValueError, match=r"dataset must be a map-style dataset"):
        PackedDataset(iter([1]), [[0]])
    with pytest.raises(ValueError, match=r"p must be in \[-1, 1\); got 1"):
        PackedDataset([1, 2], [[0, 1]])[1]


# ---------------------------------------------------------------------------------------------
# The "packed" strategy
# ---------------------------------------------------------------------------------------------

def test_packed_strategy():
    from padlab.strategies import STRATEGIES, batch_shapes, waste_table

    assert "packed" in STRATEGIES
    lengths = np.array([6, 5, 4, 3, 2, 1, 9, 2])
    shapes, truncated, block = batch_shapes("packed", lengths, batch_size=4, max_length=7, seed=0)
    assert truncated == 2 and block is False
    # rows = round(4 * mean kept length (30 / 8) / 7) = round(2.14) = 2 packs per batch
    assert all(s.rows <= 2 and s.width == 7 for s in shapes) and shapes[0].rows == 2
    assert sum(s.seq_lengths.size for s in shapes) == 8
    again, _, _ = batch_shapes("packed", lengths, batch_size=4, max_length=7, seed=0)
    other, _, _ = batch_shapes("packed", lengths, batch_size=4, max_length=7, seed=3)
    key = [s.seq_lengths.tolist() for s in shapes]
    assert key == [s.seq_lengths.tolist() for s in again]
    assert key != [s.seq_lengths.tolist() for s in other]
    dense, varlen = waste_table(lengths, ("packed", "packed-varlen"), batch_size=4, max_length=7)
    assert dense.efficiency == varlen.efficiency == 30 / 35
    assert varlen.attention_efficiency == 1.0 and dense.attention_efficiency < 1.0
    with pytest.raises(ValueError, match="varlen must not be given to strategy 'packed'"):
        batch_shapes("packed", lengths, varlen="no")
    with pytest.raises(ValueError, match=r"varlen must be an option of one of the strategies \('packed',\); got True"):
        waste_table(lengths, ("packed",), varlen=True)


def test_class_order_is_a_stable_sort_in_every_path():
    from padlab.packing import _class_order

    rng = np.random.default_rng(0)
    # one-byte keys; <= 256 classes with large values; > 256 classes in two 2**21 chunks; huge values
    for n, high in ((5000, 200), (5000, 10**6), (2_500_000, 2000), (3000, 10**12)):
        lengths = rng.integers(1, high, n)
        values = np.unique(lengths)
        if high == 10**6:
            lengths = values[rng.integers(0, 100, n)]
            values = np.unique(lengths)
        assert np.array_equal(_class_order(lengths, values), np.argsort(lengths, kind="stable")), (n, high)


# Found by an outside check: None gave "'NoneType' object is not iterable", ragged lengths numpy's
# "inhomogeneous shape", uint64 lengths >= 2**63 wrapped to negatives.
@pytest.mark.parametrize("call, match", [
    (lambda: PackedCollator(8)(None), r"packs must be a list of packs \(each a list of examples\); got None"),
    (lambda: PackedCollator(8)([None]), r"packs\[0\] must be a list of examples; got None"),
    (lambda: PackedCollator(8)([[None]]), r"packs\[0\]\[0\] must be a 1-D sequence of integer token ids >= 0; got None"),
    (lambda: pack([[1, 2], [3]], 8), r"lengths must be a non-empty 1-D sequence of integers >= 1; got \[\[1, 2\], \[3\]\]"),
    (lambda: pack(np.array([3, 2**63], dtype=np.uint64), 8, truncation=True),
     r"lengths must be a non-empty 1-D sequence of integers >= 1 that fit in int64"),
    (lambda: pack(None, 8), r"lengths must be a non-empty 1-D sequence of integers >= 1; got None"),
])
def test_bad_input_found_outside(call, match):
    with pytest.raises(PadlabError, match=match):
        call()


def test_max_seqlen_is_the_one_int_and_everything_else_a_tensor():
    b = PackedCollator(7)(TINY)
    assert type(b["max_seqlen"]) is int and b["max_seqlen"] == 4
    assert all(isinstance(v, torch.Tensor) for k, v in b.items() if k != "max_seqlen")
