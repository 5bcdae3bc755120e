"""THE strategy registry: every name, what each plans on a tiny length list worked out by hand, pools stated."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from padlab import strategies
from padlab.strategies import STRATEGIES, plan

L = np.array([5, 1, 4, 2, 8, 3, 7, 6])   # index i has length L[i]


def _length_sets(batches):
    return sorted(tuple(sorted(L[b].tolist())) for b in batches)


def test_every_name_in_table_order():
    assert list(STRATEGIES) == ["fixed", "dynamic", "dynamic-multiple", "sorted", "bucketed", "token-budget",
                                "packed", "packed-varlen", "packed-flex"]
    for name, spec in STRATEGIES.items():
        assert spec.name == name and spec.description and dataclasses.is_dataclass(spec)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.name = "x"
        p = plan(name, L, batch_size=2, max_length=10)
        assert p.strategy == name and p.packs == spec.packs and len(p) > 0
    assert {n for n, s in STRATEGIES.items() if s.packs} == {"packed", "packed-varlen", "packed-flex"}


def test_random_batches_are_a_seeded_permutation():
    perm = np.random.default_rng(3).permutation(8)   # the plain reference
    for name in ("fixed", "dynamic", "dynamic-multiple"):
        p = plan(name, L, batch_size=3, max_length=10, seed=3)
        assert [b.tolist() for b in p.batches] == [perm[:3].tolist(), perm[3:6].tolist(), perm[6:].tolist()]
        assert p.pool_size is None and p.pool_unit is None
    assert len(plan("fixed", L, batch_size=3, max_length=10, drop_last=True)) == 2
    other = plan("fixed", L, batch_size=3, max_length=10, seed=3, epoch=1)
    assert [b.tolist() for b in other.batches] != [b.tolist() for b in plan("fixed", L, batch_size=3, seed=3).batches]


def test_sorted_is_one_global_sort():
    p = plan("sorted", L, batch_size=2, max_length=10, seed=1)
    # sorted lengths 1..8 cut in twos: {1,2}, {3,4}, {5,6}, {7,8} (batch order shuffled)
    assert _length_sets(p.batches) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert (p.pool_size, p.pool_unit, p.options["mega_batch"]) == (8, "sequences", None)
    # truncation first: with max_length 4 the lengths 4..8 tie at 4 and may share batches; 1, 2, 3 stay apart
    q = plan("sorted", L, batch_size=2, max_length=4)
    assert _length_sets(q.batches)[0] == (1, 2)


def test_bucketed_pools_are_mega_batch_times_batch_size():
    p = plan("bucketed", L, batch_size=2, max_length=10, mega_batch=2, seed=0)
    assert (p.pool_size, p.pool_unit, p.options["mega_batch"]) == (4, "sequences", 2)
    # a pool as large as the corpus is the global sort
    whole = plan("bucketed", L, batch_size=2, max_length=10, mega_batch=4)
    assert whole.pool_size == 8 and _length_sets(whole.batches) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    with pytest.raises(ValueError, match=r"mega_batch must be an integer >= 1 for 'bucketed' \(a global sort is the 'sorted' strategy\); got None"):
        plan("bucketed", L, mega_batch=None)


def test_token_budget_pools_and_budget():
    p = plan("token-budget", L, batch_size=2, max_length=10, max_tokens=10, mega_batch=2)
    assert (p.pool_size, p.pool_unit, p.options["max_tokens"]) == (20, "tokens", 10)
    for b in p.batches:
        assert len(b) * L[b].max() <= 10
    assert sorted(np.concatenate(p.batches).tolist()) == list(range(8))
    g = plan("token-budget", L, max_length=10, max_tokens=10, mega_batch=None)
    assert (g.pool_size, g.pool_unit) == (8, "sequences")


def test_packed_is_first_fit_decreasing_by_hand():
    # FFD at capacity 10 over 8,7,6,5,4,3,2,1: 8 | 7 | 6 | 5, then 4 -> 6, 3 -> 7, 2 -> 8, 1 -> 5.
    for name, block in (("packed", False), ("packed-varlen", True), ("packed-flex", True)):
        p = plan(name, L, batch_size=8, max_length=10, rows=4)
        assert len(p.batches) == 1 and p.block_diagonal is block and p.pool_size is None
        assert _length_sets(p.batches[0]) == [(1, 5), (2, 8), (3, 7), (4, 6)]
    shapes, truncated, block = strategies.batch_shapes("packed-varlen", L, batch_size=8, max_length=10, rows=4)
    assert (shapes[0].rows, shapes[0].width, truncated, block) == (4, 10, 0, True)
    within = plan("packed", L, batch_size=4, max_length=10, within_batch=True)
    assert len(within.batches) == 2 and all(sum(L[p].sum() for p in b) <= 4 * 10 for b in within.batches)


def test_dynamic_multiple_rounds_widths():
    shapes, _, _ = strategies.batch_shapes("dynamic-multiple", L, batch_size=2, max_length=10, pad_to_multiple_of=4)
    p = plan("dynamic-multiple", L, batch_size=2, max_length=10, pad_to_multiple_of=4)
    assert [s.width for s in shapes] == [min(10, -(-int(L[b].max()) // 4) * 4) for b in p.batches]
    assert plan("dynamic-multiple", L).options["pad_to_multiple_of"] == 8


def test_waste_table_defaults_to_every_registry_name():
    rows = strategies.waste_table(L, batch_size=2, max_length=10)
    assert [r.strategy for r in rows] == list(STRATEGIES)
    by = {r.strategy: r for r in rows}
    assert by["sorted"].efficiency == pytest.approx(36 / (2 * (2 + 4 + 6 + 8)))   # hand: 36 real of 40 slots
    assert by["packed-varlen"].attention_efficiency == 1.0


@pytest.mark.parametrize("call, match", [
    (lambda: plan("shuffled", L), r"strategy must be one of 'fixed', .*; got 'shuffled'"),
    (lambda: plan("fixed", L, mega_batch=2), r"mega_batch must not be given to strategy 'fixed'"),
    (lambda: plan("fixed", L, epoch=-1), r"epoch must be an integer >= 0; got -1"),
    (lambda: plan("fixed", [[1, 2], [3]]), r"lengths must be"),
    (lambda: plan("packed", L, rows=0), r"rows must be an integer >= 1; got 0"),
    (lambda: plan("fixed", L, drop_last="yes"), r"drop_last must be"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- plan_grids: which text fills each slot (the data of viz.layout_schematic) ----------------------

def test_plan_grids_padded_rows_by_hand():
    from padlab.strategies import Plan, plan_grids

    lengths = np.array([5, 3, 7, 2])
    p = Plan("dynamic", [np.array([1, 0]), np.array([2, 3])], False, 6, False, None, False, None, None, 0)
    got = plan_grids(p, lengths)
    # batch 0: width max(3, 5) = 5; batch 1: width max(7, 2) cut to max_length 6, text 2 truncated
    assert [g.tolist() for g in got] == [[[1, 1, 1, -1, -1], [0, 0, 0, 0, 0]], [[2] * 6, [3, 3, -1, -1, -1, -1]]]
    fixed = plan_grids(Plan("fixed", [np.array([3])], False, 4, True, None, False, None, None, 0), lengths)
    assert fixed[0].tolist() == [[3, 3, -1, -1]]
    multiple = plan_grids(Plan("dynamic-multiple", [np.array([1])], False, 64, False, 4, False, None, None, 0), lengths)
    assert multiple[0].tolist() == [[1, 1, 1, -1]]                 # 3 rounded up to a multiple of 4


def test_plan_grids_packs_back_to_back_and_batches_limit():
    from padlab.strategies import Plan, plan_grids

    lengths = np.array([5, 3, 7, 2])
    p = Plan("packed", [[np.array([2, 3]), np.array([0, 1])], [np.array([1])]], True, 9, True, None, False, None,
             None, 0)
    got = plan_grids(p, lengths, batches=1)
    assert len(got) == 1 and got[0].tolist() == [[2] * 7 + [3] * 2, [0] * 5 + [1] * 3 + [-1]]


def test_plan_grids_match_plan_shapes_on_real_plans():
    from padlab.data import load_corpus
    from padlab.strategies import plan_grids

    lengths = load_corpus("wordnet").lengths[:200]
    for name in STRATEGIES:
        p = plan(name, lengths, batch_size=8, max_length=32, seed=0)
        shapes, _ = strategies.plan_shapes(p, lengths)
        for g, s in zip(plan_grids(p, lengths), shapes):
            assert g.shape == (s.rows, s.width)
            texts, counts = np.unique(g[g >= 0], return_counts=True)
            assert (counts == np.minimum(lengths[texts], g.shape[1])).all()     # each text whole, or cut
            assert int((g >= 0).sum()) == int(s.seq_lengths.sum())


def test_plan_grids_refuses_bad_batches():
    from padlab.strategies import plan_grids

    from padlab._validate import PadlabError

    with pytest.raises(PadlabError, match="batches"):
        plan_grids(plan("dynamic", np.array([3, 4])), np.array([3, 4]), batches=0)
