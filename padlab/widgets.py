"""ipywidgets wiring only: a control changes, padlab computes, a :mod:`padlab.viz` function plots.

Every ``*_widget`` function returns an ``ipywidgets.Widget`` (controls plus an output area) and
keeps no state of its own beyond the controls. The numbers a widget shows come from the same
padlab functions the tests check, so a browser test can compare the page with padlab.
"""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display


def _show(out: W.Output, fig) -> None:
    """Replace ``out``'s content with ``fig`` and free it (widgets redraw often)."""
    out.clear_output(wait=True)
    with out:
        display(fig)
    plt.close(fig)

# --- chapters 01-02: fixed and dynamic padding -----------------------------------------------

# --- chapter 03: bucketing --------------------------------------------------------------------

# --- chapter 04: packing ----------------------------------------------------------------------

# --- chapter 05: float formats ----------------------------------------------------------------

# --- chapter 07: benchmark --------------------------------------------------------------------
