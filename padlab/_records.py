"""Typed results that still read like the dicts they replace.

A private module shared by :mod:`padlab.cost` and :mod:`padlab.floats` (its names carry no
underscore because they are shared). :class:`FieldMapping` makes a frozen dataclass a read-only
``Mapping`` of its fields: ``r.total`` and ``r["total"]`` are the same number, ``dict(r)`` /
``r.as_dict()`` give a plain dict, and ``r == {...}`` compares field by field. Plots that stack
named parts iterate it like a dict; code that wants types reads attributes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Iterator

__all__ = ["FieldMapping"]


class FieldMapping(Mapping):
    """Mixin for a ``@dataclass(frozen=True, eq=False)``: the Mapping view of its fields, in order."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (JSON-ready where the values are)."""
        return dict(self.items())
