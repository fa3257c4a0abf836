"""`Copies`: the records a shared store last read or wrote in this process, with their versions.

A request that changes its session must otherwise read it first: one round trip for the load,
another for the write. With the copy this process kept when it last read or wrote that record,
the write goes out at once, against the copy's version: stored means the copy was the stored
record, so everything the request read from it was current; changed or gone means the request
runs again on a fresh load (`stores.base.StaleCopy`). Copies are never served as confirmed.

Bounded twice: by count (least recently used first out) and by the encoded size of the records
kept, so no client can make the process hold more than ``max_bytes`` of records. A copy is kept
with the node it came from: one read from a node that has since left the ring is not offered.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from stores.base import Loaded

# Total encoded bytes of the records kept, at most.
MAX_BYTES = 16 * 1024 * 1024


class Copies:
    """Up to ``max_entries`` copies (0 keeps none) and ``max_bytes`` of records, by storage key."""

    __slots__ = ("_bytes", "_entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Loaded, Any, int]] = OrderedDict()
        self._bytes = 0

    @property
    def on(self) -> bool:
        """Whether copies are kept at all."""
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The encoded size of the records kept."""
        return self._bytes

    def keep(self, key: str, loaded: Loaded, size: int, origin: Any = None) -> None:
        """Keep ``loaded`` (its record ``size`` bytes encoded) as the copy of ``key`` from ``origin``."""
        self.drop(key)
        if loaded.stale_seal or loaded.version is None or size > self.max_bytes or not self.max_entries:
            return
        if loaded.confirmed is False:
            raise ValueError("a copy is kept only of what the store confirmed")
        self._entries[key] = (Loaded(loaded.record, loaded.version, False, False), origin, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def get(self, key: str, origin: Any = None) -> Loaded | None:
        """The copy of ``key`` (unconfirmed), if one is kept and came from ``origin``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] is not origin:
            self.drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def clear(self) -> None:
        """Forget every copy."""
        self._entries.clear()
        self._bytes = 0

    def drop(self, key: str) -> None:
        """Forget the copy of ``key``, if any."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]
