"""padlab.experiments.results (load_result, save_result, best_row, speedups, rows_where, loss_at, the amp-matrix
readers) and the plan-derived figures of padlab.experiments.bench (padded_widths, flop_shares)."""
from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab.data import load_corpus
from padlab.experiments import bench, results
from padlab.experiments.bench import BenchConfig, model_config


def _row(strategy, precision, tps, compiled=False, **kw):
    return {"strategy": strategy, "precision": precision, "real_tokens_per_s": tps, "compiled": compiled, **kw}


RESULT = {"device": "test", "rows": [_row("fixed", "fp32", 10.0), _row("packed", "fp32", 40.0),
                                     _row("packed", "bf16-amp", 200.0), _row("packed", "bf16-amp", 300.0, compiled=True),
                                     _row("fixed", "bf16-amp", 20.0)]}


def test_speedups_by_hand_best_first():
    assert results.speedups(RESULT) == {"packed*/bf16-amp": 30.0, "packed/bf16-amp": 20.0, "packed/fp32": 4.0,
                                      "fixed/bf16-amp": 2.0, "fixed/fp32": 1.0}
    assert list(results.speedups(RESULT, precision="bf16-amp")) == ["packed*/bf16-amp", "packed/bf16-amp", "fixed/bf16-amp"]


def test_best_row_filters():
    assert results.best_row(RESULT)["real_tokens_per_s"] == 300.0
    assert results.best_row(RESULT, compiled=False)["real_tokens_per_s"] == 200.0
    assert results.best_row(RESULT, precision="fp32")["strategy"] == "packed"
    assert results.best_row(RESULT, precision="tf32") is None


def test_readers_do_not_mutate():
    before = copy.deepcopy(RESULT)
    results.speedups(RESULT, precision="fp32")
    results.best_row(RESULT)
    results.rows_where(RESULT, strategy="packed")
    assert RESULT == before


def test_rows_where_compiled_false_matches_missing_key():
    rows = [{"strategy": "a", "precision": "fp32", "real_tokens_per_s": 1.0}]
    assert results.rows_where(rows, compiled=False) == rows
    assert results.rows_where(rows, compiled=True) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 1e6), min_size=1, max_size=8))
def test_speedups_property_baseline_is_one_and_order_is_by_speed(tps):
    rows = [_row("fixed", "fp32", 5.0)] + [_row(f"s{i}", "bf16-amp", t) for i, t in enumerate(tps)]
    sp = results.speedups(rows)
    assert sp["fixed/fp32"] == 1.0
    vals = list(sp.values())
    assert vals == sorted(vals, reverse=True)
    assert len(sp) == len(rows)
    assert results.best_row(rows)["real_tokens_per_s"] == max(tps + [5.0])


def test_shipped_results_load_and_headline():
    tokens = results.result_for_work("tokens")
    best = results.best_row(tokens)
    assert (best["strategy"], best["precision"], best["compiled"]) == ("packed-varlen", "bf16-amp", True)
    assert results.speedups(tokens)["fixed/fp32"] == 1.0
    assert results.result_for_work("sequences")["config"]["work"] == "sequences"
    assert "sdpa_mask" in results.load_result("sdpa_probe")


def test_load_result_from_path(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(RESULT))
    assert results.load_result(p) == RESULT


def test_loss_at_by_hand():
    curve = {"examples_seen": [10, 20, 30, 40], "loss": [4.0, 3.0, 2.0, 1.0], "wall_s": 8.0}
    assert results.loss_at(curve, examples=20, window=2) == 3.5
    assert results.loss_at(curve, examples=25, window=1) == 2.0
    assert results.loss_at(curve, seconds=4.0, window=1) == 3.0      # steps end at 2, 4, 6, 8 s
    assert results.loss_at(curve, examples=999, window=1) == 1.0     # never reached: the last step
    np.testing.assert_allclose(results.curve_seconds(curve), [2.0, 4.0, 6.0, 8.0])


