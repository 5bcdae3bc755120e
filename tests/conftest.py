"""What every test file shares: a headless matplotlib, figures closed after each test, a free port,
and the ``slow`` marker on the notebook (nbval) and multi-process runs.

pytest loads this file before the test modules, so ``matplotlib.use("Agg")`` here comes before any
``import matplotlib.pyplot``: no test needs its own backend line.
"""
from __future__ import annotations

import socket
import sys

import matplotlib
import pytest

matplotlib.use("Agg")  # headless: no display on CI machines, and no window per figure


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every figure a test leaves open (matplotlib warns past 20, and each holds memory)."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")  # only if some test imported it: no import cost otherwise
    if plt is not None:
        plt.close("all")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a process group or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    # Notebook cells (nbval) each run a kernel's worth of work: mark them slow, so that
    # `pytest -m "not slow"` is the quick unit run.
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
