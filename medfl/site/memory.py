"""What a node remembers between messages of one run, without Flower.

A SuperNode keeps a per-run ``context.state``; the Flower adapter
(``medfl.federation.memory``) implements :class:`NodeMemory` over it, so that the site
reads and writes plain JSON-like dicts and never sees a Flower record.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

#: A JSON-like record: numbers, strings, and lists of them.
Record = dict[str, Any]


class NodeMemory(Protocol):
    """The node's per-run memory: JSON-like records by key."""

    def get(self, key: str) -> Record | None:
        """The record kept under ``key``, or ``None``."""
        ...

    def put(self, key: str, record: Record) -> None:
        """Keep ``record`` under ``key`` (replacing any earlier one)."""
        ...


class DictMemory:
    """A :class:`NodeMemory` in a plain dict (tests, the CLI, one-off site runs)."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def get(self, key: str) -> Record | None:
        """A copy of the record under ``key``, or ``None``."""
        record = self._records.get(key)
        return None if record is None else copy.deepcopy(record)

    def put(self, key: str, record: Record) -> None:
        """Keep a copy of ``record`` under ``key``."""
        self._records[key] = copy.deepcopy(record)
