"""padlab: measure and fix what padding and precision cost a Transformer."""
from __future__ import annotations

__version__ = "0.1.0"

#: The canonical address of the repository (the notebooks' Colab badges and install cells use it;
#: tests/test_colab.py checks they all agree with it).
REPO_URL = "https://github.com/padlab/padlab"

from ._validate import PadlabError  # noqa: E402 - the one error class for bad arguments, as padlab.PadlabError

__all__ = ["PadlabError", "REPO_URL", "__version__"]
