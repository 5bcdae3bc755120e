"""padlab.widgets: readouts against hand-written text, full labels, pictures at their shown size.

Expected readouts are written out by hand (the numbers in them checked against plain numpy on the
corpus below), never produced by ``widgets.READOUTS`` or the padlab function the widget calls.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from padlab import widgets  # noqa: E402
from padlab.data import load_corpus  # noqa: E402

WIDGETS_PY = Path(widgets.__file__)


def _controls(w):
    row = w.children[0]
    return row.children[0], row.children[1], w.children[1]


# --- chapters 01-02 -----------------------------------------------------------------------------

FIXED = {
    ("fortunes", 128): "fortunes, max_length 128: efficiency 32.2% (padding is 67.8% of computed tokens); "
                       "79,783 of 663,635 real tokens truncated (12.02%)",
    ("fortunes", 64): "fortunes, max_length 64: efficiency 53.3% (padding is 46.7% of computed tokens); "
                      "179,620 of 663,635 real tokens truncated (27.07%)",
    ("wordnet", 64): "wordnet, max_length 64: efficiency 30.7% (padding is 69.3% of computed tokens); "
                     "9,937 of 2,323,809 real tokens truncated (0.43%)",
}


@pytest.mark.parametrize("corpus, m", list(FIXED))
def test_fixed_padding_numbers_by_hand(corpus, m):
    # Fixed padding computes every text at m tokens: efficiency = sum(min(l, m)) / (n * m).
    lens = load_corpus(corpus).lengths.astype(np.int64)
    kept, cut = int(np.minimum(lens, m).sum()), int(np.maximum(lens - m, 0).sum())
    text = FIXED[corpus, m]
    assert f"efficiency {kept / (lens.size * m):.1%} " in text
    assert f"{cut:,} of {int(lens.sum()):,} real tokens truncated ({cut / lens.sum():.2%})" in text


def test_fixed_padding_widget_readout_follows_the_controls():
    w = widgets.fixed_padding_widget("fortunes", 128)
    pick, slider, readout = _controls(w)
    assert pick.description == "corpus" and slider.description == "max_length"
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == FIXED["fortunes", 128]
    png = w.children[2].value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 64
    assert readout.value == FIXED["fortunes", 64]
    pick.value = "wordnet"
    assert readout.value == FIXED["wordnet", 64]
    assert w.children[2].value != png                      # the figure was redrawn


DYNAMIC = {
    ("fortunes", 32): "fortunes, batch size 32: dynamic padding efficiency 19.7% against 9.1% for fixed padding "
                      "to 512; 2.16x fewer computed tokens",
    ("fortunes", 128): "fortunes, batch size 128: dynamic padding efficiency 14.3% against 9.1% for fixed padding "
                       "to 512; 1.57x fewer computed tokens",
    ("wordnet", 128): "wordnet, batch size 128: dynamic padding efficiency 28.4% against 3.9% for fixed padding "
                      "to 512; 7.35x fewer computed tokens",
}


@pytest.mark.parametrize("corpus, b", list(DYNAMIC))
def test_dynamic_padding_numbers_by_hand(corpus, b):
    # Dynamic padding: the corpus shuffled (numpy's seed-0 permutation) and cut into batches of b
    # texts, each as wide as its longest text (capped at 512).
    lens = np.minimum(load_corpus(corpus).lengths.astype(np.int64), 512)
    lens = lens[np.random.default_rng(0).permutation(lens.size)]
    widths = [int(lens[i:i + b].max()) * lens[i:i + b].size for i in range(0, lens.size, b)]
    dyn, fixed = sum(widths), lens.size * 512
    assert f"efficiency {lens.sum() / dyn:.1%} against {lens.sum() / fixed:.1%}" in DYNAMIC[corpus, b]
    assert f"{fixed / dyn:.2f}x fewer" in DYNAMIC[corpus, b]


def test_dynamic_padding_widget_readout_follows_the_controls():
    w = widgets.dynamic_padding_widget("fortunes", 32)
    pick, slider, readout = _controls(w)
    assert pick.description == "corpus" and slider.description == "batch size"
    assert "padlab-readout" in readout._dom_classes
    assert readout.value == DYNAMIC["fortunes", 32]
    slider.value = 128
    assert readout.value == DYNAMIC["fortunes", 128]
    pick.value = "wordnet"
    assert readout.value == DYNAMIC["wordnet", 128]


def test_dynamic_padding_keyword_option_reaches_the_readout():
    w = widgets.dynamic_padding_widget("fortunes", 64, max_length=128)
    assert w.children[1].value == ("fortunes, batch size 64: dynamic padding efficiency 32.2% against 32.2% "
                                   "for fixed padding to 128; 1.00x fewer computed tokens")


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


# --- every widget: labels shown in full, pictures at the size they are shown ---------------------

@functools.cache
def _widget(name):
    return getattr(widgets, name)()


def _walk(w):
    yield w
    for c in getattr(w, "children", ()):
        yield from _walk(c)


ALL = ["fixed_padding_widget", "dynamic_padding_widget", "bucketing_widget", "packing_widget",
       "float_toy_widget", "bench_widget"]


def test_all_lists_every_widget():
    assert sorted(ALL) == sorted(n for n in dir(widgets) if n.endswith("_widget"))


@pytest.mark.parametrize("name", ALL)
def test_widget_labels_are_not_cut(name):
    # ipywidgets cuts a description at its default label width (80 px: "mega_bat..."); "initial" fits the text.
    described = [c for c in _walk(_widget(name)) if getattr(c, "description", "")
                 and not isinstance(c, widgets.W.Button)]
    assert described
    for c in described:
        assert c.style.description_width == "initial", (name, c.description)


@pytest.mark.parametrize("name", ALL)
def test_widget_picture_is_drawn_at_the_width_it_is_shown(name):
    (image,) = [c for c in _walk(_widget(name)) if isinstance(c, widgets.W.Image)]
    width, height = widgets.png_size(image.value)
    assert image.layout.width == f"{width}px" and image.layout.height == "auto"
    assert 300 <= width <= widgets.PICTURE_MAX_WIDTH_PX


def test_png_size_and_picture_dpi_by_hand():
    import matplotlib.pyplot as plt
    from ipywidgets import Image

    # 5 x 2 inches at 110 dpi: 550 x 220 pixels; 12 inches would be 1320 px: capped at 960 (80 dpi).
    assert widgets.picture_dpi(5) == 110 and widgets.picture_dpi(12) == 80
    fig = plt.figure(figsize=(5, 2))
    image = Image(format="png")
    widgets.show_png(image, fig)
    assert widgets.png_size(image.value) == (550, 220) and image.layout.width == "550px"
    assert not plt.get_fignums()                            # the figure was freed


def test_widgets_import_no_plotting_and_no_private_names():
    # Wiring only: widgets draw through padlab.viz, never pyplot's plotting calls, and import no `_` name.
    tree = ast.parse(WIDGETS_PY.read_text())
    drawn = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == "plt"}
    assert drawn <= {"close"}, drawn
    private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
               if a.name.startswith("_") and n.module not in ("_validate", "__future__")]
    assert not private
