"""padlab.bench's result readers: load_result, best_row, speedups, rows_where, loss_at, padded_widths, flop_shares."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab import bench
from padlab.data import load_corpus


def _row(strategy, precision, tps, compiled=False, **kw):
    return {"strategy": strategy, "precision": precision, "real_tokens_per_s": tps, "compiled": compiled, **kw}


RESULT = {"device": "test", "rows": [_row("fixed", "fp32", 10.0), _row("packed", "fp32", 40.0),
                                     _row("packed", "bf16-amp", 200.0), _row("packed", "bf16-amp", 300.0, compiled=True),
                                     _row("fixed", "bf16-amp", 20.0)]}


def test_speedups_by_hand_best_first():
    assert bench.speedups(RESULT) == {"packed*/bf16-amp": 30.0, "packed/bf16-amp": 20.0, "packed/fp32": 4.0,
                                      "fixed/bf16-amp": 2.0, "fixed/fp32": 1.0}
    assert list(bench.speedups(RESULT, precision="bf16-amp")) == ["packed*/bf16-amp", "packed/bf16-amp", "fixed/bf16-amp"]


def test_best_row_filters():
    assert bench.best_row(RESULT)["real_tokens_per_s"] == 300.0
    assert bench.best_row(RESULT, compiled=False)["real_tokens_per_s"] == 200.0
    assert bench.best_row(RESULT, precision="fp32")["strategy"] == "packed"
    assert bench.best_row(RESULT, precision="tf32") is None


def test_readers_do_not_mutate():
    before = copy.deepcopy(RESULT)
    bench.speedups(RESULT, precision="fp32")
    bench.best_row(RESULT)
    bench.rows_where(RESULT, strategy="packed")
    assert RESULT == before


def test_rows_where_compiled_false_matches_missing_key():
    rows = [{"strategy": "a", "precision": "fp32", "real_tokens_per_s": 1.0}]
    assert bench.rows_where(rows, compiled=False) == rows
    assert bench.rows_where(rows, compiled=True) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 1e6), min_size=1, max_size=8))
def test_speedups_property_baseline_is_one_and_order_is_by_speed(tps):
    rows = [_row("fixed", "fp32", 5.0)] + [_row(f"s{i}", "bf16-amp", t) for i, t in enumerate(tps)]
    sp = bench.speedups(rows)
    assert sp["fixed/fp32"] == 1.0
    vals = list(sp.values())
    assert vals == sorted(vals, reverse=True)
    assert len(sp) == len(rows)
    assert bench.best_row(rows)["real_tokens_per_s"] == max(tps + [5.0])


def test_shipped_results_load_and_headline():
    tokens = bench.result_for_work("tokens")
    best = bench.best_row(tokens)
    assert (best["strategy"], best["precision"], best["compiled"]) == ("packed-varlen", "bf16-amp", True)
    assert bench.speedups(tokens)["fixed/fp32"] == 1.0
    assert bench.result_for_work("sequences")["config"]["work"] == "sequences"
    assert "sdpa_mask" in bench.load_result("sdpa_probe")


def test_load_result_from_path(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(RESULT))
    assert bench.load_result(p) == RESULT


def test_loss_at_by_hand():
    curve = {"examples_seen": [10, 20, 30, 40], "loss": [4.0, 3.0, 2.0, 1.0], "wall_s": 8.0}
    assert bench.loss_at(curve, examples=20, window=2) == 3.5
    assert bench.loss_at(curve, examples=25, window=1) == 2.0
    assert bench.loss_at(curve, seconds=4.0, window=1) == 3.0      # steps end at 2, 4, 6, 8 s
    assert bench.loss_at(curve, examples=999, window=1) == 1.0     # never reached: the last step
    np.testing.assert_allclose(bench.curve_seconds(curve), [2.0, 4.0, 6.0, 8.0])


def test_padded_widths_match_a_reference_and_the_shipped_slots():
    cfg = bench.BenchConfig(work="sequences", progress=False, timed_steps=50)
    lens = np.minimum(load_corpus("fortunes").lengths, 512)
    widths = bench.padded_widths("dynamic", cfg)
    mc = bench.MaskedCorpus(load_corpus("fortunes"), None, None, lens)
    ref = [int(lens[s].max()) for s in bench.plan_batches("dynamic", mc, cfg, 50)]
    assert widths.tolist() == ref
    mult = bench.padded_widths("dynamic-multiple", cfg)
    assert (mult % 64 == 0).all() and (mult >= widths).all() and (mult - widths < 64).all()
    # The H100 run padded exactly these shapes (32 sequences per row of the step).
    seq = {r["strategy"]: r for r in bench.result_for_work("sequences")["rows"] if r["precision"] == "fp32"}
    assert 32 * widths.mean() == pytest.approx(seq["dynamic"]["slots_per_step"])
    assert 32 * mult.mean() == pytest.approx(seq["dynamic-multiple"]["slots_per_step"])


def test_flop_shares_by_hand():
    from padlab.models import parameter_counts

    mcfg = bench.model_config("tiny", bench._vocab(), 128)
    lens = np.array([3, 5])
    counts = parameter_counts(mcfg)
    attn = 12 * mcfg.layers * mcfg.hidden * (9 + 25)
    head = 6 * counts["mlm_head"] * 2
    body = 6 * counts["body"] * 8
    shares = bench.flop_shares("tiny", lens, 2, capacity=128)
    total = attn + head + body
    assert shares["attention"] == pytest.approx(attn / total)
    assert shares["mlm head"] == pytest.approx(head / total)
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: bench.load_result("nope.json"), "path must name an existing"),
    (lambda: bench.result_for_work("words"), "work must be one of"),
    (lambda: bench.best_row(RESULT, precision="fp8"), "precision must be one of"),
    (lambda: bench.best_row(RESULT, compiled="yes"), "compiled must be True, False or None"),
    (lambda: bench.best_row("rows"), "result must be a benchmark result"),
    (lambda: bench.speedups([_row("packed", "fp32", 1.0)]), "result must hold an uncompiled fixed/fp32 row"),
    (lambda: bench.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=1, seconds=1.0), "examples must be given"),
    (lambda: bench.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=0), "examples must be > 0"),
    (lambda: bench.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=1, window=0), "window must be"),
    (lambda: bench.curve_seconds({"loss": [1.0], "wall_s": 0}), "curve must have"),
    (lambda: bench.padded_widths("packed", bench.BenchConfig(progress=False)), "strategy must be one of"),
    (lambda: bench.padded_widths("dynamic", bench.BenchConfig(progress=False), 0), "n_steps must be"),
    (lambda: bench.flop_shares("huge", [1], 0), "model must be one of"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_result_refuses_non_result(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="path must hold a JSON object with a 'device' key"):
        bench.load_result(p)
