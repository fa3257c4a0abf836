"""The in-process memory store, for development and tests: bounded, LRU-evicting, self-cleaning.

Full, it evicts the least recently used anonymous record first; a logged-in (privileged) record
goes only when no anonymous one is left, so cookieless traffic cannot push users out. Its
counters (`MemoryStore.count`) have a bound of their own.

Records are kept as compact JSON, the form the memcached store keeps too, so a handler that
stores something unserialisable fails the same way on a laptop as in production, and nothing a
handler holds aliases what is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from stores.base import (
    Loaded,
    Operation,
    Record,
    SessionStore,
    StoreContext,
    apply_operations,
    counter_digest,
    dump_record,
    is_privileged,
)
from stores.options import Options
from stores.periodic import Periodic

log = logging.getLogger("stores.memory")


class MemoryOptions(NamedTuple):
    max_sessions: int
    sweep_interval: float
    sweep_batch: int


class MemoryStore(SessionStore):
    """At most ``max_sessions`` records; when full, the least recently used anonymous record goes
    first, and the least recently used of all only when every record is privileged.

    Expired records are freed on read and by a background sweep that walks from the least
    recently used end and stops at the first live record, in slices of ``sweep_batch`` so that
    freeing many at once never holds the IOLoop for long. A record with a short ttl behind a
    live one is freed on its next read, by eviction, or when the sweep reaches it.

    Options: ``max_sessions`` (100,000), ``sweep_interval`` (5 s), ``sweep_batch`` (2,000).
    """

    name = "memory"
    options = ("max_sessions", "sweep_interval", "sweep_batch")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> MemoryOptions:
        read = Options(cls.name, options, cls.options)
        checked = MemoryOptions(
            int(read.number("max_sessions", 100_000, whole=True)),
            read.number("sweep_interval", 5.0),
            int(read.number("sweep_batch", 2_000, whole=True)),
        )
        read.done()
        return checked

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: StoreContext) -> MemoryStore:
        checked = cls.check_options(options)
        return cls(
            checked.max_sessions,
            clock=context.clock,
            sweep_interval=checked.sweep_interval,
            sweep_batch=checked.sweep_batch,
            max_record_size=context.max_record_size,
        )

    def __init__(
        self,
        max_sessions: int,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 5.0,
        sweep_batch: int = 2_000,
        max_record_size: int = 64 * 1024,
        max_counters: int = 100_000,
    ) -> None:
        self.max_sessions = max_sessions
        self.clock = clock
        self._sweeper = Periodic(sweep_interval, self.sweep, "memory store sweep")
        self.sweep_batch = sweep_batch
        self.max_record_size = max_record_size
        # session id -> (record as JSON, expiry time). Order: least recently used first. Anonymous
        # records and privileged ones apart, so eviction finds the oldest anonymous one at once
        # and a record costs no more than one entry.
        self._records: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._privileged: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.max_counters = max_counters
        # counter digest -> [count, end of its window]. Order: least recently used first.
        self._counters: OrderedDict[str, list[float]] = OrderedDict()
        # Counters hit more than once in their window, evicted only after every one-off counter.
        self._repeated: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records) + len(self._privileged)

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        self._sweeper.stop()

    async def sweep(self) -> int:
        """Free expired records from the least recently used end; return how many were freed.

        Anonymous and privileged records are walked apart (their ttls differ), so one live
        logged-in record does not hide the expired anonymous ones behind it.
        """
        freed = 0
        for order in (self._records, self._privileged):
            while True:
                finished, count = self._sweep_slice(order)
                freed += count
                if finished:
                    break
                # Let requests run between slices.
                await asyncio.sleep(0)
        return freed

    def _sweep_slice(self, order: OrderedDict[str, tuple[str, float]]) -> tuple[bool, int]:
        """Free up to ``sweep_batch`` expired records from the old end of ``order``: (done, freed)."""
        now = self.clock()
        for freed in range(self.sweep_batch):
            if not order:
                return True, freed
            session_id, (_, expires_at) = next(iter(order.items()))
            if expires_at > now:
                return True, freed
            del order[session_id]
        return False, self.sweep_batch

    def _live(self, session_id: str) -> str | None:
        table = self._records
        entry = table.get(session_id)
        if entry is None:
            table = self._privileged
            entry = table.get(session_id)
            if entry is None:
                return None
        if entry[1] <= self.clock():
            del table[session_id]
            return None
        table.move_to_end(session_id)
        return entry[0]

    def _put(self, session_id: str, record: Record, ttl: float, now: float | None = None) -> None:
        """Keep ``record`` for ``ttl`` seconds from ``now`` (this store's clock, if not given)."""
        # As text: orjson's bytes keep the 4 KiB buffer they were written into; decoding copies
        # the JSON into an object of its own size (about 150 bytes for the reference app's record).
        text = dump_record(record, self.max_record_size).decode("utf-8")
        table, other = (self._privileged, self._records) if is_privileged(record) else (self._records, self._privileged)
        other.pop(session_id, None)
        table[session_id] = (text, (self.clock() if now is None else now) + ttl)
        table.move_to_end(session_id)
        while len(self._records) + len(self._privileged) > self.max_sessions:
            # An anonymous record first, even the one just stored: never a logged-in one while
            # an anonymous one is left.
            (self._records or self._privileged).popitem(last=False)

    async def load(self, session_id: str) -> Loaded | None:
        text = self._live(session_id)
        if text is None:
            return None
        # Decoded without parse_record's checks, which guard against what another process may
        # have left in a shared store: only _put writes here, from the session manager's record.
        # The version token is the stored value itself: unchanged while it is the same object.
        return Loaded(orjson.loads(text), text)

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        if self._live(session_id) is not None:
            return False
        self._put(session_id, record, ttl)
        return True

    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Loaded | None = None,
    ) -> Record | None:
        return self._update(session_id, operations, now, ttl, loaded)

    def _update(
        self, session_id: str, operations: Sequence[Operation], now: float, ttl: float, loaded: Loaded | None
    ) -> Record | None:
        if loaded is not None:
            entry = self._records.get(session_id) or self._privileged.get(session_id)
            clock = self.clock()
            if entry is not None and loaded.version is entry[0] and entry[1] > clock:
                # Nothing was written since that load: apply to it rather than parse the value again.
                merged = apply_operations(loaded.record, operations, now)
                self._put(session_id, merged, ttl, clock)
                return merged
        return self._apply(session_id, operations, now, ttl)

    def _apply(self, session_id: str, operations: Sequence[Operation], now: float, ttl: float) -> Record | None:
        # Synchronous from read to write: on one IOLoop, atomic.
        text = self._live(session_id)
        if text is None:
            return None
        current: Record = orjson.loads(text)
        merged = apply_operations(current, operations, now)
        self._put(session_id, merged, ttl)
        return merged

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        if loaded is not None and self._live(session_id) not in (None, loaded.version):
            # Written since that load: the write refreshed last_seen and the ttl already.
            return True
        return self._update(session_id, (), now, ttl, loaded) is not None

    async def delete(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._privileged.pop(session_id, None)

    async def count(self, key: str, window: float) -> int:
        digest = counter_digest(key)
        now = self.clock()
        entry = self._repeated.get(digest)
        if entry is None:
            entry = self._counters.pop(digest, None)
            if entry is not None and entry[1] > now:
                # Counted again within its window: it joins the counters evicted last.
                self._repeated[digest] = entry
            else:
                entry = self._counters[digest] = [0, now + window]
        elif entry[1] <= now:
            del self._repeated[digest]
            entry = self._counters[digest] = [0, now + window]
        entry[0] += 1
        (self._repeated if digest in self._repeated else self._counters).move_to_end(digest)
        while len(self._counters) + len(self._repeated) > self.max_counters:
            # Counters seen once go first: a flood of one-off names (a new email each attempt)
            # cannot push out the counts that hold a budget spent by repeated attempts.
            (self._counters or self._repeated).popitem(last=False)
        return int(entry[0])

    async def ready(self) -> bool:
        return True
