"""Tests for padlab.padding: exact tensors by hand, a loop reference, properties, DataLoader, bad inputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab._validate import PadlabError
from padlab.data import load_corpus
from padlab.padding import PaddingCollator, pad_batch, pad_labels

T = torch.tensor
SEQS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]


def eq(a: torch.Tensor, b) -> None:
    b = torch.as_tensor(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a, b)


# ---------------------------------------------------------------------------------------------
# Exact tensors derived by hand
# ---------------------------------------------------------------------------------------------

def test_right_padding_longest():
    b = pad_batch(SEQS)
    eq(b["input_ids"], [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [9, 10, 11, 12, 13]])
    eq(b["attention_mask"], [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    eq(b["position_ids"], [[0, 1, 2, 0, 0], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4]])
    eq(b["seq_lengths"], [3, 1, 5])
    eq(b["truncated_tokens"], T(0))
    assert set(b) == {"input_ids", "attention_mask", "position_ids", "seq_lengths", "truncated_tokens"}


def test_left_padding_longest_positions_start_at_first_real_token():
    b = pad_batch(SEQS, padding_side="left", pad_id=1)
    eq(b["input_ids"], [[1, 1, 5, 6, 7], [1, 1, 1, 1, 8], [9, 10, 11, 12, 13]])
    eq(b["attention_mask"], [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    eq(b["position_ids"], [[0, 0, 0, 1, 2], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4]])


def test_left_padding_negative_control_naive_positions_are_wrong():
    # Without the shift, arange(W) positions give the first real token of a short row position 2.
    b = pad_batch(SEQS, padding_side="left")
    naive = torch.arange(b["input_ids"].shape[1]).expand_as(b["input_ids"])
    real = b["attention_mask"].bool()
    assert naive[0][real[0]].tolist() != [0, 1, 2]
    assert b["position_ids"][0][real[0]].tolist() == [0, 1, 2]


def test_fixed_padding_max_length():
    b = pad_batch(SEQS, padding="max_length", max_length=6)
    eq(b["input_ids"], [[5, 6, 7, 0, 0, 0], [8, 0, 0, 0, 0, 0], [9, 10, 11, 12, 13, 0]])
    eq(b["attention_mask"], [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])


def test_truncation_right_and_left():
    b = pad_batch(SEQS, max_length=3)
    eq(b["input_ids"], [[5, 6, 7], [8, 0, 0], [9, 10, 11]])
    eq(b["seq_lengths"], [3, 1, 3])
    eq(b["truncated_tokens"], T(2))
    b = pad_batch(SEQS, max_length=3, truncation_side="left")
    eq(b["input_ids"], [[5, 6, 7], [8, 0, 0], [11, 12, 13]])
    eq(b["position_ids"], [[0, 1, 2], [0, 0, 0], [0, 1, 2]])
    eq(b["truncated_tokens"], T(2))


def test_truncation_left_with_left_padding_fixed():
    b = pad_batch(SEQS, padding="max_length", max_length=4, padding_side="left", truncation_side="left")
    eq(b["input_ids"], [[0, 5, 6, 7], [0, 0, 0, 8], [10, 11, 12, 13]])
    eq(b["position_ids"], [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
    eq(b["truncated_tokens"], T(1))


def test_longest_with_max_length_only_truncates():
    # Dynamic padding never widens to max_length: the widest kept row sets the width.
    b = pad_batch([[5, 6], [7]], max_length=10)
    eq(b["input_ids"], [[5, 6], [7, 0]])


def test_no_truncation_with_longest_ignores_max_length():
    b = pad_batch(SEQS, max_length=2, truncation=False)
    eq(b["seq_lengths"], [3, 1, 5])
    assert b["input_ids"].shape == (3, 5)


def test_pad_to_multiple_of():
    b = pad_batch(SEQS, pad_to_multiple_of=4)
    eq(b["input_ids"], [[5, 6, 7, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0], [9, 10, 11, 12, 13, 0, 0, 0]])
    b = pad_batch(SEQS, pad_to_multiple_of=4, padding_side="left")
    eq(b["input_ids"][1], [0, 0, 0, 0, 0, 0, 0, 8])
    eq(b["position_ids"][0], [0, 0, 0, 0, 0, 0, 1, 2])
    # Already a multiple: unchanged; fixed width is rounded up too (as Hugging Face does).
    assert pad_batch(SEQS, pad_to_multiple_of=5)["input_ids"].shape == (3, 5)
    assert pad_batch(SEQS, padding="max_length", max_length=6, pad_to_multiple_of=8)["input_ids"].shape == (3, 8)


def test_return_position_ids_false():
    assert "position_ids" not in pad_batch(SEQS, return_position_ids=False)


def test_accepts_arrays_tensors_and_generators():
    seqs = [np.array([5, 6, 7], dtype=np.int32), T([8], dtype=torch.int16), range(9, 14)]
    b = pad_batch(seqs)
    eq(b["input_ids"], pad_batch(SEQS)["input_ids"])
    b = pad_batch(iter(SEQS))
    eq(b["input_ids"], pad_batch(SEQS)["input_ids"])
    b = pad_batch(T([[1, 2], [3, 4]]))  # a 2-D tensor is a batch of rows
    eq(b["input_ids"], [[1, 2], [3, 4]])


def test_never_mutates_input():
    arr = np.array([5, 6, 7, 8])
    ten = T([9, 10, 11])
    seqs = [[1, 2, 3], arr, ten]
    before = copy.deepcopy(seqs)
    b = pad_batch(seqs, max_length=2, truncation_side="left", padding_side="left")
    b["input_ids"].fill_(77)  # the output must not alias the caller's memory either
    assert seqs[0] == before[0]
    assert np.array_equal(arr, before[1]) and torch.equal(ten, before[2])


def test_pad_labels_right_and_left():
    eq(pad_labels([[1, 2], [3], [4, 5, 6]], 4),
       [[1, 2, -100, -100], [3, -100, -100, -100], [4, 5, 6, -100]])
    eq(pad_labels([[1, 2], [-100, 3]], 3, padding_side="left", ignore_index=-1),
       [[-1, 1, 2], [-1, -100, 3]])


def test_pad_labels_never_mutates_input():
    labels = [[1, 2], [3]]
    before = copy.deepcopy(labels)
    pad_labels(labels, 3)
    assert labels == before


# ---------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------

def test_collator_dicts_sequence_labels_and_extra_keys():
    ex = [{"input_ids": [5, 6, 7], "labels": 2, "weight": 1},
          {"input_ids": [8], "labels": 0, "weight": 0.5}]
    before = copy.deepcopy(ex)
    b = PaddingCollator()(ex)
    assert ex == before
    eq(b["input_ids"], [[5, 6, 7], [8, 0, 0]])
    eq(b["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    eq(b["labels"], T([2, 0]))
    eq(b["weight"], T([1.0, 0.5]))


def test_collator_token_labels_truncated_with_ids_and_padded():
    ex = [{"input_ids": [5, 6, 7, 8], "labels": [1, 2, 3, 4]},
          {"input_ids": [9], "labels": [7]}]
    before = copy.deepcopy(ex)
    b = PaddingCollator(max_length=3, truncation_side="left", padding_side="left")(ex)
    assert ex == before
    eq(b["input_ids"], [[6, 7, 8], [0, 0, 9]])
    eq(b["labels"], [[2, 3, 4], [-100, -100, 7]])
    eq(b["truncated_tokens"], T(1))
    b = PaddingCollator(padding="max_length", max_length=4, pad_to_multiple_of=3, ignore_index=-1)(ex)
    eq(b["input_ids"], [[5, 6, 7, 8, 0, 0], [9, 0, 0, 0, 0, 0]])
    eq(b["labels"], [[1, 2, 3, 4, -1, -1], [7, -1, -1, -1, -1, -1]])


def test_collator_plain_lists():
    b = PaddingCollator(padding_side="left")([[5, 6], np.array([7])])
    eq(b["input_ids"], [[5, 6], [0, 7]])
    assert "labels" not in b


def test_dataloader_over_wordnet_subset():
    corpus = load_corpus("wordnet").subset(64)
    loader = torch.utils.data.DataLoader(corpus, batch_size=8, shuffle=False, collate_fn=PaddingCollator())
    seen = 0
    for k, batch in enumerate(loader):
        idx = range(8 * k, 8 * k + 8)
        lens = corpus.lengths[list(idx)]
        assert batch["input_ids"].shape == (8, lens.max())
        eq(batch["seq_lengths"], torch.from_numpy(lens.astype(np.int64)))
        eq(batch["labels"], torch.from_numpy(corpus.labels[list(idx)].copy()))
        for row, i in enumerate(idx):
            real = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            assert real.tolist() == corpus[i]["input_ids"]
        seen += 8
    assert seen == 64


# ---------------------------------------------------------------------------------------------
# Properties, against a loop reference written here
# ---------------------------------------------------------------------------------------------

def reference(seqs, padding, max_length, mult, pside, trunc, tside, pad_id):
    kept = []
    for s in seqs:
        s = list(s)
        if trunc and max_length is not None and len(s) > max_length:
            s = s[:max_length] if tside == "right" else s[len(s) - max_length:]
        kept.append(s)
    width = max_length if padding == "max_length" else max(len(s) for s in kept)
    if mult:
        while width % mult:
            width += 1
    ids, mask, pos = [], [], []
    for s in kept:
        pad = width - len(s)
        if pside == "right":
            ids.append(s + [pad_id] * pad)
            mask.append([1] * len(s) + [0] * pad)
            pos.append(list(range(len(s))) + [0] * pad)
        else:
            ids.append([pad_id] * pad + s)
            mask.append([0] * pad + [1] * len(s))
            pos.append([0] * pad + list(range(len(s))))
    return kept, ids, mask, pos, width


seqs_st = st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=12), min_size=1, max_size=6)
opts_st = st.fixed_dictionaries({
    "padding": st.sampled_from(["longest", "max_length"]),
    "max_length": st.integers(1, 14),
    "pad_to_multiple_of": st.one_of(st.none(), st.integers(1, 5)),
    "padding_side": st.sampled_from(["right", "left"]),
    "truncation_side": st.sampled_from(["right", "left"]),
    "pad_id": st.integers(0, 3),
})


@settings(max_examples=100, deadline=None)
@given(seqs=seqs_st, opts=opts_st, use_max=st.booleans())
def test_property_matches_reference_and_nothing_lost(seqs, opts, use_max):
    if not use_max and opts["padding"] == "longest":
        opts = {**opts, "max_length": None}
    before = copy.deepcopy(seqs)
    b = pad_batch(seqs, **opts)
    assert seqs == before
    kept, ids, mask, pos, width = reference(seqs, opts["padding"], opts["max_length"], opts["pad_to_multiple_of"],
                                            opts["padding_side"], True, opts["truncation_side"], opts["pad_id"])
    eq(b["input_ids"], ids)
    eq(b["attention_mask"], mask)
    eq(b["position_ids"], pos)
    # Width rule.
    base = opts["max_length"] if opts["padding"] == "max_length" else max(map(len, kept))
    m = opts["pad_to_multiple_of"] or 1
    assert width == -(-base // m) * m and b["input_ids"].shape == (len(seqs), width)
    # No token lost or changed: the mask picks out exactly the kept tokens, in order.
    am = b["attention_mask"].bool()
    for r, s in enumerate(kept):
        assert b["input_ids"][r][am[r]].tolist() == s
        assert b["position_ids"][r][am[r]].tolist() == list(range(len(s)))
    eq(b["attention_mask"].sum(1), b["seq_lengths"])
    eq(b["seq_lengths"], T([len(s) for s in kept]))
    eq(b["truncated_tokens"], T(sum(map(len, seqs)) - sum(map(len, kept))))


@settings(max_examples=60, deadline=None)
@given(seqs=seqs_st, mult=st.one_of(st.none(), st.integers(1, 5)))
def test_property_same_width_and_tokens_for_both_sides(seqs, mult):
    r = pad_batch(seqs, pad_to_multiple_of=mult)
    left = pad_batch(seqs, pad_to_multiple_of=mult, padding_side="left")
    assert r["input_ids"].shape == left["input_ids"].shape
    eq(r["seq_lengths"], left["seq_lengths"])
    # Each left row is its right row rotated by the pad count.
    for i in range(len(seqs)):
        pad = r["input_ids"].shape[1] - int(r["seq_lengths"][i])
        eq(left["input_ids"][i], torch.roll(r["input_ids"][i], pad))
        eq(left["attention_mask"][i], torch.roll(r["attention_mask"][i], pad))


@settings(max_examples=60, deadline=None)
@given(seqs=seqs_st, opts=opts_st)
def test_property_token_labels_stay_aligned_with_ids(seqs, opts):
    # Labels = ids + 1000: after collation every real label must still sit on its own id.
    ex = [{"input_ids": s, "labels": [t + 1000 for t in s]} for s in seqs]
    before = copy.deepcopy(ex)
    b = PaddingCollator(**opts)(ex)
    assert ex == before
    am = b["attention_mask"].bool()
    eq(b["labels"][am], b["input_ids"][am] + 1000)
    assert (b["labels"][~am] == -100).all()


def test_mask_check_negative_control():
    # The extraction check above would catch a wrong mask: a right-padding mask on left-padded ids
    # picks pads and loses tokens.
    b = pad_batch(SEQS, padding_side="left")
    wrong = pad_batch(SEQS)["attention_mask"].bool()
    assert b["input_ids"][0][wrong[0]].tolist() != SEQS[0]
    assert b["input_ids"][0][b["attention_mask"][0].bool()].tolist() == SEQS[0]


# ---------------------------------------------------------------------------------------------
# Bad input: one test per kind
# ---------------------------------------------------------------------------------------------

def test_error_empty_batch():
    with pytest.raises(ValueError, match=r"sequences must hold at least one sequence; got \[\]"):
        pad_batch([])


def test_error_empty_sequence():
    with pytest.raises(ValueError, match=r"sequences\[1\] must hold at least one token"):
        pad_batch([[1], []])


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_error_max_length(bad):
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 1; got"):
        pad_batch(SEQS, max_length=bad)


def test_error_max_length_padding_without_max_length():
    with pytest.raises(ValueError, match=r'max_length must be given when padding="max_length"; got None'):
        pad_batch(SEQS, padding="max_length")


def test_error_no_truncation_too_long_for_max_length():
    with pytest.raises(ValueError, match=r"sequences\[2\] must have at most max_length=4 tokens when truncation=False"):
        pad_batch(SEQS, padding="max_length", max_length=4, truncation=False)


@pytest.mark.parametrize("bad", [[1, 2.0], [1.5], ["a", "b"], "abc", [[1, 2], [3, 4]], [[1], [2, 3]],
                                 [1, None], np.array([1.0, 2.0]), T([1.0]), T([True]), [True, False],
                                 [2 ** 70], 7])
def test_error_non_integer_ids(bad):
    with pytest.raises(ValueError, match=r"sequences\[0\] must be a 1-D sequence of integer token ids >= 0"):
        pad_batch([bad])


def test_error_negative_ids():
    with pytest.raises(ValueError, match=r"sequences\[1\] must be a 1-D sequence of integer token ids >= 0; got \[3, -1\]"):
        pad_batch([[1], [3, -1]])


def test_error_unknown_padding():
    with pytest.raises(ValueError, match=r"padding must be one of 'longest', 'max_length'; got 'max'"):
        pad_batch(SEQS, padding="max")


def test_error_unknown_padding_side():
    with pytest.raises(ValueError, match=r"padding_side must be one of 'right', 'left'; got 'middle'"):
        pad_batch(SEQS, padding_side="middle")


def test_error_unknown_truncation_side():
    with pytest.raises(ValueError, match=r"truncation_side must be one of 'right', 'left'; got 'both'"):
        pad_batch(SEQS, truncation_side="both")


@pytest.mark.parametrize("bad", [0, -8, 2.0])
def test_error_pad_to_multiple_of(bad):
    with pytest.raises(ValueError, match=r"pad_to_multiple_of must be an integer >= 1"):
        pad_batch(SEQS, pad_to_multiple_of=bad)


def test_error_pad_id():
    with pytest.raises(ValueError, match=r"pad_id must be an integer >= 0; got -1"):
        pad_batch(SEQS, pad_id=-1)


def test_error_truncation_not_bool():
    with pytest.raises(ValueError, match=r"truncation must be True or False; got 'yes'"):
        pad_batch(SEQS, truncation="yes")


def test_error_labels_length_mismatch():
    ex = [{"input_ids": [1, 2], "labels": [0, 1]}, {"input_ids": [3, 4, 5], "labels": [0, 1]}]
    with pytest.raises(ValueError, match=r"examples\[1\]\['labels'\] must have one label per input id \(3\), not 2"):
        PaddingCollator()(ex)


def test_error_pad_labels_longer_than_width():
    with pytest.raises(ValueError, match=r"labels\[0\] must hold at most width=2 labels \(it has 3\)"):
        pad_labels([[1, 2, 3]], 2)


def test_error_pad_labels_non_integer():
    with pytest.raises(ValueError, match=r"labels\[1\] must be a 1-D sequence of integers; got \[0.5\]"):
        pad_labels([[1], [0.5]], 2)


def test_error_mixed_token_and_sequence_labels():
    with pytest.raises(ValueError, match=r"examples\[1\]\['labels'\] must be a per-token list"):
        PaddingCollator()([{"input_ids": [1], "labels": [0]}, {"input_ids": [2], "labels": 3}])


def test_error_mixed_dict_and_list_examples():
    with pytest.raises(ValueError, match=r"examples\[1\] must be a dict like examples\[0\]"):
        PaddingCollator()([{"input_ids": [1]}, [2, 3]])
    with pytest.raises(ValueError, match=r"examples\[1\] must be a sequence of ids like examples\[0\]"):
        PaddingCollator()([[2, 3], {"input_ids": [1]}])


def test_error_dict_missing_input_ids():
    with pytest.raises(ValueError, match=r"examples\[0\] must have an 'input_ids' key"):
        PaddingCollator()([{"ids": [1, 2], "labels": 0}])


def test_error_examples_with_different_keys():
    with pytest.raises(ValueError, match=r"examples\[1\] must have the same keys as examples\[0\]"):
        PaddingCollator()([{"input_ids": [1], "labels": 0}, {"input_ids": [2]}])


def test_error_example_carries_built_key():
    with pytest.raises(ValueError, match=r"must not carry 'attention_mask'; the collator builds it"):
        PaddingCollator()([{"input_ids": [1], "attention_mask": [1]}])


def test_error_non_scalar_extra_key():
    with pytest.raises(ValueError, match=r"examples\[0\]\['weight'\] must be an int or a float"):
        PaddingCollator()([{"input_ids": [1], "weight": "heavy"}])


def test_error_collator_empty_batch():
    with pytest.raises(ValueError, match=r"examples must hold at least one example; got \[\]"):
        PaddingCollator()([])


def test_error_collator_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match=r'max_length must be given when padding="max_length"'):
        PaddingCollator(padding="max_length")
    with pytest.raises(ValueError, match=r"ignore_index must be an integer; got 0.5"):
        PaddingCollator(ignore_index=0.5)


# Found by an outside check: None where a list belongs gave "'NoneType' object is not iterable".
@pytest.mark.parametrize("call, match", [
    (lambda: pad_batch(None), r"sequences must be a list of sequences; got None"),
    (lambda: PaddingCollator()(None), r"examples must be a list of examples; got None"),
    (lambda: pad_labels(None, 4), r"labels must be a list of sequences; got None"),
    (lambda: pad_batch([[1, 2], None]), r"sequences\[1\] must be a 1-D sequence of integer token ids >= 0; got None"),
    (lambda: pad_batch(5), r"sequences must be a list of sequences; got 5"),
])
def test_error_none_instead_of_a_list(call, match):
    with pytest.raises(PadlabError, match=match):
        call()


def test_every_collated_value_is_a_tensor():
    # So {k: v.to(device) for k, v in batch.items()} works on every value.
    b = PaddingCollator()([{"input_ids": [1, 2], "labels": 1, "weight": 0.5}, {"input_ids": [3], "labels": 0,
                                                                              "weight": 2.0}])
    assert set(b) == {"input_ids", "attention_mask", "position_ids", "seq_lengths", "truncated_tokens",
                      "labels", "weight"}
    assert all(isinstance(v, torch.Tensor) for v in b.values())
