"""Chapter 07 figures and widget: padlab.viz benchmark plots and padlab.widgets.bench_widget."""
from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from padlab import bench, viz, widgets  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _bars(ax):
    return [p for c in ax.containers for p in c]


TOKENS = bench.result_for_work("tokens")
EXTRA = bench.load_result("extra")
TUNE = bench.load_result("tune")


def test_bench_summary_and_speedup_bars_on_the_shipped_result():
    fig = viz.bench_summary(TOKENS["rows"], device=TOKENS["device"])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
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
    (lambda: viz.throughput_vs_budget([]), "rows must hold"),
])
def test_viz_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the widget -------------------------------------------------------------------------------------

def test_bench_widget_readout_follows_the_controls():
    w = widgets.bench_widget()
    (pick, mode), readout, image = w.children[0].children, w.children[1], w.children[2]
    assert pick.description == "precision" and mode.description == "work"
    assert "padlab-readout" in readout._dom_classes
    best = bench.best_row(TOKENS, precision="bf16-amp")
    assert f"{best['real_tokens_per_s']:,.0f} real tokens/s" in readout.value
    assert f"MFU {best['mfu']:.1%}" in readout.value
    assert readout.value == widgets.READOUTS["bench_widget"]({"precision": pick.value, "work": mode.value})
    assert image.value[:4] == b"\x89PNG"
    mode.value = widgets.WORK_LABELS["sequences"]
    pick.value = "fp32"
    seq_best = bench.best_row(bench.result_for_work("sequences"), precision="fp32")
    assert f"{seq_best['real_tokens_per_s']:,.0f} real tokens/s" in readout.value
    assert readout.value == widgets.READOUTS["bench_widget"]({"precision": "fp32", "work": mode.value})


def test_bench_widget_precision_missing_from_a_run():
    w = widgets.bench_widget("tf32", "sequences")
    assert "no tf32 rows" in w.children[1].value
    assert w.children[2].value == b""


@pytest.mark.parametrize("kwargs, match", [({"precision": "fp8"}, "precision must be one of"),
                                           ({"work": "steps"}, "work must be one of")])
def test_bench_widget_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.bench_widget(**kwargs)
