"""Chapter 04 figures and widget: padlab.viz packing plots and padlab.widgets.packing_widget."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from padlab import viz, widgets
from padlab.data import load_corpus
from padlab.packing import pack


def _bars(ax):
    return [p for c in ax.containers for p in c]


# --- pack_bars ----------------------------------------------------------------------------------

def test_pack_bars_segments_tails_and_labels_by_hand():
    packs = [[5, 3], [8], [2, 2, 2]]
    fig = viz.pack_bars(packs, 10, title="three packs")
    assert isinstance(fig, Figure)
    (ax,) = fig.get_axes()
    seqs, tails = ax.containers
    # Sequences: (row, left, width) laid end to end from column 0.
    got = [(round(b.get_y() + b.get_height() / 2), b.get_x(), b.get_width()) for b in seqs]
    assert got == [(0, 0, 5), (0, 5, 3), (1, 0, 8), (2, 0, 2), (2, 2, 2), (2, 4, 2)]
    # Neighbours in a row never share a colour.
    colours = [b.get_facecolor() for b in seqs]
    assert colours[0] != colours[1] and colours[3] != colours[4] != colours[5]
    # The empty tail of each row: capacity minus what the row holds.
    assert [(b.get_x(), b.get_width()) for b in tails] == [(8, 2), (8, 2), (6, 4)]
    assert all(b.get_hatch() for b in tails)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pack 0", "pack 1", "pack 2"]
    texts = [t.get_text() for t in ax.texts]
    assert "2 seq, 8/10" in texts and "1 seq, 8/10" in texts and "3 seq, 6/10" in texts
    assert ax.get_xlim() == (0, 10) and ax.get_title() == "three packs"


def test_pack_bars_names_and_default_title_and_no_mutation():
    packs = [np.array([4, 4]), np.array([7])]
    before = [p.copy() for p in packs]
    fig = viz.pack_bars(packs, 8, pack_names=["pack 10", "pack 99"])
    (ax,) = fig.get_axes()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["pack 10", "pack 99"]
    assert ax.get_title() == "2 packs of 8 tokens"
    for a, b in zip(packs, before):
        np.testing.assert_array_equal(a, b)


def test_pack_bars_from_a_pack_result():
    lengths = np.array([3, 9, 4, 6, 2, 7])
    result = pack(lengths, 10, algorithm="ffd")
    fig = viz.pack_bars([result.lengths[p] for p in result.packs], 10)
    seqs, tails = fig.get_axes()[0].containers
    assert len(seqs) == lengths.size and len(tails) == result.n_packs
    assert sum(b.get_width() for b in seqs) == lengths.sum()
    assert sum(b.get_width() for b in tails) == result.n_packs * 10 - lengths.sum()


@pytest.mark.parametrize("args, kwargs, match", [
    (([[3]], 0), {}, "capacity must be an integer >= 1"),
    (([[3]], 2.5), {}, "capacity must be an integer"),
    (([], 8), {}, "pack_lengths must hold at least one pack"),
    (([[3], []], 8), {}, r"pack_lengths\[1\] must be a non-empty list of lengths >= 1"),
    (([[3, 0]], 8), {}, r"pack_lengths\[0\] must be a non-empty list of lengths >= 1"),
    (([[1.5]], 8), {}, r"pack_lengths\[0\] must be a non-empty list"),
    (([[5], [6, 3]], 8), {}, r"pack_lengths\[1\] must fit in capacity=8 \(sum 9\)"),
    (([[3]], 8), {"pack_names": ["a", "b"]}, "pack_names must name each of the 1 packs"),
])
def test_pack_bars_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        viz.pack_bars(*args, **kwargs)


# --- packing_efficiency_vs_capacity -----------------------------------------------------------

def test_packing_efficiency_vs_capacity_percent_lines_and_truncation_panel():
    caps = [64, 128, 256]
    fig = viz.packing_efficiency_vs_capacity(caps, {"ffd": [0.9, 0.95, 0.99], "spfhp": [0.9, 0.96, 0.99]},
                                             truncated_by_series={"ffd": [0.2, 0.05, 0.0]},
                                             corpus="c", current=128)
    left, right = fig.get_axes()
    lines = [ln for ln in left.get_lines() if ln.get_label() in ("ffd", "spfhp")]
    np.testing.assert_allclose(lines[0].get_ydata(), [90, 95, 99])
    np.testing.assert_allclose(lines[1].get_xdata(), caps)
    assert lines[0].get_linestyle() != lines[1].get_linestyle()   # ties stay visible
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), [20, 5, 0])
    assert left.get_title() == "Packing efficiency on c"
    assert "capacity = 128" in [t.get_text() for t in left.get_legend().get_texts()]
    assert left.get_xscale() == "log"
    assert len(viz.packing_efficiency_vs_capacity(caps, {"a": [1, 1, 1]}).get_axes()) == 1


# --- attention_mask_panels ----------------------------------------------------------------------

def _image(ax):
    return np.asarray(ax.get_images()[0].get_array())


def test_attention_mask_panels_colours_by_query_sequence():
    seq_ids = np.array([0, 0, 1, -1])
    block = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    padding = np.array([[1, 1, 1, 0]] * 4, dtype=bool)
    fig = viz.attention_mask_panels({"padding": padding, "block": block}, seq_ids=seq_ids, title="t")
    a, b = fig.get_axes()
    img = _image(b)
    seq0, seq1 = to_rgb(viz.SEQUENCE_COLOURS[0]), to_rgb(viz.SEQUENCE_COLOURS[1])
    np.testing.assert_allclose(img[0, 1], seq0)
    np.testing.assert_allclose(img[2, 2], seq1)
    np.testing.assert_allclose(img[3, 3], to_rgb("#9a9a9a"))     # a pad query, attending to itself
    np.testing.assert_allclose(img[0, 2], to_rgb("#eeeeee"))     # masked
    # The padding mask lets sequence 0's queries see sequence 1's keys: the leak, drawn.
    np.testing.assert_allclose(_image(a)[0, 2], seq0)
    assert a.get_title() == "padding\n12 of 16 scores allowed"
    assert b.get_title() == "block\n6 of 16 scores allowed"
    assert fig._suptitle.get_text() == "t"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-1] == "padding query (output ignored)"


def test_attention_mask_panels_without_seq_ids_and_no_mutation():
    m = np.eye(3, dtype=bool)
    before = m.copy()
    fig = viz.attention_mask_panels({"eye": m})
    np.testing.assert_allclose(_image(fig.get_axes()[0])[1, 1], to_rgb(viz.SEQUENCE_COLOURS[0]))
    np.testing.assert_array_equal(m, before)


@pytest.mark.parametrize("masks, kwargs, match", [
    ({"a": np.ones((2, 3), dtype=bool)}, {}, r"masks\['a'\] must be a square 2-D mask"),
    ({"a": np.ones(4, dtype=bool)}, {}, r"masks\['a'\] must be a square 2-D mask"),
    ({"a": np.ones((3, 3), dtype=bool)}, {"seq_ids": [0, 0]}, r"seq_ids must hold one id per position \(3\)"),
])
def test_attention_mask_panels_bad_input(masks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        viz.attention_mask_panels(masks, **kwargs)


# --- max_difference_bars and strategy_efficiency_bars -------------------------------------------

def test_max_difference_bars_log_axis_floor_and_threshold():
    fig = viz.max_difference_bars(["a", "b"], {"with": [1e-7, 0.0], "without": [0.5, 0.25]},
                                  threshold=1e-5, title="proof")
    (ax,) = fig.get_axes()
    heights = [b.get_height() for b in _bars(ax)]
    assert heights == [1e-7, 1e-10, 0.5, 0.25]           # the exact zero sits on the floor ...
    assert [t.get_text() for t in ax.texts] == ["0"]      # ... and is marked as such
    assert ax.get_yscale() == "log" and ax.get_title() == "proof"
    assert [ln.get_ydata()[0] for ln in ax.get_lines()] == [1e-5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_strategy_efficiency_bars_one_panel_per_corpus_in_percent():
    table = {"w": {"fixed": {"tokens": 0.04, "attention": 0.002}, "packed": {"tokens": 0.999, "attention": 0.05}},
             "f": {"fixed": {"tokens": 0.09, "attention": 0.02}, "packed": {"tokens": 0.998, "attention": 0.2}}}
    fig = viz.strategy_efficiency_bars(table)
    w, f = fig.get_axes()
    assert w.get_title() == "w" and f.get_title() == "f"
    np.testing.assert_allclose([b.get_height() for b in w.containers[0]], [4.0, 99.9])
    np.testing.assert_allclose([b.get_height() for b in f.containers[1]], [2.0, 20.0])
    labels = [t.get_text() for t in w.texts]
    assert "0.2" in labels and "100" in labels
    assert [t.get_text() for t in w.get_xticklabels()] == ["fixed", "packed"]


# --- packing_widget -----------------------------------------------------------------------------

def _controls(w):
    (pick, slider, limit), (alg, which) = w.children[0].children, w.children[1].children
    return pick, slider, limit, alg, which, w.children[2], w.children[3]


def _readout_by_hand(corpus, capacity, algorithm, max_per_pack=None):
    lengths = load_corpus(corpus).lengths
    r = pack(lengths, capacity, algorithm=algorithm, max_per_pack=max_per_pack, truncation=True)
    cut = int(np.maximum(lengths - capacity, 0).sum())              # independent of PackResult
    eff = np.minimum(lengths, capacity).sum() / (r.n_packs * capacity)
    limit = "" if max_per_pack is None else f", at most {max_per_pack} per pack"
    return (f"{corpus}, capacity {capacity}, {algorithm}{limit}: {r.n_packs:,} packs for {lengths.size:,} texts "
            f"({lengths.size / r.n_packs:.1f} per pack), efficiency {eff:.2%}; "
            f"{cut:,} tokens truncated ({cut / lengths.sum():.2%} of real tokens)")


def test_packing_widget_readout_follows_the_controls():
    w = widgets.packing_widget("fortunes", 256, "ffd")
    pick, slider, limit, alg, which, readout, image = _controls(w)
    assert [c.description for c in (pick, slider, limit, alg, which)] == [
        "corpus", "capacity", "max per pack", "algorithm", "packs shown"]
    assert (slider.min, slider.max, slider.step) == (64, 1024, 64)
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == _readout_by_hand("fortunes", 256, "ffd")
    assert "13,442 tokens truncated" in readout.value            # fortunes texts over 256 tokens
    png = image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 1024
    assert readout.value == _readout_by_hand("fortunes", 1024, "ffd")
    alg.value = "spfhp"
    assert readout.value == _readout_by_hand("fortunes", 1024, "spfhp")
    limit.value = 3
    assert readout.value == _readout_by_hand("fortunes", 1024, "spfhp", 3)
    pick.value = "wordnet"
    assert readout.value == _readout_by_hand("wordnet", 1024, "spfhp", 3)
    which.value = "last"
    assert image.value != png                                     # the picture was redrawn


def test_shown_packs_first_last_spread():
    assert widgets.shown_packs(100, 4, "first") == [0, 1, 2, 3]
    assert widgets.shown_packs(100, 4, "last") == [96, 97, 98, 99]
    assert widgets.shown_packs(100, 4, "spread") == [0, 33, 66, 99]
    assert widgets.shown_packs(3, 12, "spread") == [0, 1, 2]
    assert widgets.shown_packs(3, 12, "last") == [0, 1, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(corpus="imdb"), "corpus must be one of"),
    (dict(capacity=32), "capacity must be an integer >= 64"),
    (dict(capacity=100), "capacity must be a multiple of 64 from 64 to 1024"),
    (dict(capacity=2048), "capacity must be a multiple of 64 from 64 to 1024"),
    (dict(algorithm="best-fit"), "algorithm must be one of 'ffd', 'spfhp'"),
    (dict(max_per_pack=5), "max_per_pack must be one of"),
    (dict(shown="middle"), "shown must be one of 'first', 'spread', 'last'"),
    (dict(n_packs=0), "n_packs must be an integer >= 1"),
])
def test_packing_widget_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.packing_widget(**kwargs)
