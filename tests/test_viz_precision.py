"""Chapter 06 figures (padlab.viz.precision): data in, the same numbers drawn, nothing computed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from matplotlib.colors import to_hex

from padlab import viz


def _bars(ax):
    return [p for c in ax.containers for p in c]


def test_policy_speed_memory_draws_the_given_ratios():
    # The ratios are drawn as given (the caller computed them, e.g. the amp speed table's time_vs_fp32
    # and memory_vs_fp32): model "big" has no fp32 row, and its bf16 ratio is still drawn (a plot that
    # divided by fp32's measurement would have nothing to divide by).
    data = {"tiny": {"fp32": (1.0, 1.0), "bf16-amp": (0.4, 0.7)},
            "big": {"bf16-amp": (0.3, None)}}
    before = copy.deepcopy(data)
    fig = viz.policy_speed_memory(data, device="cpu")
    time_ax, mem_ax = fig.axes[:2]
    # bars: fp32 over both models (none for "big"), then bf16-amp over both models
    t = [b.get_height() for b in _bars(time_ax)]
    assert t[0] == 1.0 and np.isnan(t[1]) and t[2:] == pytest.approx([0.4, 0.3])
    m = [b.get_height() for b in _bars(mem_ax)]
    assert m[0] == 1.0 and m[2] == pytest.approx(0.7) and np.isnan(m[1]) and np.isnan(m[3])   # not measured
    assert to_hex(_bars(time_ax)[2].get_facecolor()) == viz.POLICY_COLOURS["bf16-amp"]
    assert "cpu" in time_ax.get_title() and data == before


def test_policy_speed_memory_bad_input():
    with pytest.raises(ValueError, match="ratios_by_model must hold at least one model"):
        viz.policy_speed_memory({})


def test_policy_curves_running_mean_and_policy_colours():
    y = np.arange(10, dtype=float)
    fig = viz.policy_curves({"fp32": y, "fp16-amp": y[::-1]}, smooth=3, logy=False)
    a, b = fig.axes[0].get_lines()
    # a running mean of 3 over 0..9 is 1, 2, ..., 8, drawn from step 2
    np.testing.assert_allclose(a.get_ydata(), np.arange(1, 9))
    np.testing.assert_array_equal(a.get_xdata(), np.arange(2, 10))
    assert [to_hex(ln.get_color()) for ln in (a, b)] == [viz.POLICY_COLOURS["fp32"], viz.POLICY_COLOURS["fp16-amp"]]


def test_policy_result_bars_mean_per_policy_and_diverged_label():
    panels = {"topic": {"fp32": [0.5, 0.7], "fp16-pure": [float("nan"), 0.1]}}
    fig = viz.policy_result_bars(panels, ylabels={"topic": "accuracy"})
    ax = fig.axes[0]
    assert [b.get_height() for b in _bars(ax)] == pytest.approx([0.6])
    assert any("diverged" in t.get_text() for t in ax.texts) and ax.get_ylabel() == "accuracy"


def test_loss_scale_dynamics_marks_skipped_steps():
    fig = viz.loss_scale_dynamics([8.0, 4.0, 4.0, 8.0], [1], loss=[1.0, float("inf"), 0.9, 0.8])
    top = fig.axes[0]
    assert top.get_yscale() == "log" and len(fig.axes) == 2
    (marks,) = [c for c in top.collections if len(c.get_offsets())]
    np.testing.assert_array_equal(marks.get_offsets(), [[1, 4.0]])


def test_autocast_dtype_grid_one_cell_per_op_and_policy():
    table = {"linear": {"fp32": "float32 -> float32", "bf16-amp": "float32 -> bfloat16"},
             "softmax": {"fp32": "float32 -> float32", "bf16-amp": "bfloat16 -> float32"}}
    fig = viz.autocast_dtype_grid(table)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["fp32 -> fp32", "fp32 -> bf16", "fp32 -> fp32", "bf16 -> fp32"]


def test_gradient_histogram_shades_what_the_first_format_flushes():
    rows = [{"format": "fp16", "max": 65504.0, "smallest_normal": 2.0**-14, "smallest_subnormal": 2.0**-24}]
    fig = viz.gradient_histogram({"grads": np.array([1e-9, 1e-6, 1e-3, 0.0])}, rows)
    ax = fig.axes[0]
    assert any("fp16 stores 0" == t.get_text() for t in ax.texts)
    assert "grads (3)" in [t.get_text() for t in ax.get_legend().get_texts()]   # zeros are left out
