"""padlab: measure and fix what padding and precision cost a Transformer."""
from __future__ import annotations

__version__ = "0.1.0"
