"""The store contract: what every session store guarantees, and the record and operations it keeps.

A record is a JSON-serialisable dict::

    {"data": {...}, "created_at": <epoch seconds>, "last_seen": <epoch seconds>}

plus ``"privileged": true`` on a record the session layer marked as logged in (see `PRIVILEGED`).

Handlers never write a record whole. They record operations (set, delete, increment) and the store
applies them to the newest stored version, so concurrent requests on one session lose no update.
Nothing here knows about HTTP or settings; a store does not know how the session id reached it.
`SessionStore` states the contract operation by operation; tests/test_store_conformance.py holds
every store to it, and docs/STORES.md says it in prose.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias

import orjson

Record: TypeAlias = dict[str, Any]
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


class StaleCopy(Exception):
    """An update or touch given this process's copy of a record (`SessionStore.copy`) found the
    stored record changed or gone since: nothing was written. The caller loads and starts again.

    ``found``: the lost write's own round trip told the store what it holds now, ``current``
    (None: no session), as a load would have given it; the caller may start again from it
    instead of loading, so a stale copy costs no more round trips than having none.
    """

    def __init__(self, message: str = "", *, found: bool = False, current: Loaded | None = None) -> None:
        super().__init__(message)
        self.found = found
        self.current = current


class Loaded(NamedTuple):
    """What `SessionStore.load` found: the record, and beside it what the store knows about it.

    ``version`` is the store's token for this version of the record (opaque to callers; None for
    a store without one): handing it back to `SessionStore.update` or `SessionStore.touch` lets
    the store write without reading again when nothing changed meanwhile. ``stale_seal``: the
    record was authenticated with an older secret's key; the session manager writes it again,
    under the newest key, at once (a touch). ``confirmed``: False for a copy this process kept
    (`SessionStore.copy`), which the store has not been asked about: it may be out of date.
    """

    record: Record
    version: Any = None
    stale_seal: bool = False
    confirmed: bool = True


@dataclass(frozen=True)
class StoreContext:
    """What the server gives every store, whichever it is: not options of any one store.

    ``record_keys``: MAC keys for stores others can write to (`stores.sealing`), newest first.
    ``max_record_size``: the largest record (JSON bytes) kept; larger writes are refused.
    ``clock``: the time, for stores that keep their own (the memory store).
    """

    record_keys: Sequence[bytes]
    max_record_size: int = 64 * 1024
    clock: Callable[[], float] = time.time


class Operation(NamedTuple):
    """One change to a session's data: ``set`` a value, ``delete`` a key, ``incr`` a number.

    A named tuple: immutable, and built on every write at a fraction of a frozen dataclass's cost.
    """

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
    """Where session records live. The contract every store keeps, and the conformance suite checks.

    Calls: every method is a coroutine that never blocks the IOLoop for a round trip. A store
    is built by `from_options`, then `start` (with the IOLoop running) before the first call and
    `close` after the last.

    Confirmation: a call returns only once the store has done what it says (stored, deleted,
    counted), visible to every process sharing the store; otherwise it raises.

    Errors: `StoreUnavailable` when the store cannot be reached, does not answer within its
    timeout or does not confirm (an outage, a refused write, contention it gave up on): nothing
    is promised, and the caller answers 503. A store recovers from an outage on its own, without
    a restart. `StoreValueError` when a record is not JSON or larger than ``max_record_size``:
    nothing is stored. A missing record is never an error.

    Missing: a record is missing when it was never stored, was deleted, outlived its ``ttl``, or
    what is stored under its id is not a record this server wrote (corrupt, hostile, or sealed
    with a key it does not hold): all read as None / False, never as an error or a session.

    Expiry: ``ttl`` (seconds) is how long after a write the store may forget the record, rounded
    up to whole seconds by stores that count in seconds; a store may forget earlier (memcached
    under memory pressure, the memory store when full), never keep a record readable later.

    Atomicity: `update` applies operations to the newest stored version atomically across every
    process sharing the store, so concurrent writers lose nothing; `touch` never overwrites a
    write that landed after the load it was given.

    Copies: a store that pays a round trip per load may keep, in this process, the record and
    version it last wrote for each session (a bounded number; a load refreshes a copy, never
    starts one), and hand one out through `copy`, unconfirmed. An `update` or `touch` given such
    a copy writes only if the stored version is still the copy's, and otherwise raises
    `StaleCopy`, writing nothing (and, where its answer told it, what is stored now): a request
    that ran on the copy is then run again on the session as stored, never answered from a
    stale one.
    """

    # The store's name, as settings choose it (SESSION_STORE) and its options' variables begin.
    name: ClassVar[str]
    # The options `from_options` reads (each also an environment variable, ``NAME_OPTION``).
    options: ClassVar[tuple[str, ...]]

    @classmethod
    @abc.abstractmethod
    def check_options(cls, options: Mapping[str, Any]) -> Any:
        """Read and check ``options``; what they configure, or `StoreOptionsError` naming each
        problem. Connects to nothing, so settings can be checked before anything starts."""

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Mapping[str, Any], context: StoreContext) -> SessionStore:
        """The store ``options`` describe (`StoreOptionsError` if they are wrong); not connected yet."""

    @property
    def connections(self) -> int:
        """The most file descriptors the store may hold open (the server keeps them in reserve)."""
        return 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin background work, if the store has any; called once the IOLoop runs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release connections."""

    @abc.abstractmethod
    async def load(self, session_id: str) -> Loaded | None:
        """The stored record with its version token, or None when it is missing (see above).

        The record holds only the fields of a record (nothing a store keeps beside it).
        """

    def copy(self, session_id: str) -> Loaded | None:
        """This process's copy of the record as it last wrote (or since read) it (``confirmed`` False),
        or None: no copy kept (the default: a store whose loads are cheap keeps none). Never a
        round trip; never a record this process did not see stored or store itself."""
        return None

    @abc.abstractmethod
    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        """Store ``record`` under an id no record has: True once stored.

        False, storing nothing and leaving the existing record as it was, when a record already
        has this id (the same in every store: an id is never taken over; a caller draws another).
        """

    @abc.abstractmethod
    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Loaded | None = None,
    ) -> Record | None:
        """Apply ``operations`` to the newest stored record (``last_seen`` = ``now``, the privileged
        mark kept), keep it ``ttl`` more seconds, and return what was stored; None if it is missing
        (a missing record is never brought back).

        ``loaded`` is what `load` returned, if the caller has it: a store with version tokens
        writes against that version in one round trip and reads again only if the record
        changed meanwhile. Atomic across processes: no concurrent update is lost. ``loaded``
        from `copy` (unconfirmed): written only if the stored version is still its own, else
        `StaleCopy` (changed or gone), nothing written.
        """

    @abc.abstractmethod
    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        """Set ``last_seen`` to ``now`` and keep the record ``ttl`` more seconds, data unchanged.

        False if the record is missing (the caller's session has ended). ``loaded`` is as in
        `update`. A touch never overwrites a write that landed after the load: that write already
        refreshed ``last_seen`` and the ttl, so the touch counts as done (True). Given an
        unconfirmed copy, as `update`: `StaleCopy` unless the stored version is still the copy's.
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
        """Whether the store can serve requests now (for the readiness probe); never raises."""
