"""padlab.viz: each plot function returns a Figure with the expected axes, lines and labels."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from padlab import viz


def _data_lines(ax):
    """Lines that carry data (axvline guides have exactly two x values equal to each other)."""
    return [ln for ln in ax.get_lines() if not (len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1])]


# --- chapter 00 ---------------------------------------------------------------------------------

def _breakdown(n, per_param):
    parts = dict(weights=4 * n, gradients=4 * n, optimizer=8 * n, half_copies=0)
    parts = {k: v * per_param // 16 for k, v in parts.items()}
    return dict(parameters=n, trainable=n, total=sum(parts.values()), **parts)


def test_parameter_memory_bars_one_panel_per_config():
    data = {"tiny": {"fp32": _breakdown(1000, 16), "bf16": _breakdown(1000, 8)},
            "big": {"fp32": _breakdown(2**28, 16)}}
    fig = viz.parameter_memory_bars(data)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 2
    assert axes[0].get_ylabel() == "memory (MiB)" and axes[1].get_ylabel() == "memory (GiB)"
    # Three non-zero parts stacked: one bar container each, one bar per precision.
    assert [len(c) for c in axes[0].containers] == [2, 2, 2]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["fp32", "bf16"]
    assert "1000" not in axes[0].get_title() and "M parameters" in axes[0].get_title()


def test_memory_vs_length_scales_bytes_and_draws_one_line_per_series():
    x = [64, 128, 256]
    fig = viz.memory_vs_length(x, {"math": [2**20, 2**22, 2**24], "flash": [2**20, 2**21, 2**22]})
    (ax,) = fig.get_axes()
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["math", "flash"]
    np.testing.assert_allclose(lines[0].get_ydata(), [1, 4, 16])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "saved for backward (MiB)"


def test_cost_vs_length_linear_axes():
    fig = viz.cost_vs_length([1, 2], {"a": [1, 2]}, ylabel="ms", title="t", loglog=False)
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "linear" and ax.get_ylabel() == "ms" and ax.get_title() == "t"


# --- chapters 01-02 -----------------------------------------------------------------------------

def test_length_histogram_one_panel_per_corpus_with_cutoff():
    fig = viz.length_histogram({"a": np.array([3, 4, 5, 50]), "b": np.array([10, 11])}, max_length=32)
    axes = fig.get_axes()
    assert len(axes) == 2
    assert axes[0].get_title() == "a: 4 texts" and axes[1].get_title() == "b: 2 texts"
    assert axes[0].get_legend().get_texts()[0].get_text() == "max_length = 32"
    assert sum(p.get_height() for p in axes[0].patches) == 4


def test_waste_vs_max_length_two_curves_in_percent_and_marker():
    fig = viz.waste_vs_max_length([8, 16, 32], [0.1, 0.5, 0.7], [0.6, 0.2, 0.0], corpus="c", current=16)
    (ax,) = fig.get_axes()
    data = _data_lines(ax)
    assert len(data) == 2 and len(ax.get_lines()) == 3
    np.testing.assert_allclose(data[0].get_ydata(), [10, 50, 70])
    np.testing.assert_allclose(data[1].get_ydata(), [60, 20, 0])
    assert "on c" in ax.get_title() and ax.get_xlabel() == "max_length (tokens)"


def test_mask_heatmap_annotates_every_cell():
    ids = np.array([[2, 7, 3, 0], [2, 3, 0, 0]])
    mask = (ids != 0).astype(int)
    fig = viz.mask_heatmap(ids, mask, position_ids=np.array([[0, 1, 2, 0], [0, 1, 0, 0]]), title="t")
    axes = fig.get_axes()
    assert [ax.get_title(loc="left") for ax in axes] == ["input_ids", "attention_mask", "position_ids"]
    assert [t.get_text() for t in axes[0].texts] == ["2", "7", "3", "0", "2", "3", "0", "0"]
    assert [t.get_text() for t in axes[1].texts] == ["1", "1", "1", "0", "1", "1", "0", "0"]
    assert len(viz.mask_heatmap(ids, mask).get_axes()) == 2


def test_waste_vs_batch_size_one_line_per_strategy():
    fig = viz.waste_vs_batch_size([8, 16], {"fixed": [0.1, 0.1], "dynamic": [0.5, 0.4]}, current=8)
    (ax,) = fig.get_axes()
    data = _data_lines(ax)
    assert [ln.get_label() for ln in data] == ["fixed", "dynamic"]
    np.testing.assert_allclose(data[1].get_ydata(), [50, 40])
    assert ax.get_xscale() == "log"


def test_padded_length_distribution_counts_every_batch():
    fig = viz.padded_length_distribution({"fixed": np.full(5, 64), "dynamic": np.array([10, 20, 30])})
    (ax,) = fig.get_axes()
    assert len(ax.patches) == 2                 # one step outline per strategy
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fixed", "dynamic"]
