"""padlab.widgets: the readout equals what padlab computes for the control values."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from padlab import widgets  # noqa: E402
from padlab.data import load_corpus  # noqa: E402
from padlab.strategies import waste_table  # noqa: E402


def _controls(w):
    row = w.children[0]
    return row.children[0], row.children[1], w.children[1]


# --- chapters 01-02 -----------------------------------------------------------------------------

def _fixed_text(corpus, m):
    (r,) = waste_table(load_corpus(corpus).lengths, ("fixed",), batch_size=32, max_length=m)
    total = r.real_tokens + r.truncated_tokens
    return (f"{corpus}, max_length {m}: efficiency {r.efficiency:.1%} "
            f"(padding is {1 - r.efficiency:.1%} of computed tokens); "
            f"{r.truncated_tokens:,} of {total:,} real tokens truncated ({r.truncated_tokens / total:.2%})")


def test_fixed_padding_widget_readout_follows_the_controls():
    w = widgets.fixed_padding_widget("fortunes", 128)
    pick, slider, readout = _controls(w)
    assert pick.description == "corpus" and slider.description == "max_length"
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == _fixed_text("fortunes", 128)
    png = w.children[2].value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 64
    assert readout.value == _fixed_text("fortunes", 64)
    pick.value = "wordnet"
    assert readout.value == _fixed_text("wordnet", 64)
    assert w.children[2].value != png                      # the figure was redrawn


def test_fixed_padding_readout_by_hand_at_full_length():
    # fortunes: texts longer than 512 tokens lose their excess; the readout says how many.
    lengths = load_corpus("fortunes").lengths
    cut = int((lengths[lengths > 512] - 512).sum())
    w = widgets.fixed_padding_widget("fortunes", 512)
    assert f"{cut:,} of {int(lengths.sum()):,} real tokens truncated" in _controls(w)[2].value


def _dynamic_text(corpus, b):
    fixed, dynamic = waste_table(load_corpus(corpus).lengths, ("fixed", "dynamic"), batch_size=b, max_length=512)
    return (f"{corpus}, batch size {b}: dynamic padding efficiency {dynamic.efficiency:.1%} "
            f"against {fixed.efficiency:.1%} for fixed padding to 512; "
            f"{fixed.computed_tokens / dynamic.computed_tokens:.2f}x fewer computed tokens")


def test_dynamic_padding_widget_readout_follows_the_controls():
    w = widgets.dynamic_padding_widget("fortunes", 32)
    pick, slider, readout = _controls(w)
    assert pick.description == "corpus" and slider.description == "batch size"
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == _dynamic_text("fortunes", 32)
    slider.value = 128
    assert readout.value == _dynamic_text("fortunes", 128)
    pick.value = "wordnet"
    assert readout.value == _dynamic_text("wordnet", 128)


@pytest.mark.parametrize("fn, kwargs, match", [
    (widgets.fixed_padding_widget, dict(corpus="imdb"), "corpus must be one of"),
    (widgets.fixed_padding_widget, dict(max_length=4), "max_length must be an integer >= 8"),
    (widgets.fixed_padding_widget, dict(max_length=1024), "max_length must be at most 512"),
    (widgets.dynamic_padding_widget, dict(corpus="imdb"), "corpus must be one of"),
    (widgets.dynamic_padding_widget, dict(batch_size=33), "batch_size must be one of"),
])
def test_padding_widgets_bad_input(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