def test_padded_widths_by_a_plain_reference():
    """Equal sequences: the bench's dynamic steps are random batches of 32 (a seeded permutation cut
    in 32s, epoch 0 with the seed alone), each as wide as its longest kept text."""
    cfg = BenchConfig(work="sequences", progress=False, timed_steps=50)
    lens = np.minimum(load_corpus("fortunes").lengths, 512)
    perm = np.random.default_rng(0).permutation(len(lens))
    ref = [int(lens[perm[i:i + 32]].max()) for i in range(0, 50 * 32, 32)]
    widths = bench.padded_widths("dynamic", cfg)
    assert widths.tolist() == ref
    mult = bench.padded_widths("dynamic-multiple", cfg)
    assert mult.tolist() == [min(512, -(-w // 64) * 64) for w in ref]
    assert bench.padded_widths("fixed", cfg).tolist() == [512] * 50


def test_batch_size_for_budget_past_the_corpus_warns_nothing():
    """Eight texts of 10 tokens, batches cut in order with the short last one dropped: 40 slots
    hold 4 texts; a batch size above 8 gives no batch at all and counts as too large (it used to
    take numpy's mean of an empty list: a RuntimeWarning and NaN)."""
    lens = np.full(8, 10)

    def cut(bs):
        return [np.arange(i, i + bs) for i in range(0, len(lens) - bs + 1, bs)]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert bench.batch_size_for_budget(lens, 40, cut, lambda x: int(x.max())) == 4
        assert bench.batch_size_for_budget(lens, 1000, cut, lambda x: int(x.max())) == 8    # the whole corpus
        assert bench.batch_size_for_budget(lens, 5, cut, lambda x: int(x.max())) == 1       # at least one text


def test_padded_widths_of_big_steps_warn_nothing():
    # notebook 07's call: 65,536 slots a step, so the budget search passes the corpus size
    cfg = BenchConfig(max_tokens=65536, seqs_per_step=128, timed_steps=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        widths = bench.padded_widths("dynamic", cfg)
    assert len(widths) == 3 and (widths <= 512).all()


def test_shipped_files_are_history_and_new_rows_say_what_they_ran():
    assert results.is_history(results.result_for_work("tokens"))
    new = {"rows": [_row("fixed", "fp32", 1.0, tf32=False, autocast_dtype=None)]}
    assert not results.is_history(new)


def test_save_result_round_trip(tmp_path):
    res = {"device": "d", "rows": [_row("fixed", "fp32", 1.0, loss=float("nan"), mfu=float("inf"))]}
    p = results.save_result(res, tmp_path / "r.json")
    back = results.load_result(p)
    assert np.isnan(back["rows"][0]["loss"]) and back["rows"][0]["mfu"] == float("inf")
    assert '"nan"' in p.read_text()


def test_flop_shares_by_hand():
    from padlab.models import parameter_counts

    mcfg = model_config("tiny", 128)
    lens = np.array([3, 5])
    counts = parameter_counts(mcfg)
    attn = 12 * mcfg.layers * mcfg.hidden * (9 + 25)
    head = 6 * counts["mlm_head"] * 2
    body = 6 * counts["body"] * 8
    shares = bench.flop_shares("tiny", lens, 2, max_length=128)
    total = attn + head + body
    assert shares["attention"] == pytest.approx(attn / total)
    assert shares["mlm head"] == pytest.approx(head / total)
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: results.load_result("nope.json"), "path must name an existing"),
    (lambda: results.result_for_work("words"), "work must be one of"),
    (lambda: results.best_row(RESULT, precision="fp8"), "precision must be one of"),
    (lambda: results.best_row(RESULT, compiled="yes"), "compiled must be True, False or None"),
    (lambda: results.best_row("rows"), "result must be a benchmark result"),
    (lambda: results.speedups([_row("packed", "fp32", 1.0)]), "result must hold an uncompiled fixed/fp32 row"),
    (lambda: results.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=1, seconds=1.0), "examples must be given"),
    (lambda: results.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=0), "examples must be > 0"),
    (lambda: results.loss_at({"loss": [1.0], "examples_seen": [1]}, examples=1, window=0), "window must be"),
    (lambda: results.curve_seconds({"loss": [1.0], "wall_s": 0}), "curve must have"),
    (lambda: bench.padded_widths("packed", BenchConfig(progress=False)), "strategy must be one of"),
    (lambda: bench.padded_widths("dynamic", "cfg"), "cfg must be a BenchConfig"),
    (lambda: results.save_result([1], "x.json"), "result must be a mapping"),
    (lambda: bench.padded_widths("dynamic", BenchConfig(progress=False), 0), "n_steps must be"),
    (lambda: bench.flop_shares("huge", [1], 0), "model must be one of"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_result_refuses_non_result(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="path must hold a JSON object with a 'device' key"):
        results.load_result(p)


# ----------------------------------------------------------------------------- amp matrix results

def _train_row(task, kind, policy, seed, value, loss=1.0, skipped=(), exact=None):
    metric = "accuracy" if kind == "classification" else "mae"
    row = {"kind_of_row": "train", "task": task, "kind": kind, "unit": "u", "policy": policy, "seed": seed,
           metric: value, "final_loss": loss, "skipped_steps": list(skipped), "underflow_mean": 0.25,
           "underflow_unscaled_mean": 0.5}
    if exact is not None:
        row["exact_fraction"] = exact
    return row


def test_summarize_matrix_by_hand():
    result = {"rows": [
        _train_row("c", "classification", "fp32", 0, 0.5), _train_row("c", "classification", "fp32", 1, 0.7),
        _train_row("r", "regression", "fp16-pure", 0, math.inf, loss=math.nan, exact=0.0),
        _train_row("r", "regression", "fp16-pure", 1, 2.0, skipped=(3, 4), exact=0.5),
        {"kind_of_row": "speed", "model": "m", "policy": "fp32", "step_ms_median": 2.0, "peak_memory_bytes": 4,
         "batch_size": 1, "length": 1},
    ]}
    c, r = results.summarize_matrix(result)
    assert (c["task"], c["metric"], c["seeds"], c["diverged"]) == ("c", "accuracy", 2, 0)
    assert c["mean"] == pytest.approx(0.6) and c["std"] == pytest.approx(0.1) and c["values"] == [0.5, 0.7]
    assert (r["metric"], r["diverged"], r["mean"], r["std"], r["exact"], r["skipped"]) == ("mae", 1, 2.0, 0.0, 0.5, 1.0)
    assert math.isnan(r["values"][0]) and r["values"][1] == 2.0
    assert r["underflow"] == 0.25 and r["underflow_unscaled"] == 0.5


def test_speed_table_and_load_matrix(tmp_path):
    rows = [{"kind_of_row": "speed", "model": "m", "policy": p, "step_ms_median": ms, "peak_memory_bytes": mem,
             "batch_size": 2, "length": 8} for p, ms, mem in (("fp32", 4.0, 2**21), ("bf16-amp", 2.0, 2**20))]
    path = tmp_path / "m.json"
    import json

    path.write_text(json.dumps({"rows": rows + [{"kind_of_row": "train", "x": "nan", "y": ["inf", "-inf"]}]}))
    loaded = results.load_matrix(path)
    assert math.isnan(loaded["rows"][2]["x"]) and loaded["rows"][2]["y"] == [math.inf, -math.inf]
    fp32, bf16 = results.speed_table(loaded)
    assert (fp32["time_vs_fp32"], fp32["peak_mib"], fp32["memory_vs_fp32"]) == (1.0, 2.0, 1.0)
    assert (bf16["step_ms"], bf16["time_vs_fp32"], bf16["peak_mib"], bf16["memory_vs_fp32"]) == (2.0, 0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"path must name an existing amp_matrix JSON file; got '.*nope.json'"):
        results.load_matrix(tmp_path / "nope.json")




# ----------------------------------------------------------------------------- decoder results

def _dec_row(strategy, tps, *, seconds=2.0, tflops=3.0, compiled=False, **kw):
    return {"strategy": strategy, "compiled": compiled, "steps": 4, "seconds": seconds, "real_tokens_per_s": tps,
            "padded_fraction": 0.25, "model_tflops": tflops, "mfu_measured_peak": 0.5, "mfu_datasheet_peak": 0.25,
            "peak_memory_bytes": 3 * 2 ** 30, "loss_first": 8.0, "loss_last": 6.0,
            "loss_curve": [[0.5, 8.0], [1.0, 7.0]], "seconds_to_target_loss": 1.0, "real_tokens_per_step": 100.0, **kw}


DECODER_RESULT = {"device": "test", "config": {"parameters": 1_000_000},
                  "rows": [_dec_row("fixed", 10.0), _dec_row("packed-mask (sdpa)", 40.0),
                           _dec_row("hf-length-grouped", 20.0, seconds_to_target_loss=0.5),
                           _dec_row("hf-flattening (sdpa)", 30.0, compiled=True, seconds_to_target_loss=None),
                           {"strategy": "hf-flattening (flex_attention)", "compiled": False, "error": "OOM"}],
                  "generation": [{"batch_size": 1, "order": "sorted", "tokens_per_s": 5.0},
                                 {"batch_size": 16, "order": "random", "tokens_per_s": 50.0},
                                 {"batch_size": 64, "order": "random", "tokens_per_s": 90.0}]}


def test_decoder_summary_by_hand():
    s = results.decoder_summary(DECODER_RESULT)
    assert [t["strategy"] for t in s["table"]] == ["fixed", "packed-mask (sdpa)", "hf-length-grouped",
                                                   "hf-flattening (sdpa) [compiled]", "hf-flattening (flex_attention)"]
    assert [t["side"] for t in s["table"]] == ["padlab"] * 2 + ["transformers"] * 3
    # the compiled hf row (30) beats the uncompiled one (20); the errored row never counts
    assert s["comparison"] == {"best_padlab": "packed-mask (sdpa)", "best_hf": "hf-flattening (sdpa) [compiled]",
                               "padlab_over_best_hf": 40.0 / 30.0}
    fixed = s["table"][0]
    assert fixed["peak_gib"] == 3.0 and fixed["seconds_to_target_loss"] == 1.0 and not fixed["target_at_first_point"]
    assert s["table"][2]["target_at_first_point"] and s["table"][3]["seconds_to_target_loss"] is None
    # 6 * 1e6 parameters * 100 tokens * 4 steps = 2.4e9 of 3e12 * 2 s = 6e12 model FLOPs
    assert fixed["attention_flop_share"] == pytest.approx(1 - 2.4e9 / 6e12)
    assert [t.get("speedup_over_fixed") for t in s["table"]] == [1.0, 4.0, 2.0, 3.0, None]
    assert s["table"][4]["error"] == "OOM" and "real_tokens_per_s" not in s["table"][4]
    assert s["generation_by_order"] == {"sorted": {1: 5.0}, "random": {16: 50.0, 64: 90.0}}
    assert DECODER_RESULT["rows"][3]["strategy"] == "hf-flattening (sdpa)"     # input not mutated
    assert [t["compiled"] for t in s["table"]] == [False, False, False, True, False]
    # per setting: eager 40 / 20; the compiled setting has one hf row and no padlab row
    assert s["by_compile"] == {
        "eager": {"best_padlab": "packed-mask (sdpa)", "best_hf": "hf-length-grouped", "padlab_over_best_hf": 2.0,
                  "left_out": []},
        "compiled": {"best_padlab": None, "best_hf": "hf-flattening (sdpa) [compiled]", "padlab_over_best_hf": None,
                     "left_out": []}}


def test_decoder_summary_leaves_out_rows_that_compiled_in_their_timing():
    rows = [_dec_row("packed-mask (sdpa)", 40.0, compiled=True, graphs_compiled_in_timed_steps=0),
            _dec_row("token-budget", 30.0, compiled=True, graphs_compiled_in_timed_steps=0),
            _dec_row("hf-length-grouped", 5.0, compiled=True, graphs_compiled_in_timed_steps=1),
            _dec_row("hf-flattening (sdpa)", 8.0, compiled=True, graphs_compiled_in_timed_steps=0),
            _dec_row("hf-length-grouped", 20.0)]
    s = results.decoder_summary({"config": {}, "rows": rows})
    assert [t["compiled_in_timing"] for t in s["table"]] == [False, False, True, False, False]
    assert s["by_compile"]["compiled"] == {"best_padlab": "packed-mask (sdpa) [compiled]",
                                           "best_hf": "hf-flattening (sdpa) [compiled]",
                                           "padlab_over_best_hf": 5.0, "left_out": ["hf-length-grouped [compiled]"]}
    assert s["by_compile"]["eager"]["best_padlab"] is None and s["by_compile"]["eager"]["best_hf"] == "hf-length-grouped"
    # the all-rows comparison keeps every row: 40 over the eager hf row's 20
    assert s["comparison"]["padlab_over_best_hf"] == 2.0 and s["comparison"]["best_hf"] == "hf-length-grouped"


def test_decoder_rows_compared_by_hand():
    base = {"rows": [_dec_row("fixed", 10.0), _dec_row("bucketed", 20.0), _dec_row("bucketed", 50.0, compiled=True),
                     {"strategy": "dynamic", "error": "OOM"}, _dec_row("token-budget", 30.0)]}
    other = {"rows": [_dec_row("bucketed", 40.0), _dec_row("fixed", 9.0), _dec_row("dynamic", 7.0)]}
    got = results.decoder_rows_compared(base, other)
    assert got == [{"strategy": "fixed", "base": 10.0, "other": 9.0, "other_over_base": 0.9, "padded_fraction": 0.25},
                   {"strategy": "bucketed", "base": 20.0, "other": 40.0, "other_over_base": 2.0,
                    "padded_fraction": 0.25}]
    assert results.decoder_rows_compared(base, other, compiled=True) == []
    with pytest.raises(ValueError, match="other must be a decoder result"):
        results.decoder_rows_compared(base, [1])


def test_decoder_summary_without_a_side_has_no_ratio():
    s = results.decoder_summary({"config": {}, "rows": [_dec_row("fixed", 10.0)]})
    assert s["comparison"] == {"best_padlab": "fixed", "best_hf": None, "padlab_over_best_hf": None}
    assert s["table"][0]["attention_flop_share"] is None     # no parameter count: no share
    s = results.decoder_summary({"config": {}, "rows": [_dec_row("dynamic", 10.0)]})
    assert s["table"][0]["speedup_over_fixed"] is None       # no fixed row: no baseline


def test_decoder_profiles_by_hand():
    prof = {"steps": 2, "kernel_ms_per_step": 30.0, "kernels_per_step": 800.0,
            "family_ms_per_step": {"attention": 3.0, "matmul": 15.0, "optimizer": 2.0, "other": 10.0},
            "gpu_busy_fraction_under_profiler": 0.75, "real_tokens": 300, "slots": 400,
            "profiled_steps_ms_per_step": 40.0}
    rows = [_dec_row("fixed", 10.0),                                   # not profiled: no entry
            _dec_row("hf-length-grouped", 20.0, compiled=True, profile=prof),
            _dec_row("token-budget", 20.0, profile={**prof, "real_tokens": None}),   # tokens unknown
            _dec_row("dynamic", 5.0, profile={"steps": 2, "kernel_ms_per_step": None, "real_tokens": 300,
                                              "slots": 400}),        # a CPU profile: no kernels
            {"strategy": "bucketed", "error": "OOM", "profile": prof}]
    got = results.decoder_profiles({"rows": rows})
    assert [g["strategy"] for g in got] == ["hf-length-grouped [compiled]", "token-budget", "dynamic"]
    hf = got[0]
    # 2 s over 4 steps = 500 ms a step, 100 real tokens a step on average: 5,000,000 ns a token
    assert hf["step_ms"] == 500.0 and hf["step_ns_per_token"] == 5_000_000.0 and hf["padded_fraction"] == 0.25
    # the profiled steps' own tokens: 300 over 2 steps = 150 a step; 30 ms / 150 = 200,000 ns a token
    assert hf["profiled_real_tokens_per_step"] == 150.0 and hf["kernel_ns_per_token"] == 200_000.0
    assert hf["profiled_padded_fraction"] == 0.25 and hf["busy_under_profiler"] == 0.75
    assert hf["busy"] == 30.0 / 40.0                 # kernel ms over the same steps' unprofiled ms
    assert hf["family_ms"] == prof["family_ms_per_step"] and hf["family_ms"] is not prof["family_ms_per_step"]
    assert got[1]["kernel_ms"] == 30.0 and got[1]["kernel_ns_per_token"] is None   # never the run's average
    assert got[2]["kernel_ms"] is None and got[2]["family_ms"] is None and got[2]["kernel_ns_per_token"] is None
    assert got[2]["busy"] is None
    with pytest.raises(ValueError, match="result must be a decoder result"):
        results.decoder_profiles([rows])
    with pytest.raises(ValueError, match=r"result must hold profiled rows with \['seconds'\]"):
        results.decoder_profiles({"rows": [{k: v for k, v in rows[1].items() if k != "seconds"}]})
    with pytest.raises(ValueError, match="a profile with steps"):
        results.decoder_profiles({"rows": [{**rows[1], "profile": {"kernel_ms_per_step": 1.0}}]})


@pytest.mark.parametrize("key", sorted(results.DECODER))
def test_load_decoder_shipped_agrees_with_the_script(key):
    d = results.load_decoder(key)
    assert d["device"] == "NVIDIA H200" and d["complete"]
    # the comparison recomputed from the rows equals what the benchmark script stored
    assert d["comparison"]["best_padlab"] == d["best_padlab"] and d["comparison"]["best_hf"] == d["best_hf"]
    assert d["comparison"]["padlab_over_best_hf"] == pytest.approx(d["padlab_over_best_hf"])
    assert all(t["strategy"].startswith("hf-") == (t["side"] == "transformers") for t in d["table"])
    assert len(d["table"]) == len(d["rows"]) and all(0 <= t["attention_flop_share"] < 1 for t in d["table"])


def test_shipped_decoder_runs_hold_what_notebook_08_reads():
    run, control = results.load_decoder("h200"), results.load_decoder("h200-nocudnn")
    assert run["config"]["compile"] == "both" and control["config"]["cudnn_attention"] == "off"
    labels = {t["strategy"] for t in run["table"]}
    for name in ("packed-mask (sdpa)", "packed-flex (flex_attention)", "hf-length-grouped", "fixed"):
        assert name in labels and name + " [compiled]" in labels
    shared = results.decoder_rows_compared(run, control)
    assert {r["strategy"] for r in shared} >= {"hf-length-grouped", "token-budget", "packed-mask (sdpa)", "fixed"}
    # the steady run: no row compiled in its timed steps, both sides compiled; its three profiles eager and
    # compiled, with the profiled steps' tokens (replanned, checked against the run's recorded tokens)
    steady = results.load_decoder("h200-compiled")
    assert steady["config"]["cudnn_attention"] == "off" and steady["config"]["warmup"] == 12
    assert all(not c["left_out"] for c in steady["by_compile"].values())
    assert steady["by_compile"]["compiled"]["best_hf"] == "hf-length-grouped [compiled]"
    profiles = {p["strategy"]: p for p in results.decoder_profiles(steady)}
    for name in ("packed-mask (sdpa)", "hf-length-grouped", "token-budget"):
        for label in (name, name + " [compiled]"):
            assert profiles[label]["kernel_ns_per_token"] > 0 and sum(profiles[label]["family_ms"].values()) > 0
    flat = results.load_decoder("h200-flattening")
    assert [o.get("compiled", False) for o in flat["oracle"]] == [False, True] and all(o["ok"] for o in flat["oracle"])
    assert [t["strategy"] for t in flat["table"]] == ["hf-flattening (sdpa)", "hf-flattening (sdpa) [compiled]"]


@pytest.mark.parametrize("call, match", [
    (lambda: results.load_decoder("nope.json"), "path must name an existing decoder JSON"),
    (lambda: results.decoder_summary("rows"), "result must be a decoder result"),
    (lambda: results.decoder_summary({"rows": [{"real_tokens_per_s": 1.0}]}), "result must hold rows with a 'strategy'"),
])
def test_decoder_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_decoder_refuses_another_result(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"device": "d", "accuracy_rows": []}))
    with pytest.raises(ValueError, match="path must hold an object with .rows., .config."):
        results.load_decoder(p)
