"""The store protocol: what every session store provides, and the record and operations it keeps.

A record is a JSON-serialisable dict::

    {"data": {...}, "created_at": <epoch seconds>, "last_seen": <epoch seconds>}

plus ``"privileged": true`` on a record the session layer marked as logged in (see `PRIVILEGED`).

Handlers never write a record whole. They record operations (set, delete, increment) and the store
applies them to the newest stored version, so concurrent requests on one session lose no update.
Nothing here knows about HTTP; a store does not know how the session id reached it.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import orjson

Record: TypeAlias = dict[str, Any]
# A store that can compare-and-swap puts its version token for the loaded record under this key
# (never stored, never shown to handlers); handing the record back to update() saves a read.
VERSION = "_version"
# A store that authenticates its records marks a loaded record sealed under an older secret's key
# with this (never stored, never shown to handlers): the session manager then writes it again,
# under the newest key, at once (a touch).
STALE_SEAL = "_stale_seal"
# A record carrying this key (always ``true``) belongs to a logged-in session: the session layer
# sets it on the record a regenerated session is created with, and every later version keeps it.
# Stores only read it to protect such records (the memory store evicts anonymous ones first); they
# know nothing of users. Absent: an anonymous record.
PRIVILEGED = "privileged"
# The strict encoder a value passes on its way into a session (see `json_value`); records
# themselves are encoded and decoded with orjson, several times faster on the hot path.
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class StoreUnavailable(Exception):
    """The store could not be reached or did not confirm an operation. Handlers answer 503."""


class StoreValueError(Exception):
    """A value the store refuses to keep (not JSON, or larger than its limit). Handlers answer 413."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One change to a session's data: ``set`` a value, ``delete`` a key, ``incr`` a number."""

    kind: Literal["set", "delete", "incr"]
    key: str
    value: Any = None


def json_value(value: Any) -> Any:
    """``value`` as plain JSON data (a fresh copy), or `StoreValueError` if JSON cannot hold it.

    The standard library's rules, strictly: NaN and infinities, sets, bytes, dates and other
    objects are refused; tuples become lists and non-string keys strings, as a JSON round trip
    would make them. Every value enters a session through here, so a record holds plain JSON
    types only and its fast encoder (orjson, which would write NaN as null and dates as strings)
    never sees anything else.
    """
    try:
        return json.loads(_STRICT.encode(value))
    except (TypeError, ValueError, RecursionError) as e:
        raise StoreValueError(f"session data is not JSON-serialisable: {e}") from None


def new_record(now: float, privileged: bool = False) -> Record:
    """An empty record created at ``now``; ``privileged`` marks a logged-in session's."""
    record: Record = {"data": {}, "created_at": now, "last_seen": now}
    if privileged:
        record[PRIVILEGED] = True
    return record


def is_privileged(record: Record) -> bool:
    """Whether ``record`` belongs to a logged-in session (see `PRIVILEGED`)."""
    return record.get(PRIVILEGED) is True


def apply_operations(record: Record, operations: Sequence[Operation], now: float) -> Record:
    """Return a copy of ``record`` with ``operations`` applied in order and ``last_seen`` = now.

    An increment of a missing or non-numeric value starts from 0. The privileged mark is kept.
    """
    merged = {"data": applied(record["data"], operations), "created_at": record["created_at"], "last_seen": now}
    if record.get(PRIVILEGED) is True:
        merged[PRIVILEGED] = True
    return merged


def applied(data: dict[str, Any], operations: Sequence[Operation]) -> dict[str, Any]:
    """A copy of a session's ``data`` with ``operations`` applied in order."""
    data = dict(data)
    for op in operations:
        if op.kind == "set":
            data[op.key] = op.value
        elif op.kind == "delete":
            data.pop(op.key, None)
        else:
            current = data.get(op.key)
            if not isinstance(current, int) or isinstance(current, bool):
                current = 0
            data[op.key] = current + op.value
    return data


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def parse_record(raw: str | bytes) -> Record | None:
    """Decode a stored record; anything malformed (bad JSON, wrong types) is None, never an error.

    Stores call this on what they read back, so a corrupted or hostile value in the store reads
    as "no session" instead of reaching a handler.
    """
    try:
        record = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # orjson.JSONDecodeError is a ValueError
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("data"), dict)
        or not _is_time(record.get("created_at"))
        or not _is_time(record.get("last_seen"))
    ):
        return None
    parsed = {"data": record["data"], "created_at": record["created_at"], "last_seen": record["last_seen"]}
    if record.get(PRIVILEGED) is True:
        parsed[PRIVILEGED] = True
    return parsed


