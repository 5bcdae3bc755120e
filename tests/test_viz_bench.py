"""Chapter 07 figures and widget: padlab.viz benchmark plots and padlab.widgets.bench_widget."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from padlab import viz, widgets
from padlab.experiments import results as bench


def _bars(ax):
    return [p for c in ax.containers for p in c]


TOKENS = bench.result_for_work("tokens")
EXTRA = bench.load_result("extra")
TUNE = bench.load_result("tune")


def test_bench_summary_and_speedup_bars_on_the_shipped_result():
    fig = viz.bench_summary(TOKENS["rows"], device=TOKENS["device"])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert TOKENS["device"] in fig.axes[0].get_title()
    sp = bench.speedups(TOKENS, precision="bf16-amp")
    fig = viz.speedup_bars(sp, highlight="packed-varlen*/bf16-amp")
    ax = fig.axes[0]
    widths = sorted(b.get_width() for b in _bars(ax))
    assert widths == pytest.approx(sorted(sp.values()))
    assert [t.get_text() for t in ax.get_yticklabels()] == list(sp)
    texts = [t.get_text() for t in ax.texts]
    assert f"{sp['packed-varlen*/bf16-amp']:.1f}x" in texts
    # the highlighted bar, and only it, has a black edge
    edges = [tuple(b.get_edgecolor()) for b in _bars(ax)]
    assert edges.count((0.0, 0.0, 0.0, 1.0)) == 1


def _row(strategy, precision, speedup, compiled=False):
    return {"strategy": strategy, "precision": precision, "compiled": compiled, "real_tokens_per_s": 1000.0,
            "padded_fraction": 0.5, "peak_memory_bytes": 2**30, "speedup_vs_fixed_fp32": speedup}


def test_bench_speedup_bars_draw_the_rows_speedups_as_given():
    # Bar heights are the rows' own speedup_vs_fixed_fp32 (real_tokens_per_s is the same in every row:
    # a plot that divided throughputs would draw 1.0 everywhere). The compiled row is a group of its own.
    rows = [_row("fixed", "fp32", 1.0), _row("fixed", "bf16-amp", 3.0), _row("packed", "fp32", 8.0),
            _row("packed", "bf16-amp", 40.0), _row("packed", "bf16-amp", 99.0, compiled=True)]
    before = copy.deepcopy(rows)
    fig = viz.bench_speedup_bars(rows)
    ax = fig.axes[0]
    # fp32 bars (no compiled fp32 row: an empty slot), then bf16
    assert [b.get_height() for b in _bars(ax)] == pytest.approx([1.0, 8.0, np.nan, 3.0, 40.0, 99.0], nan_ok=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fixed", "packed", "packed [compiled]"]
    assert ax.get_yscale() == "log" and rows == before
    colours = {b.get_label(): to_hex(b.patches[0].get_facecolor()) for b in ax.containers}
    assert colours == {"fp32": viz.POLICY_COLOURS["fp32"], "bf16-amp": viz.POLICY_COLOURS["bf16-amp"]}


def test_bench_speedup_bars_without_a_baseline_say_so():
    fig = viz.bench_speedup_bars([_row("packed", "bf16-amp", None)])
    assert not _bars(fig.axes[0]) and "no fixed/fp32 row" in fig.axes[0].texts[0].get_text()


def test_loss_curves_per_example_plots_what_it_is_given():
    curves = {c["strategy"]: {"examples_seen": c["examples_seen"], "seconds": bench.curve_seconds(c), "loss": c["loss"]}
              for c in EXTRA["loss_curves"]}
    before = copy.deepcopy(curves)
    fig = viz.loss_curves_per_example(curves)
    a, b = fig.axes[:2]
    assert len(a.lines) == len(b.lines) == 2
    np.testing.assert_array_equal(a.lines[1].get_xdata(), EXTRA["loss_curves"][1]["examples_seen"])
    np.testing.assert_allclose(b.lines[0].get_xdata()[-1], EXTRA["loss_curves"][0]["wall_s"])
    assert a.get_xscale() == "log" and "examples" in a.get_xlabel() and "seconds" in b.get_xlabel()
    assert all(np.array_equal(before[k]["loss"], curves[k]["loss"]) for k in curves)


def test_anomaly_cold_warm_bar_heights():
    rows = [r for r in EXTRA["sequences"]["rows"] if r["strategy"] == "dynamic"]
    fig = viz.anomaly_cold_warm(rows)
    heights = [b.get_height() for b in _bars(fig.axes[0])]
    expected = [r["cold_real_tokens_per_s"] / 1e3 for r in rows] + [r["real_tokens_per_s"] / 1e3 for r in rows]
    assert heights == pytest.approx(expected)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [f"dynamic\n{r['precision']}" for r in rows]
    fig = viz.anomaly_cold_warm([dict(rows[0], sdpa_backends=["efficient"]), dict(rows[0], label="x")])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][0].endswith("[efficient]")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "x"


def test_profile_families_with_and_without_flop_shares():
    fr = TUNE["rows"][1]["profile"]["families_fraction"]
    fig = viz.profile_families(fr)
    assert sorted(b.get_width() for b in _bars(fig.axes[0])) == pytest.approx(sorted(fr.values()))
    fig = viz.profile_families(fr, flop_shares={"gemm (matmul)": 0.97, "attention (flash varlen)": 0.02})
    assert len(_bars(fig.axes[0])) == 2 * len(fr)
    assert "2.0%" in [t.get_text() for t in fig.axes[0].texts]


def test_kernel_time_stacks_by_hand():
    rows = {"a": {"attention": 1.0, "matmul": 2.0, "other": 3.0}, "b [compiled]": {"attention": 0.5, "matmul": 2.0,
                                                                                   "other": 0.0}}
    fig = viz.kernel_time_stacks(rows, title="t")
    ax = fig.axes[0]
    bars = _bars(ax)
    # one bar per row and family, each family's bars starting where the families before it end
    assert [(round(b.get_x(), 6), b.get_width()) for b in bars] == [(0.0, 1.0), (0.0, 0.5), (1.0, 2.0), (0.5, 2.0),
                                                                     (3.0, 3.0), (2.5, 0.0)]
    assert [t.get_text() for t in ax.texts] == ["6.0", "2.5"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b [compiled]"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["attention", "matmul", "other"]


def test_throughput_vs_budget():
    rows = TUNE["rows"][:2]
    fig = viz.throughput_vs_budget(rows)
    a, b = fig.axes[:2]
    assert [p.get_height() for p in _bars(a)] == pytest.approx([r["real_tokens_per_s"] / 1e3 for r in rows])
    assert f"MFU {rows[1]['mfu']:.1%}" in [t.get_text() for t in a.texts]
    assert len(_bars(b)) == 3 * len(rows)   # GPU, loader without and with workers
    assert b.get_yscale() == "log"


@pytest.mark.parametrize("call, match", [
    (lambda: viz.speedup_bars({}), "speedups must hold"),
    (lambda: viz.speedup_bars({"a/fp32": 0.0}), "speedups must hold finite ratios"),
    (lambda: viz.loss_curves_per_example({}), "curves must hold"),
    (lambda: viz.loss_curves_per_example({"a": {"examples_seen": [1], "seconds": [1, 2], "loss": [1.0, 2.0]}}),
     r"curves\['a'\]\['examples_seen'\] must have one value per loss"),
    (lambda: viz.anomaly_cold_warm([]), "rows must hold"),
    (lambda: viz.profile_families({}), "fractions must hold"),
    (lambda: viz.kernel_time_stacks({}), "rows must hold at least one row"),
    (lambda: viz.kernel_time_stacks({"a": {"x": 1.0}, "b": {"y": 1.0}}), r"rows\['b'\] must hold the families \['x'\]"),
    (lambda: viz.kernel_time_stacks({"a": {"x": -1.0}}), r"rows\['a'\] must hold finite times"),
    (lambda: viz.throughput_vs_budget([]), "rows must hold"),
    (lambda: viz.bench_summary(TOKENS), "rows must be a non-empty list of benchmark rows"),
    (lambda: viz.bench_speedup_bars([]), "rows must be a non-empty list"),
    (lambda: viz.bench_speedup_bars([{"strategy": "fixed", "precision": "fp32", "real_tokens_per_s": 1.0,
                                      "padded_fraction": 0.0}]),
     r"rows\[0\] must carry speedup_vs_fixed_fp32"),
])
def test_viz_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the widget -------------------------------------------------------------------------------------

BENCH = {
    ("tokens", "bf16-amp"): "equal tokens (~16k slots a step), bf16-amp: best packed-varlen*/bf16-amp 480,247 real "
                            "tokens/s (66.0x fixed/fp32), MFU 32.5%, padded 0.0%",
    ("sequences", "fp32"): "equal sequences (32 a step), fp32: best token-budget/fp32 57,796 real tokens/s "
                           "(7.9x fixed/fp32), MFU 4.1%, padded 0.5%",
    ("tokens", "tf32"): "equal tokens (~16k slots a step), tf32: best token-budget/tf32 251,324 real tokens/s "
                        "(34.5x fixed/fp32), MFU 16.5%, padded 4.4%",
}


def test_bench_readouts_match_the_shipped_json_by_hand():
    # The best bf16-amp row of the equal-tokens run is the compiled packed-varlen one: 480,247 tokens/s,
    # and the uncompiled fixed/fp32 row runs 7,279 tokens/s: 480,247 / 7,279 = 66.0.
    best = max((r for r in TOKENS["rows"] if r["precision"] == "bf16-amp"), key=lambda r: r["real_tokens_per_s"])
    base = next(r for r in TOKENS["rows"] if (r["strategy"], r["precision"], r["compiled"]) == ("fixed", "fp32", False))
    assert (best["strategy"], best["compiled"]) == ("packed-varlen", True)
    ratio = best["real_tokens_per_s"] / base["real_tokens_per_s"]
    assert f"{best['real_tokens_per_s']:,.0f} real tokens/s ({ratio:.1f}x" in BENCH["tokens", "bf16-amp"]


def test_bench_widget_readout_follows_the_controls():
    w = widgets.bench_widget()
    (mode, pick), readout, image = w.children[0].children, w.children[1], w.children[2]
    assert pick.description == "precision" and mode.description == "work"
    assert "padlab-readout" in readout._dom_classes
    assert list(pick.options) == ["fp32", "tf32", "fp16-amp", "bf16-amp"]
    assert readout.value == BENCH["tokens", "bf16-amp"]
    assert image.value[:4] == b"\x89PNG"
    pick.value = "tf32"
    assert readout.value == BENCH["tokens", "tf32"]
    png = image.value
    mode.value = widgets.WORK_LABELS["sequences"]
    # The equal-sequences run measured fp32 and bf16-amp only: tf32 is no longer offered, the first is chosen.
    assert list(pick.options) == ["fp32", "bf16-amp"] and pick.value == "fp32"
    assert readout.value == BENCH["sequences", "fp32"]
    assert image.value != png and image.value[:4] == b"\x89PNG"
    pick.value = "bf16-amp"
    mode.value = widgets.WORK_LABELS["tokens"]
    assert pick.value == "bf16-amp" and len(pick.options) == 4 and readout.value == BENCH["tokens", "bf16-amp"]


def test_bench_widget_offers_only_measured_precisions():
    assert widgets.bench_precisions("tokens") == ["fp32", "tf32", "fp16-amp", "bf16-amp"]
    assert widgets.bench_precisions(widgets.WORK_LABELS["sequences"]) == ["fp32", "bf16-amp"]
    # Every offered choice draws a picture (none leaves the image empty or broken).
    for work in widgets.WORK_LABELS:
        for p in widgets.bench_precisions(work):
            w = widgets.bench_widget(p, work)
            assert w.children[2].value[:4] == b"\x89PNG" and "no " not in w.children[1].value


@pytest.mark.parametrize("kwargs, match", [({"precision": "fp8"}, "precision must be one of"),
                                           ({"precision": "tf32", "work": "sequences"},
                                            "precision must be one of 'fp32', 'bf16-amp'; got 'tf32'"),
                                           ({"work": "steps"}, "work must be one of")])
def test_bench_widget_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.bench_widget(**kwargs)
