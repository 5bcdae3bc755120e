"""padlab.viz.schematics: layout_schematic (chapters 01-04) and autocast_flow (chapter 06), by hand."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from padlab import viz
from padlab._validate import PadlabError
from padlab.viz.style import DTYPE_COLOURS, EMPTY_COLOUR, MARK_COLOUR, PAD_QUERY_COLOUR, SEQUENCE_COLOURS

C = [np.array(to_rgb(c)) for c in SEQUENCE_COLOURS]
PAD, QPAD, WHITE = np.array(to_rgb(EMPTY_COLOUR)), np.array(to_rgb(PAD_QUERY_COLOUR)), np.ones(3)


def _img(ax):
    return np.asarray(ax.images[0].get_array())[..., :3]


# --- slot colours and row masks --------------------------------------------------------------------

def test_slot_colours_by_hand():
    got = viz.slot_colours(np.array([[0, 0, -1], [11, -1, -1]]))
    assert np.allclose(got, np.array([[C[0], C[0], PAD], [C[1], PAD, PAD]]))   # text 11 cycles to colour 1


def test_row_mask_padding_every_query_sees_the_real_keys():
    got = viz.row_mask_colours(np.array([3, 3, -1]), block_diagonal=False)
    assert np.allclose(got, np.array([[C[3], C[3], PAD], [C[3], C[3], PAD], [QPAD, QPAD, PAD]]))


def test_row_mask_block_diagonal_keeps_texts_apart_and_negative_control():
    row = np.array([0, 0, 1, -1])
    got = viz.row_mask_colours(row, block_diagonal=True)
    want = np.array([[C[0], C[0], PAD, PAD], [C[0], C[0], PAD, PAD], [PAD, PAD, C[1], PAD], [PAD, PAD, PAD, QPAD]])
    assert np.allclose(got, want)
    # without the block mask text 1 may see text 0's keys: the picture differs exactly there
    plain = viz.row_mask_colours(row, block_diagonal=False)
    assert np.allclose(plain[2, 0], C[1]) and not np.allclose(plain, got)


# --- layout_schematic ------------------------------------------------------------------------------

def _grids():
    # 'dynamic': two batches of widths 3 and 2; 'packed': one row of capacity 4 holding texts 0 and 1
    return {"dynamic": [np.array([[0, 0, 0], [1, -1, -1]]), np.array([[2, 2]])],
            "packed": [np.array([[0, 0, 1, -1]])]}


def test_layout_schematic_draws_every_slot_by_hand():
    fig = viz.layout_schematic(_grids(), block_diagonal=["packed"], title="tiny")
    assert isinstance(fig, Figure) and fig._suptitle.get_text() == "tiny"
    grid_d, mask_d, grid_p, mask_p = fig.get_axes()[:4]
    # canvas width 4 (the widest batch); batch 0 (2 rows), a white gap row, batch 1 (1 row, width 2)
    want = np.array([[C[0], C[0], C[0], WHITE], [C[1], PAD, PAD, WHITE], [WHITE] * 4, [C[2], C[2], WHITE, WHITE]])
    assert np.allclose(_img(grid_d), want)
    assert [t.get_text() for t in grid_d.get_yticklabels()] == ["batch 0\n2 x 3", "batch 1\n1 x 2"]
    assert grid_d.get_title(loc="left") == "dynamic" and mask_d.get_title() == "padding mask, row 0"
    assert np.allclose(_img(mask_d), np.tile(C[0], (3, 3, 1)))          # row 0 of dynamic: one text, no pad
    assert np.allclose(_img(grid_p), np.array([[C[0], C[0], C[1], PAD]]))
    assert mask_p.get_title() == "block-diagonal mask, row 0"
    assert np.allclose(_img(mask_p), viz.row_mask_colours(np.array([0, 0, 1, -1]), block_diagonal=True))


def test_layout_schematic_negative_control_without_block_diagonal_draws_the_padding_mask():
    fig = viz.layout_schematic(_grids())
    mask_p = fig.get_axes()[3]
    assert mask_p.get_title() == "padding mask, row 0"
    assert np.allclose(_img(mask_p)[2, 0], C[1])     # text 1 sees text 0: the leak the block mask stops


def test_layout_schematic_on_real_plans():
    from padlab.data import load_corpus
    from padlab.strategies import plan, plan_grids

    lengths = load_corpus("wordnet").lengths[:40]
    grids = {name: plan_grids(plan(name, lengths, batch_size=4, max_length=32, seed=0), lengths, batches=2)
             for name in ("fixed", "dynamic", "packed")}
    fig = viz.layout_schematic(grids, block_diagonal=["packed"])
    assert [ax.get_title(loc="left") for ax in fig.get_axes()[0::2]][:3] == ["fixed", "dynamic", "packed"]
    # every text's slots in a padded row are its own length (cut to 32), counted from the picture's data
    fixed = grids["fixed"][0]
    assert fixed.shape == (4, 32)
    assert [(r >= 0).sum() for r in fixed] == [min(int(lengths[r[0]]), 32) for r in fixed]


@pytest.mark.parametrize("grids, kw, name", [
    ({}, {}, "grids"),
    ({"a": []}, {}, "grids"),
    ({"a": [np.array([0.5, 1.0])]}, {}, "grids"),
    ({"a": [np.array([[0, -2]])]}, {}, "grids"),
    ({"a": [np.array([[0, -1]])]}, {"block_diagonal": ["b"]}, "block_diagonal"),
])
def test_layout_schematic_refuses_bad_input(grids, kw, name):
    with pytest.raises(PadlabError, match=name):
        viz.layout_schematic(grids, **kw)


# --- autocast_flow ---------------------------------------------------------------------------------

def _boxes(fig):
    ax = fig.get_axes()[0]
    return {p.get_gid(): p for p in ax.patches if isinstance(p, FancyBboxPatch)}, \
        {p.get_gid() for p in ax.patches if isinstance(p, FancyArrowPatch)}, " | ".join(t.get_text() for t in ax.texts)


def test_autocast_flow_fp16_amp_shows_masters_copies_and_the_scaler():
    fig = viz.autocast_flow("fp16-amp", scale=1024)
    boxes, arrows, text = _boxes(fig)
    assert set(boxes) == {"weights", "copies", "forward", "loss", "scaled", "backward", "grads", "unscale", "skip",
                          "step"}
    colour = {k: to_rgb(b.get_facecolor()[:3]) for k, b in boxes.items()}
    assert colour["weights"] == colour["grads"] == colour["step"] == to_rgb(DTYPE_COLOURS["float32"])
    assert colour["copies"] == colour["backward"] == to_rgb(DTYPE_COLOURS["float16"])
    assert colour["skip"] == to_rgb(MARK_COLOUR) and colour["scaled"] == colour["unscale"] == to_rgb(EMPTY_COLOUR)
    assert {"weights->copies", "unscale->skip", "unscale->step", "step->weights"} <= arrows and len(arrows) == 10
    assert "S = 1024" in text and "S <- S x 0.5" in text and "S <- S x 2" in text and "after 2000 clean steps" in text


def test_autocast_flow_bf16_amp_has_no_scaler_negative_control():
    boxes, arrows, text = _boxes(viz.autocast_flow("bf16-amp"))
    assert "scaled" not in boxes and "unscale" not in boxes and "x S" not in text
    assert to_rgb(boxes["copies"].get_facecolor()[:3]) == to_rgb(DTYPE_COLOURS["bfloat16"])
    assert to_rgb(boxes["weights"].get_facecolor()[:3]) == to_rgb(DTYPE_COLOURS["float32"])


def test_autocast_flow_pure_half_has_no_master_copy_and_fp32_no_half():
    boxes, _, text = _boxes(viz.autocast_flow("fp16-pure"))
    assert "copies" not in boxes and "no fp32 master copy" in text
    assert {to_rgb(b.get_facecolor()[:3]) for b in boxes.values()} == {to_rgb(DTYPE_COLOURS["float16"])}
    boxes, _, text = _boxes(viz.autocast_flow("fp32"))
    assert {to_rgb(b.get_facecolor()[:3]) for b in boxes.values()} == {to_rgb(DTYPE_COLOURS["float32"])}
    assert "master" not in text


def test_autocast_flow_refuses_an_unknown_policy():
    with pytest.raises(PadlabError, match="amp"):
        viz.autocast_flow("amp")


# --- batch_shape_schematic -------------------------------------------------------------------------

def test_batch_shape_schematic_draws_each_batch_to_scale_and_the_budget_curve():
    from matplotlib.patches import Rectangle

    from padlab.waste import BatchShape

    shapes = {"fixed-size": [(4, 10), (4, 3)],
              "token-budget": [BatchShape(rows=8, width=5, seq_lengths=np.array([5] * 8)), (2, 20)]}
    fig = viz.batch_shape_schematic(shapes, max_tokens=40, title="budget")
    left, right = fig.get_axes()
    rects = lambda ax: [(r.get_width(), r.get_height()) for r in ax.patches if isinstance(r, Rectangle)]
    assert rects(left) == [(10, 4), (3, 4)] and rects(right) == [(5, 8), (20, 2)]
    assert left.get_title() == "fixed-size: 2 batches"
    (curve,) = right.get_lines()
    x, y = curve.get_data()
    assert np.allclose(x * y, 40)                       # rows = max_tokens / width
    assert fig._suptitle.get_text() == "budget"
    assert not viz.batch_shape_schematic(shapes).get_axes()[1].get_lines()   # no budget, no curve


@pytest.mark.parametrize("shapes, kw, name", [
    ({}, {}, "shapes"), ({"a": []}, {}, "shapes"), ({"a": [(0, 3)]}, {}, "shapes"),
    ({"a": [(1, 2, 3)]}, {}, "shapes"), ({"a": [(1, 2)]}, {"max_tokens": 0}, "max_tokens"),
])
def test_batch_shape_schematic_refuses_bad_input(shapes, kw, name):
    with pytest.raises(PadlabError, match=name):
        viz.batch_shape_schematic(shapes, **kw)