def counter_digest(key: str) -> str:
    """The hex SHA-256 a counter is kept under: whatever a caller puts in ``key`` (an email, an
    address), a store keeps and sends only this, never the text itself."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def dump_record(record: Record, max_size: int | None = None) -> bytes:
    """Encode a record as compact UTF-8 JSON; `StoreValueError` if it is not JSON or too large."""
    try:
        encoded = orjson.dumps(record)
    except TypeError as e:  # orjson.JSONEncodeError: another type, a non-string key, a 65-bit integer
        raise StoreValueError(f"session data is not JSON-serialisable: {e}") from None
    if max_size is not None and len(encoded) > max_size:
        raise StoreValueError(f"session record is larger than {max_size} bytes")
    return encoded


class SessionStore(abc.ABC):
    """Where session records live. Every method is a coroutine that never blocks the IOLoop.

    Outages raise `StoreUnavailable`; a missing record is not an error (None / False).
    ``ttl`` is in seconds: the store may forget a record that long after the call.
    """

    # Seconds between runs of maintain(); None: the store needs no background work.
    maintenance_interval: float | None = None
    _maintainer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin background work (``maintain`` every ``maintenance_interval`` s), once the IOLoop runs."""
        if self.maintenance_interval is not None and self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain_forever(self.maintenance_interval))

    async def close(self) -> None:
        """Stop background work and release connections."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            self._maintainer = None

    async def maintain(self) -> None:  # noqa: B027 - optional hook
        """Background work: freeing expired records, probing failed servers."""

    async def _maintain_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.maintain()
            except Exception:  # a failed round must not end the next ones
                logging.getLogger("stores").exception("%s maintenance failed", type(self).__name__)

    @abc.abstractmethod
    async def load(self, session_id: str) -> Record | None:
        """The stored record, or None when there is none (or it expired)."""

    @abc.abstractmethod
    async def create(self, session_id: str, record: Record, ttl: float) -> None:
        """Store a record under a new id. Confirmed: returns only once it is stored."""

    @abc.abstractmethod
    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Record | None = None,
    ) -> Record | None:
        """Apply ``operations`` to the newest stored record and return it; None if it is gone.

        ``loaded`` is the record as ``load`` returned it, if the caller has it: a store with
        version tokens tries it first and reads again only if the record changed meanwhile.
        """

    @abc.abstractmethod
    async def touch(self, session_id: str, now: float, ttl: float, loaded: Record | None = None) -> bool:
        """Set ``last_seen`` to ``now`` and extend the ttl without changing data; False if gone.

        ``loaded`` is as in `update`. A touch never overwrites a write that landed after the
        load: that write already refreshed ``last_seen`` and the ttl, and the touch counts as done.
        """

    @abc.abstractmethod
    async def delete(self, session_id: str) -> None:
        """Forget a record. Deleting a missing record is not an error."""

    @abc.abstractmethod
    async def count(self, key: str, window: float) -> int:
        """Add one to the counter ``key`` and return its new value, shared by every process.

        A fixed window: the counter starts at 1 on its first hit and is forgotten ``window``
        seconds later, whatever happens meanwhile; the next hit starts it again at 1. Counters are
        apart from session records (no id can name one) and kept under `counter_digest` of
        ``key``, so callers may build keys from client input. A store keeps a bounded number of
        them (the memory store forgets its least recently used ones first; memcached may evict
        them like any item): a forgotten counter starts again, so a count is a floor, never more
        than the hits made. Raises `StoreUnavailable` when the count cannot be confirmed: callers
        that limit something with it refuse rather than let it through (fail closed).
        """

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether the store can serve requests now (for the readiness probe)."""
