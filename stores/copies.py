"""`Copies`: the records a shared store last wrote in this process, with their versions.

A request that changes its session must otherwise read it first: one round trip for the load,
another for the write. With the copy this process kept when it last wrote that record (a write
starts a copy; a load only refreshes one already kept), the write goes out at once, against the
copy's version: stored means the copy was the stored record, so everything the request read from
it was current; changed or gone means the request runs again on a fresh load
(`stores.base.StaleCopy`). Copies are never served as confirmed.

A copy is the value as stored (sealed bytes) and its version, decoded again when used: bytes the
garbage collector never walks, where records kept as dicts, replaced as sessions are written,
made its full collections longer for every route (2-5% at 50 connections, measured).

Bounded twice: by count (least recently used first out) and by the bytes of the values kept, so
no client can make the process hold more than ``max_bytes`` of them. A copy is kept with the node
it came from: one from a node that has since left the ring is not offered.
"""

from __future__ import annotations

from collections import OrderedDict

from stores.base import Loaded

# Total bytes of the values kept, at most.
MAX_BYTES = 16 * 1024 * 1024


class Copies:
    """Up to ``max_entries`` copies (0 keeps none) and ``max_bytes`` of values, by storage key."""

    __slots__ = ("_bytes", "_entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # storage key -> (value, version, origin)
        self._entries: OrderedDict[str, tuple[bytes, bytes, str | None]] = OrderedDict()
        self._bytes = 0

    @property
    def on(self) -> bool:
        """Whether copies are kept at all."""
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The bytes of the values kept."""
        return self._bytes

    def keep(self, key: str, value: bytes, version: bytes, origin: str | None = None) -> None:
        """Keep ``value`` (as the store holds it) at ``version`` as the copy of ``key`` from ``origin``."""
        self.drop(key)
        if len(value) > self.max_bytes or not self.max_entries:
            return
        self._entries[key] = (value, version, origin)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (dropped, _, _) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def refresh(self, key: str, value: bytes | None, version: bytes | None, origin: str | None = None) -> None:
        """What a load found for ``key`` (None: nothing) replaces a copy kept of it; never starts
        one. Only writes do: a session this process only reads takes no memory here."""
        if key in self._entries:
            if value is None or version is None:
                self.drop(key)
            else:
                self.keep(key, value, version, origin)

    def get(self, key: str, origin: str | None = None) -> tuple[bytes, bytes] | None:
        """The copy of ``key`` as (value, version), if one is kept and came from ``origin``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[2] != origin:
            self.drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0], entry[1]

    def clear(self) -> None:
        """Forget every copy."""
        self._entries.clear()
        self._bytes = 0

    def lost(self, key: str, version: bytes | None) -> None:
        """A write against ``version`` of ``key`` lost: forget the copy if it is still that version.
        One at another version is a later write (or load) of this process's and stays."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] == version:
            self.drop(key)

    def drop(self, key: str) -> None:
        """Forget the copy of ``key``, if any."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])


def unconfirmed(loaded: Loaded | None) -> Loaded | None:
    """A copy decoded again, marked unconfirmed; None if it no longer reads as a current record
    (a copy sealed under an older key is worth no write against it: the next load rewrites it)."""
    if loaded is None or loaded.stale_seal:
        return None
    return Loaded(loaded.record, loaded.version, False, False)
