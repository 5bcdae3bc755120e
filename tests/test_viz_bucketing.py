"""Chapter 03 (bucketing): padlab.viz figures and padlab.widgets.bucketing_widget."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from padlab import viz, widgets
from padlab.data import load_corpus
from padlab.strategies import bucket_tradeoff


# --- viz ------------------------------------------------------------------------------------------

def test_bucketing_tradeoff_two_panels_in_percent():
    fig = viz.bucketing_tradeoff([1, 10, 0], {"noise 0": [0.2, 0.6, 0.9]}, {"noise 0": [0.03, 0.8, 0.999]},
                                 corpus="c", current=(10, 0.6, 0.8))
    assert isinstance(fig, Figure)
    left, right = fig.get_axes()
    lines = [ln for ln in left.get_lines() if len(ln.get_xdata()) == 3]
    assert [ln.get_label() for ln in lines] == ["efficiency, noise 0", "eta², noise 0"]
    np.testing.assert_allclose(lines[0].get_ydata(), [20, 60, 90])
    np.testing.assert_allclose(lines[1].get_ydata(), [3, 80, 99.9])
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "10", "full"]
    assert "on c" in left.get_title()
    # Right: efficiency against 1 - eta² (in %, log axis); the current point is the star.
    curve, star = right.get_lines()
    np.testing.assert_allclose(curve.get_xdata(), [97, 20, 0.1])
    np.testing.assert_allclose(star.get_xdata(), [20]) and np.testing.assert_allclose(star.get_ydata(), [60])
    assert right.get_xscale() == "log"
    assert [t.get_text() for t in right.texts] == ["1", "10", "full"]


def test_bucketing_tradeoff_perfect_sort_stays_on_the_log_axis():
    fig = viz.bucketing_tradeoff([0], {"a": [1.0]}, {"a": [1.0]})
    (curve,) = fig.get_axes()[1].get_lines()
    assert curve.get_xdata()[0] > 0


def test_loss_by_step_marks_epochs():
    losses = {"random": np.linspace(2, 1, 10), "sorted": np.linspace(2, 1.5, 10)}
    lengths = {"random": np.full(10, 5.0), "sorted": np.tile([1.0, 2, 3, 4], 3)[:10]}
    fig = viz.loss_by_step(losses, lengths, epoch_steps=4, title="t")
    top, bottom = fig.get_axes()
    data = [ln for ln in top.get_lines() if len(ln.get_xdata()) == 10]
    assert [ln.get_label() for ln in data] == ["random", "sorted"]
    np.testing.assert_allclose(data[1].get_ydata(), losses["sorted"])
    # Epoch starts at steps 4 and 8 in both panels.
    guides = sorted(ln.get_xdata()[0] for ln in bottom.get_lines() if len(ln.get_xdata()) == 2)
    assert guides == [4, 8]
    assert top.get_title() == "t" and "every 4 steps" in bottom.get_xlabel()


def test_accuracy_by_seed_mean_and_baseline():
    fig = viz.accuracy_by_seed({"random": [0.70, 0.72, 0.74], "bucketed": [0.7, 0.7, 0.7]}, baseline=0.68)
    (ax,) = fig.get_axes()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["random", "bucketed"]
    # One scatter of three dots per order, in percent.
    offsets = [c.get_offsets() for c in ax.collections if c.get_offsets().shape == (3, 2)]
    np.testing.assert_allclose(offsets[0][:, 0], [70, 72, 74])
    assert "68.0%" in ax.get_legend().get_texts()[0].get_text()


def test_token_budget_batches_histograms_and_budget():
    fig = viz.token_budget_batches({"bucketed": np.full(4, 32), "token budget": np.array([10, 40, 70])},
                                   {"bucketed": np.array([320, 640, 1000, 3000]),
                                    "token budget": np.array([900, 1000, 990])}, max_tokens=1024)
    left, right = fig.get_axes()
    assert len(left.patches) == len(right.patches) == 2      # one filled outline per batching
    assert left.get_xlabel() == "sequences in the batch" and right.get_yscale() == "log"
    budget = [ln for ln in right.get_lines() if len(ln.get_xdata()) == 2]
    assert budget and budget[0].get_xdata()[0] == 1024
    assert "max_tokens = 1,024" in [t.get_text() for t in right.get_legend().get_texts()]


def test_ddp_assignment_labels_every_cell_and_hatches_repeats():
    widths = np.array([[10, 20, 30], [11, 19, 30]])
    repeated = np.array([[False, False, False], [False, False, True]])
    fig = viz.ddp_assignment(widths, repeated=repeated, title="t")
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.texts] == ["10", "20", "30", "11", "19", "30"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_xy() == (1.5, 0.5)
    assert len(viz.ddp_assignment(widths).get_axes()[0].patches) == 0


def test_ddp_assignment_bad_input():
    with pytest.raises(ValueError, match=r"widths must be a non-empty 2-D array"):
        viz.ddp_assignment(np.array([1, 2]))


# --- widget ---------------------------------------------------------------------------------------

_NOTE = "(share of the length variance that batch membership explains; random batches ≈ 0.03)"
#: Readouts written out: (corpus, mega_batch as the page shows it, noise) -> text.
BUCKETING = {
    ("fortunes", 50, 0.0): f"fortunes, mega_batch 50, noise 0.00: efficiency 90.2% (attention 65.9%); "
                                f"eta² 0.976 {_NOTE}",
    ("fortunes", "full", 0.0): f"fortunes, full sort, noise 0.00: efficiency 98.6% (attention 93.0%); "
                                f"eta² 0.999 {_NOTE}",
    ("fortunes", "full", 0.15): f"fortunes, full sort, noise 0.15: efficiency 86.1% (attention 73.0%); "
                                f"eta² 0.987 {_NOTE}",
    ("fortunes", 1, 0.15): f"fortunes, mega_batch 1, noise 0.15: efficiency 20.0% (attention 8.0%); "
                                f"eta² 0.030 {_NOTE}",
    ("fortunes", "full", 0.1): f"fortunes, full sort, noise 0.10: efficiency 90.7% (attention 80.0%); "
                                f"eta² 0.994 {_NOTE}",
    ("fortunes", 20, 0): f"fortunes, mega_batch 20, noise 0.00: efficiency 78.8% (attention 46.1%); "
                                f"eta² 0.916 {_NOTE}",
}


def test_bucketing_full_sort_efficiency_by_hand():
    # A full sort cuts the sorted (truncated) lengths into batches of 32: each batch is as wide as its
    # longest text; the order of the batches does not change the total. 98.6% as the readout says.
    lens = np.sort(np.minimum(load_corpus("fortunes").lengths.astype(np.int64), 512))
    widths = sum(int(lens[i:i + 32].max()) * lens[i:i + 32].size for i in range(0, lens.size, 32))
    assert f"efficiency {lens.sum() / widths:.1%}" in BUCKETING["fortunes", "full", 0.0]


def test_bucketing_widget_readout_follows_the_controls():
    w = widgets.bucketing_widget("fortunes", 50)
    pick, pool, noise = w.children[0].children
    readout = w.children[1]
    assert (pick.description, pool.description, noise.description) == ("corpus", "mega_batch", "noise")
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == BUCKETING["fortunes", 50, 0.0]
    png = w.children[2].value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pool.value = 0
    assert readout.value == BUCKETING["fortunes", "full", 0.0]
    # A float the browser sends for 0.15 may carry extra bits: the widget rounds it to the slider step.
    noise.value = 0.15000000000000002
    assert readout.value == BUCKETING["fortunes", "full", 0.15]
    pool.value = 1
    assert readout.value == BUCKETING["fortunes", 1, 0.15]
    assert w.children[2].value != png


def test_bucketing_readout_entry_reads_page_values():
    # The page shows "full" for a full sort and numbers as text; READOUTS takes those.
    assert widgets.READOUTS["bucketing_widget"]({"corpus": "fortunes", "mega_batch": "full", "noise": 0.1}) == \
        BUCKETING["fortunes", "full", 0.1]
    assert widgets.READOUTS["bucketing_widget"]({"corpus": "fortunes", "mega_batch": "20", "noise": 0}) == \
        BUCKETING["fortunes", 20, 0]


def test_bucketing_widget_extremes_by_hand():
    # mega_batch 1 is random batches: eta² about 1/32; a full sort explains nearly everything.
    lens = load_corpus("fortunes").lengths
    assert "eta² 0.03" in widgets.bucketing_widget("fortunes", 1).children[1].value
    full = bucket_tradeoff(lens, mega_batch=None)
    assert full.eta_squared > 0.99
    assert f"eta² {full.eta_squared:.3f}" in widgets.bucketing_widget("fortunes", 0).children[1].value


@pytest.mark.parametrize("kwargs, match", [
    (dict(corpus="imdb"), "corpus must be one of"),
    (dict(mega_batch=3), "mega_batch must be one of 1, 2, 5, 10, 20, 50, 100, 200 or 'full'"),
    (dict(mega_batch=True), "mega_batch must be one of"),
    (dict(noise=0.9), r"noise must be a number from 0.0 to 0.5"),
    (dict(noise="0.1"), r"noise must be a number from 0.0 to 0.5"),
    (dict(batch_size=4), "batch_size must be an integer >= 8"),
])
def test_bucketing_widget_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.bucketing_widget(**kwargs)
