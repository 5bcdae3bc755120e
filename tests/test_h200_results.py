"""padlab.experiments.results' readers of the H200 memory-budget and AMP tokens-per-step files
(load_memory, memory_verdict, memory_table, load_amp_tokens, amp_tokens_verdict, amp_references,
inference_speedups) and the chapter-06 plots that draw them (padlab.viz.precision): expectations
derived by hand on small made-up results, then the shipped files checked against their own raw rows."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from matplotlib.colors import to_hex

from padlab import viz
from padlab._validate import PadlabError
from padlab.experiments import results

ERR = {"error": "ValueError: no index"}


def _budget(prec, est, fit, real, verified=ERR, c00=None):
    b = {"precision": prec, "estimated_max_tokens": est, "measured_fit_max_tokens": fit,
         "real_tokens_at_estimated_max": real, "verified": verified}
    if c00 is not None:
        b["chapter00_max_tokens"] = c00
    return b


MEMORY = {"config": {"max_length": 512}, "rows": [
    {"model": "big", "recipe": "fixed-512 fp32", "checkpointing": False,
     "points": [{"estimate_over_measured": 1.0}, {"estimate_over_measured": 1.1, "chapter00_over_measured": 1.2}],
     "budgets": {"16 GB": _budget("fp32", 0, 512, 0),            # not even one row: does not train
                 "80 GB": _budget("fp32", 2048, 4096, 300, c00=1024)}},
    {"model": "big", "recipe": "packed bf16-amp", "checkpointing": True,
     "points": [{"estimate_over_measured": 0.9}],
     "budgets": {"16 GB": _budget("fp16-amp", 1000, 2000, 1000, verified={"skipped": "too long"}),
                 "80 GB": _budget("bf16-amp", 8000, 10000, 8000,
                                  verified={"at_prediction": {"fits": True}, "cap_enforced": True})}},
    {"model": "big", "recipe": "packed bf16-amp", "checkpointing": False, "error": "OOM"},
]}


def test_memory_verdict_by_hand():
    before = copy.deepcopy(MEMORY)
    v = results.memory_verdict(MEMORY)
    assert MEMORY == before
    rows = {(r["recipe"], r["checkpointing"], r["budget"]): r for r in v["rows"]}
    assert len(rows) == 4                                       # the row with an error gives none
    r = rows["fixed-512 fp32", False, "80 GB"]
    assert (r["estimated"], r["fitted"], r["ratio"], r["real_tokens"], r["chapter00"]) == (2048, 4096, 0.5, 300, 1024)
    assert r["trains"] and not rows["fixed-512 fp32", False, "16 GB"]["trains"]   # 0 < 512 tokens
    assert rows["packed bf16-amp", True, "16 GB"]["precision"] == "fp16-amp"
    assert rows["packed bf16-amp", True, "16 GB"]["verified"] == "skipped: too long"
    assert rows["packed bf16-amp", True, "80 GB"]["verified"] == "fits"
    assert r["verified"] == "not run: ValueError: no index" and rows["fixed-512 fp32", False, "80 GB"]["chapter00"] == 1024
    assert v["verified_ran"] is True and v["verification_errors"] == ["ValueError: no index"]
    pts = {(p["recipe"], p["checkpointing"]): p for p in v["points"]}
    assert pts["fixed-512 fp32", False]["estimate_over_measured"] == (1.0, 1.1)
    assert pts["fixed-512 fp32", False]["chapter00_over_measured"] == (1.2, 1.2)
    assert pts["packed bf16-amp", True]["chapter00_over_measured"] is None
    b16, b80 = v["budgets"]["16 GB"]["big"], v["budgets"]["80 GB"]["big"]
    assert b16["trains"] and b16["best"]["recipe"] == "packed bf16-amp" and b16["best"]["precision"] == "fp16-amp"
    assert b16["best_without_checkpointing"] is None          # fixed-512 fits no row in 16 GB
    assert b80["best"]["real_tokens"] == 8000 and b80["best_without_checkpointing"]["real_tokens"] == 300
    t = results.memory_table(v)
    assert t == {"big": {"fixed-512 fp32": {"16 GB": 0, "80 GB": 2048},
                         "packed bf16-amp + ckpt": {"16 GB": 1000, "80 GB": 8000}}}
    assert results.memory_table(v, what="fitted")["big"]["packed bf16-amp + ckpt"]["80 GB"] == 10000


def test_memory_verdict_without_any_check_run():
    m = copy.deepcopy(MEMORY)
    m["rows"][1]["budgets"]["80 GB"]["verified"] = ERR
    v = results.memory_verdict(m)
    assert v["verified_ran"] is False


def _amp_row(model, tokens, precision, tps=None, mfu=None, error=None):
    if error:
        return {"model": model, "tokens_per_step": tokens, "precision": precision, "error": error}
    return {"model": model, "tokens_per_step": tokens, "precision": precision, "real_tokens_per_s": tps, "mfu": mfu}


AMP = {"rows": [_amp_row("s", 1024, "fp32", 100.0, 0.01), _amp_row("s", 1024, "bf16-amp", 50.0, 0.005),
                _amp_row("s", 8192, "fp32", 200.0, 0.02), _amp_row("s", 8192, "bf16-amp", 1000.0, 0.1),
                _amp_row("s", 65536, "fp32", error="skipped: past --deadline"),
                _amp_row("s", 65536, "bf16-amp", 9000.0, 0.3)],
       "profiles": [{"model": "s", "tokens_per_step": 1024, "precision": "fp32", "gpu_busy_fraction": 0.6,
                     "kernels_per_step": 100.0, "kernel_ms_per_step": 3.0},
                    {"model": "s", "tokens_per_step": 1024, "precision": "bf16-amp", "gpu_busy_fraction": 0.2,
                     "kernels_per_step": 130.0, "kernel_ms_per_step": 1.0},
                    {"model": "s", "tokens_per_step": 8192, "precision": "bf16-amp", "error": "skipped"}]}


def test_amp_tokens_verdict_by_hand():
    before = copy.deepcopy(AMP)
    refs = [{"chapter": "06", "model": "s", "precision": "bf16-amp", "tokens_per_step": 8192, "speedup": 2.0},
            {"chapter": "07", "model": "s", "precision": "bf16-amp", "tokens_per_step": 65536, "speedup": 7.0}]
    v = results.amp_tokens_verdict(AMP, references=refs, threshold=4.0)
    assert AMP == before
    m = v["models"]["s"]
    assert m["speedup"] == {"bf16-amp": {1024: 0.5, 8192: 5.0}}   # 65,536 has no fp32 row to divide by
    assert m["max_speedup"] == 5.0 and m["crosses_threshold_at_tokens"] == 8192
    assert m["mfu"]["bf16-amp"] == {1024: 0.005, 8192: 0.1, 65536: 0.3}
    assert m["skipped"] == [(65536, "fp32", "skipped: past --deadline")]
    assert m["launch_bound"] == {1024: True} and m["extra_kernels"] == {1024: 30.0}
    assert m["profiles"][1024]["fp32"]["gpu_busy_fraction"] == 0.6 and 8192 not in m["profiles"]
    r06, r07 = v["references"]
    assert r06["sweep"] == 5.0 and r07["sweep"] is None
    assert r07["sweep_best"] == {"tokens_per_step": 8192, "speedup": 5.0}
    assert results.amp_tokens_verdict(AMP, threshold=10.0)["models"]["s"]["crosses_threshold_at_tokens"] is None
    assert results.amp_tokens_verdict(AMP, busy_below=0.1)["models"]["s"]["launch_bound"] == {1024: False}


def test_inference_speedups_regroups_by_hand():
    verdict = {"speed": {"m": {"64": {"speedup": {"fp32": 1.0, "bf16-pure": 3.0}},
                               "8": {"speedup": {"fp32": 1.0, "bf16-pure": 0.5}}}}}
    out = results.inference_speedups(verdict)
    assert out == {"m": {"bf16-pure": {8: 0.5, 64: 3.0}}} and list(out["m"]["bf16-pure"]) == [8, 64]


@pytest.mark.parametrize("call, name", [
    (lambda: results.memory_verdict({"rows": []}), "result"),
    (lambda: results.memory_table({}, what="estimated"), "verdict"),
    (lambda: results.memory_table({"rows": []}, what="peak"), "what"),
    (lambda: results.load_memory("/no/such.json"), "path"),
    (lambda: results.amp_tokens_verdict({"profiles": []}), "result"),
    (lambda: results.load_amp_tokens("/no/such.json"), "path"),
    (lambda: results.inference_speedups({}), "verdict"),
    (lambda: viz.inference_speedup_vs_batch({}), "curves"),
    (lambda: viz.memory_budget_bars({"m": {}}), "tokens"),
    (lambda: viz.amp_speedup_vs_tokens({}), "speedups"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(PadlabError, match=rf"^{name}"):
        call()


def test_loaders_refuse_another_kind_of_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(PadlabError, match="^path"):
        results.load_memory(p)                  # no 'config'
    with pytest.raises(PadlabError, match="^path"):
        results.load_amp_tokens(p)              # no 'profiles'


# ----------------------------------------------------------------------------- the plots draw what they get

def test_inference_speedup_plot_draws_the_given_points():
    curves = {"a": {"fp16-autocast": {1: 0.5, 8: 2.0}, "fp8-weights": {1: 0.25}}, "b": {"fp16-autocast": {4: 3.0}}}
    before = copy.deepcopy(curves)
    fig = viz.inference_speedup_vs_batch(curves, policies={"fp16-autocast": "fp16-amp", "fp8-weights": "bf16-amp"})
    a, b = fig.axes[:2]
    line = a.get_lines()[0]
    assert list(line.get_xdata()) == [1, 8] and list(line.get_ydata()) == [0.5, 2.0]
    assert to_hex(line.get_color()) == viz.POLICY_COLOURS["fp16-amp"]
    assert to_hex(a.get_lines()[1].get_color()) == viz.POLICY_COLOURS["bf16-amp"]
    assert list(b.get_lines()[0].get_ydata()) == [3.0] and curves == before


def test_memory_budget_plot_draws_the_given_bars_and_fit():
    tokens = {"m": {"fixed-512 fp32": {"16 GB": 100, "80 GB": 400}, "packed bf16-amp + ckpt": {"16 GB": 300, "80 GB": 900}}}
    fitted = {"m": {"fixed-512 fp32": {"16 GB": 110, "80 GB": 420}}}
    fig = viz.memory_budget_bars(tokens, fitted=fitted)
    ax = fig.axes[0]
    heights = [p.get_height() for c in ax.containers for p in c]
    assert heights == [100, 400, 300, 900]
    assert to_hex(ax.containers[0][0].get_facecolor()) == viz.STRATEGY_COLOURS["fixed"]
    assert to_hex(ax.containers[1][0].get_facecolor()) == viz.STRATEGY_COLOURS["packed"]
    assert ax.containers[1][0].get_hatch() == "//" and ax.containers[0][0].get_hatch() is None
    fit = ax.collections[0].get_offsets()[:, 1]
    assert list(fit) == [110, 420]


def test_amp_plot_draws_speedups_references_and_busy():
    fig = viz.amp_speedup_vs_tokens({"s": {"bf16-amp": {1024: 0.5, 8192: 5.0}}},
                                    busy={"s": {"bf16-amp": {1024: 0.2}}}, references=[("07", 65536, 7.0)])
    ax, bx = fig.axes[:2]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1024, 8192] and list(line.get_ydata()) == [0.5, 5.0]
    assert list(ax.collections[0].get_offsets()[0]) == [65536, 7.0]
    assert [p.get_height() for c in bx.containers for p in c] == [0.2]


# ----------------------------------------------------------------------------- the shipped H200 files

def test_shipped_files_load_and_their_verdicts_follow_the_raw_rows():
    mem = results.load_memory("h200")
    v = results.memory_verdict(mem)
    raw = [(r, n, b) for r in mem["rows"] for n, b in r.get("budgets", {}).items()]
    assert len(v["rows"]) == len(raw)
    for (r, n, b), row in zip(raw, v["rows"]):
        assert row["estimated"] == b["estimated_max_tokens"] and row["fitted"] == b["measured_fit_max_tokens"]
        assert row["ratio"] == pytest.approx(b["estimated_max_tokens"] / b["measured_fit_max_tokens"])
        assert row["ratio"] == pytest.approx(b["estimate_over_measured"])   # the script's own ratio agrees
    assert v["verified_ran"] is False and v["verification_errors"]      # the capped check did not run
    for budget, by_model in v["budgets"].items():
        for model, m in by_model.items():
            here = [(b["real_tokens_at_estimated_max"], r["recipe"], r["checkpointing"]) for r, n, b in raw
                    if n == budget and r["model"] == model and b["estimated_max_tokens"] >= mem["config"]["max_length"]]
            assert m["trains"] == bool(here)
            assert (m["best"]["real_tokens"], m["best"]["recipe"], m["best"]["checkpointing"]) == max(here)

    amp = results.load_amp_tokens("h200")
    a = results.amp_tokens_verdict(amp, threshold=amp["verdict"]["threshold"], busy_below=amp["verdict"]["busy_below"])
    ok = {(r["model"], r["tokens_per_step"], r["precision"]): r for r in amp["rows"] if not r.get("error")}
    for (model, t, p), r in ok.items():
        if p != "fp32" and (model, t, "fp32") in ok:
            assert a["models"][model]["speedup"][p][t] == pytest.approx(
                r["real_tokens_per_s"] / ok[model, t, "fp32"]["real_tokens_per_s"])
    # the shipped file was written before the script stored results.amp_tokens_verdict itself (its
    # verdict's speed-ups are bf16-amp's only, beside a 'speedups' list); a newer run stores that verdict
    old = "speedups" in amp
    for model, stored in amp["verdict"]["models"].items():
        got = a["models"][model]
        for p, curve in ({"bf16-amp": stored["speedup"]} if old else stored["speedup"]).items():
            assert {str(t): x for t, x in got["speedup"][p].items()} == pytest.approx(curve)
        assert got["max_speedup"] == pytest.approx(stored["max_speedup"])
        assert got["crosses_threshold_at_tokens"] == stored["crosses_threshold_at_tokens"]
        assert {str(t): b for t, b in got["launch_bound"].items()} == stored["launch_bound"]
    for s in amp.get("speedups", []):
        for p in ("tf32", "bf16-amp"):
            if s.get(f"{p}/fp32") is not None:
                assert a["models"][s["model"]]["speedup"][p][s["tokens_per_step"]] == pytest.approx(s[f"{p}/fp32"])
    refs = results.amp_references()
    stored = ([x for x in amp["chapter_references"].values() if isinstance(x, float)] if old
              else [r["speedup"] for r in amp["verdict"]["references"]])
    assert sorted(r["speedup"] for r in refs) == pytest.approx(sorted(stored))
    for r in refs:
        assert math.isfinite(r["speedup"]) and r["tokens_per_step"] > 0
    m06 = next(r for r in refs if (r["chapter"], r["model"], r["precision"]) == ("06", "bert-base", "bf16-amp"))
    assert m06["layout"] == "32x128 tokens" and m06["tokens_per_step"] == 32 * 128
    inf = results.load_inference("h200")
    curves = results.inference_speedups(results.inference_verdict(inf))
    row = next(r for r in inf["speed_rows"] if r["model"] == "bert-base" and r["batch_size"] == 256
               and r["precision"] == "bf16-pure")
    base = next(r for r in inf["speed_rows"] if r["model"] == "bert-base" and r["batch_size"] == 256
                and r["precision"] == "fp32")
    assert curves["bert-base"]["bf16-pure"][256] == pytest.approx(row["real_tokens_per_s"] / base["real_tokens_per_s"])
    assert np.isfinite(list(curves["small"]["fp16-pure"].values())).all()


@pytest.mark.parametrize("loader", ["load_inference", "load_memory", "load_amp_tokens", "load_decoder"])
@pytest.mark.parametrize("bad", [None, 3, "h100", "no/such/file.json"])
def test_every_h200_loader_names_a_bad_path(loader, bad):
    with pytest.raises(PadlabError, match="path must name an existing"):
        getattr(results, loader)(bad)
