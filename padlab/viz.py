"""Plot functions: data in, matplotlib Figure out.

Nothing here computes waste, packs, rounds or trains: callers pass in what
:mod:`padlab.metrics`, :mod:`padlab.packing`, :mod:`padlab.floats` etc. computed. Each function
returns a ``matplotlib.figure.Figure`` so that notebooks, widgets and the CLI can show or save it.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__: list[str] = []


def _new(figsize=(7, 3.5), ncols: int = 1, nrows: int = 1, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kw)
    return fig, axes

# --- chapter 00: memory and time -------------------------------------------------------------

# --- chapters 01-02: fixed and dynamic padding -----------------------------------------------

# --- chapter 03: bucketing --------------------------------------------------------------------

# --- chapter 04: packing ----------------------------------------------------------------------

# --- chapter 05: float formats ----------------------------------------------------------------

# --- chapter 06: mixed precision --------------------------------------------------------------

# --- chapter 07: benchmark --------------------------------------------------------------------
