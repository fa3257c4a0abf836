"""The production store: memcached over one or many nodes.

What the requests of one loop iteration ask of a node travels as one batch in one round trip:
their compare-and-swap writes (updates and touches) and one multi-get for their loads, in a
single send, on a pipelined connection the IOLoop reads itself (`stores.memcached_wire`): a
request's loads and saves cost no thread hand-off, which at one connection would cost more than
the round trip. A compare-and-swap that lost tries again from what the batch read back after it
(`BATCHED_RETRIES`). The rare calls (creating a session, deleting one, counters, probes, and a
compare-and-swap that keeps losing) go through pymemcache's blocking pooled client on a small
thread pool.

Placement and node health: `stores.memcached_ring` (rendezvous hashing; a failing node answers
503 for its sessions until it has failed for ``dead_after`` seconds, then leaves the ring until
the store's probe finds it answering). The protocol on pymemcache's connections:
`stores.memcached_client`.

Counters (`MemcachedStore.count`): ``prefix + "count:" + sha256(key)``, memcached's own ``incr``
and ``add``; a session key is the prefix and 64 hex digits, so the two never meet.

Keys: ``prefix + sha256(session id)``, so a dump of memcached holds no usable cookie and no client
input reaches the protocol raw. Values: JSON only, size-limited, behind a MAC bound to the key
(`stores.sealing`): memcached has no authentication, and a value someone else wrote reads as no
session. A session is that one key, so a
load fetches and parses one value. A touch (at most once per ``touch_interval``) is a
compare-and-swap of the record as loaded, with a new ``last_seen`` and TTL: it cannot overwrite a
concurrent write, and when it loses to one there is nothing to retry, since every write refreshes
both.

Over 300 lines on purpose: what is left is one class, whose loads, writes, touches and counters
all go through the same per-node batch and its answers; split, each part would reach into the
others' state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
)

from stores.base import (
    Loaded,
    Operation,
    Record,
    SessionStore,
    StaleCopy,
    StoreContext,
    StoreUnavailable,
    apply_operations,
    counter_digest,
)
from stores.copies import Copies, unconfirmed
from stores.memcached_client import (
    CasContention,
    CasResult,
    CasWrite,
    CheckedPooledClient,
    WriteRefused,
    answers_read,
    count_blocking,
    memcached_exptime,
    tls_context,
)
from stores.memcached_ring import Node, Ring
from stores.memcached_wire import Wire
from stores.options import KEY_PREFIX, Options, parse_address
from stores.periodic import Periodic
from stores.remembered import Remembered
from stores.sealing import SealedRecords
from stores.workers import Workers

log = logging.getLogger("stores.memcached")

T = TypeVar("T")
# What a load fetched: the record's bytes and version token, or (None, None).
_Fetched = tuple[bytes | None, Any]


# A cas that lost tries again this many times from what the batch read back, on the IOLoop; then
# on a worker thread. Few: each round of many writers of one session stores one of them, and the
# threads are what bounds a client that sends many at once.
BATCHED_RETRIES = 2
# Keys remembered as cleared of strays (see MemcachedStore._clear_strays); past it the oldest go.
STRAYS_REMEMBERED = 10_000


class _Lost(NamedTuple):
    """A cas that lost (EXISTS), with what the batch read back after it: the value and version
    stored now, or (None, None) when nothing is; ``alone``: no other write of its batch was to
    the same key (none of this process's own writers of the session is racing it)."""

    raw: bytes | None
    token: Any
    alone: bool


class _Batch:
    """What the requests of one loop iteration ask of one node."""

    __slots__ = ("loads", "writes")

    def __init__(self) -> None:
        self.loads: dict[str, list[asyncio.Future[_Fetched]]] = {}
        # A write's future gets its CasResult, for a stored one the version it got (bytes), for
        # a lost one what is stored now (_Lost), when the batch read the key back.
        self.writes: list[tuple[CasWrite, asyncio.Future[CasResult | bytes | _Lost]]] = []


class MemcachedOptions(NamedTuple):
    servers: tuple[str, ...]
    prefix: str
    connect_timeout: float
    timeout: float
    threads: int
    busy_poll: float
    copies: int
    dead_after: float
    probe_interval: float
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None


class MemcachedStore(SessionStore):
    """Session records in memcached. See the module docstring for the design.

    Options (environment variables ``MEMCACHED_<OPTION>``): ``servers`` (host:port, comma-separated;
    127.0.0.1:11211), ``prefix`` ("session:"), ``timeout`` and ``connect_timeout`` (0.5 s),
    ``threads`` (16: worker threads, and pooled connections per node, for the calls outside the
    batches: creates, deletes, counters, probes), ``busy_poll`` (200 µs: how long the loop polls,
    rather than sleeps, after a batch is sent while answers are due; 0 turns it off; see
    `stores.busy_poll`), ``copies`` (10,000: sessions whose record and version this process
    keeps as it last wrote them, for `SessionStore.copy`; 0: none), ``dead_after`` (3 s failing
    before a node leaves the ring), ``probe_interval`` (1 s), and TLS: ``tls_ca`` (turns it on),
    ``tls_cert`` and ``tls_key`` (a client certificate).
    """

    name = "memcached"
    options = MemcachedOptions._fields

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> MemcachedOptions:
        read = Options(cls.name, options, cls.options)
        servers = read.addresses("servers", ("127.0.0.1:11211",))
        read.require(bool(servers), "servers", "the memcached store needs at least one host:port")
        checked = MemcachedOptions(
            servers=servers,
            prefix=read.key_prefix("prefix", "session:"),
            connect_timeout=read.number("connect_timeout", 0.5),
            timeout=read.number("timeout", 0.5),
            threads=int(read.number("threads", 16, whole=True)),
            busy_poll=read.busy_poll(),
            copies=int(read.number("copies", 10_000, whole=True, zero=True)),
            dead_after=read.number("dead_after", 3.0),
            probe_interval=read.number("probe_interval", 1.0),
            tls_ca=read.file("tls_ca"),
            tls_cert=read.file("tls_cert"),
            tls_key=read.file("tls_key"),
        )
        read.require(
            bool(checked.tls_cert) == bool(checked.tls_key), "tls_cert", "set both or neither of tls_cert, tls_key"
        )
        read.require(
            not checked.tls_cert or bool(checked.tls_ca),
            "tls_ca",
            "a client certificate needs the CA that verifies the server",
        )
        read.done()
        return checked

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: StoreContext) -> MemcachedStore:
        checked = cls.check_options(options)
        tls = tls_context(checked.tls_ca, checked.tls_cert, checked.tls_key) if checked.tls_ca else None
        return cls(
            checked.servers,
            record_keys=context.record_keys,
            prefix=checked.prefix,
            connect_timeout=checked.connect_timeout,
            timeout=checked.timeout,
            threads=checked.threads,
            busy_poll_seconds=checked.busy_poll / 1e6,
            copies=checked.copies,
            max_record_size=context.max_record_size,
            dead_after=checked.dead_after,
            probe_interval=checked.probe_interval,
            tls=tls,
        )

    def __init__(
        self,
        servers: Sequence[str],
        *,
        record_keys: Sequence[bytes],
        prefix: str = "session:",
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        threads: int = 8,
        busy_poll_seconds: float = 0.0,
        copies: int = 10_000,
        max_record_size: int = 64 * 1024,
        dead_after: float = 3.0,
        probe_interval: float = 1.0,
        cas_retries: int = 64,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not servers:
            raise ValueError("at least one memcached server is required")
        if not KEY_PREFIX.fullmatch(prefix):
            # Batches send keys unchecked (see request_bytes): this makes every key valid.
            raise ValueError(f"memcached key prefix {prefix!r}: up to 100 printable ASCII characters, no spaces")
        self.prefix = prefix
        self.max_record_size = max_record_size
        self._records = SealedRecords(record_keys, max_record_size, "memcached")
        self._prober = Periodic(probe_interval, self.probe, "memcached probe")
        self.cas_retries = cas_retries
        self._copies = Copies(copies)
        # Keys whose strays were deleted since a node last rejoined (see _clear_strays).
        self._strays_cleared = Remembered(STRAYS_REMEMBERED)
        self._workers = Workers(threads, name="memcached")
        self.threads = threads
        clients = {}
        self._wires: dict[str, Wire] = {}
        for server in servers:
            host, port = parse_address(server)
            self._wires[server] = Wire(
                host,
                port,
                connect_timeout=connect_timeout,
                timeout=timeout,
                tls=tls,
                busy_poll_seconds=busy_poll_seconds,
                max_value=self._records.max_value_size,
            )
            clients[server] = CheckedPooledClient(
                (host, port),
                connect_timeout=connect_timeout,
                timeout=timeout,
                no_delay=True,
                max_pool_size=threads,
                default_noreply=False,  # every write is confirmed
                tls_context=tls,
            )
        self._ring = Ring(clients, dead_after)
        self._pending: dict[Node, _Batch] = {}
        self._flush_scheduled = False

    @property
    def dead_after(self) -> float:
        """Seconds a node fails before it leaves the ring."""
        return self._ring.dead_after

    # Keys and placement --------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The memcached key for a session id: the prefix and the id's hex SHA-256."""
        return self.prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()

    def counter_key(self, key: str) -> str:
        """The memcached key for a counter: the prefix, ``count:`` and the key's hex SHA-256."""
        return f"{self.prefix}count:{counter_digest(key)}"

    def node_name(self, session_id: str) -> str | None:
        """The node a session id lives on now (None when no node is in the ring)."""
        return self._ring.node_name(self.key(session_id))

    def _store_error(self, node: Node, error: BaseException) -> BaseException:
        """What a failed client call means to a request; outages are noted against the node."""
        if isinstance(error, OSError | MemcacheError):
            self._ring.failed(node, error)
            return StoreUnavailable(f"memcached {node.name}: {error.__class__.__name__}")
        if isinstance(error, CasContention):
            self._ring.succeeded(node)
            return StoreUnavailable("session updated too often at once")
        return error

    async def _call(self, node: Node, function: Callable[..., T], *args: Any) -> T:
        """Run one blocking client call on the thread pool; map failures to StoreUnavailable."""
        try:
            result = await self._workers.run(function, *args)
        except Exception as e:
            failure = self._store_error(node, e)
            if failure is e:
                raise
            raise failure from e
        self._ring.succeeded(node)
        return result

    @property
    def connections(self) -> int:
        # Per node: the pool (one per thread) and the pipelined connection of loads and saves.
        return (self.threads + 1) * len(self._ring.nodes)

    async def start(self) -> None:
        self._prober.start()

    async def close(self) -> None:
        self._prober.stop()
        self.shutdown()

    def shutdown(self) -> None:
        """Release threads and connections (synchronous, for callers outside the IOLoop)."""
        self._workers.shutdown()
        for node in self._ring.nodes.values():
            node.client.close()
            self._wires[node.name].close()

    async def probe(self) -> None:
        """Probe failed nodes, so they are retired after ``dead_after`` and rejoin once they answer.

        A node that left the ring is emptied (``flush_all``) before it rejoins. Its sessions were
        lost when it left: their users started again on other nodes, and a logout meanwhile found
        nothing to delete. A node that was only cut off (a partition, a stopped process) still
        holds them, and would bring back every one of them, a logged-out session included, to
        whoever kept its cookie. So the nodes must hold this server's data only.
        """
        for node in list(self._ring.nodes.values()):
            if node.in_ring and node.failing_since is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self._call(node, node.client.version)
            elif not node.in_ring:
                try:
                    await self._call(node, node.client.flush_all, 0, False)  # noreply off: confirmed
                except StoreUnavailable as e:
                    if isinstance(e.__cause__, MemcacheClientError) and not node.flush_refused:
                        # memcached -F: left out rather than back with what it held.
                        node.flush_refused = True
                        log.error("memcached %s answers but refuses flush_all: left out of the ring", node.name)
                    continue
                self._copies.clear()  # none of them is on the node any more
                self._strays_cleared.clear()  # its keys may have strays elsewhere again
                self._ring.rejoin(node)

    async def ready(self) -> bool:
        """True if at least one node in the ring answers."""
        for node in self._ring.nodes.values():
            if not node.in_ring:
                continue
            try:
                await self._call(node, node.client.version)
                return True
            except StoreUnavailable:
                continue
        return False

    # Values --------------------------------------------------------------------------------

    def _decode(self, key: str, raw: bytes | None, token: Any = None) -> Loaded | None:
        return self._records.decode(key, raw, token)

    def _encode(self, key: str, record: Record) -> bytes:
        return self._records.encode(key, record)

    # Batches: the loads and writes of one loop iteration, per node ------------------------

    def _batch(self, node: Node) -> _Batch:
        batch = self._pending.get(node)
        if batch is None:
            batch = self._pending[node] = _Batch()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return batch

    async def load(self, session_id: str) -> Loaded | None:
        key = self.key(session_id)
        node = self._ring.node_for(key)
        future: asyncio.Future[_Fetched] = asyncio.get_running_loop().create_future()
        self._batch(node).loads.setdefault(key, []).append(future)
        raw, token = await future
        if raw is None and len(self._ring.nodes) > 1 and key not in self._strays_cleared:
            await self._clear_strays(key, node)
        loaded = self._decode(key, raw, token)
        self._copies.refresh(key, raw if loaded is not None else None, token, node.name)
        return loaded

    async def _clear_strays(self, key: str, home: Node) -> None:
        """Delete ``key`` on the nodes other than its home, after its home had no record of it.

        While a node is out of the ring, its keys are written to the others. Once it is back,
        those copies are strays: unread, but alive until their TTL, and a logout reaches only
        the home. Should the home leave again, a stray would be read, and a session lost or
        logged out meanwhile would come back. A key whose home has no record must have none
        anywhere. A process cannot know what happened before it started, so this runs from the
        start; then once per key until a node rejoins: a replayed dead cookie costs no more
        deletes. The deletes go out at once, each node's on the worker threads; a node that fails
        is skipped from then on (as failing) and the key tried again on its next miss.
        """
        others = [n for n in self._ring.nodes.values() if n is not home and n.in_ring and n.failing_since is None]
        outcomes = await asyncio.gather(
            *(self._call(other, other.client.delete, key, False) for other in others), return_exceptions=True
        )
        if any(isinstance(outcome, StoreUnavailable) for outcome in outcomes):
            return
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # not an outage: a bug, as from any store call
        self._strays_cleared.remember(key, None)

    def copy(self, session_id: str) -> Loaded | None:
        key = self.key(session_id)
        kept = self._copies.get(key, self._ring.node_for(key).name)
        if kept is None:
            return None
        copy = unconfirmed(self._decode(key, *kept))
        if copy is None:
            self._copies.drop(key)
        return copy

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for node, batch in pending.items():
            writes = [write for write, _ in batch.writes]
            # The gets also reads back each written key (after the writes, in the same send): a
            # stored write's new version, which the classic cas does not answer with, for the copy.
            keys = list(batch.loads)
            read_back = self._copies.on
            if read_back:
                keys.extend(dict.fromkeys(write[0] for write in writes if write[0] not in batch.loads))
            # Sent at once on the node's pipelined connection; the answers land on the IOLoop.
            self._wires[node.name].exchange(writes, keys, functools.partial(self._landed, node, batch, read_back))

    def _landed(self, node: Node, batch: _Batch, read_back: bool, answer: Any, error: BaseException | None) -> None:
        """A batch's answers (or its failure) reach each waiting request."""
        try:
            if error is not None:
                raise self._store_error(node, error)
            self._ring.succeeded(node)
            written, found = answer
            # How often each key was written in this batch (counted at the first lost write: a key
            # written more than once is this process's own writers racing each other).
            counted: collections.Counter[str] | None = None
            for (write, wrote), result in zip(batch.writes, written, strict=True):
                if not wrote.done():
                    if result is True:
                        # Stored: the version it got, if what is stored now is still this value.
                        value_and_token = found.get(write[0])
                        if value_and_token is not None and value_and_token[0] == write[1]:
                            result = value_and_token[1]
                    elif result is False and read_back:
                        # What won, read after it.
                        if counted is None:
                            counted = collections.Counter(write[0] for write, _ in batch.writes)
                        raw, token = found.get(write[0], (None, None))
                        result = _Lost(raw, token, alone=counted[write[0]] == 1)
                    wrote.set_result(result)
            missing = (None, None)
            for key, futures in batch.loads.items():
                value = found.get(key, missing)
                for fetched in futures:
                    if not fetched.done():
                        fetched.set_result(value)
        except Exception as e:
            # Every waiter hears of it; a bug here must not leave requests hanging.
            for future in self._waiters(batch):
                if not future.done():
                    future.set_exception(StoreUnavailable(str(e)) if isinstance(e, StoreUnavailable) else e)

    @staticmethod
    def _waiters(batch: _Batch) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = [future for _, future in batch.writes]
        for waiting in batch.loads.values():
            futures.extend(waiting)
        return futures

    # Writes --------------------------------------------------------------------------------

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        key = self.key(session_id)
        value = self._encode(key, record)
        node = self._ring.node_for(key)
        self._copies.drop(key)
        # add stores only if the key is free: NOT_STORED (False) when a record has the id.
        return bool(await self._call(node, node.client.add, key, value, memcached_exptime(ttl)))

    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Loaded | None = None,
    ) -> Record | None:
        key = self.key(session_id)
        node = self._ring.node_for(key)
        token = loaded.version if loaded is not None else None
        if loaded is not None and not loaded.confirmed and token is None:
            raise StaleCopy(key)  # a copy without a version: nothing to check it against
        if loaded is not None and token is not None:
            # The common case: one cas against the version the load fetched (or this process's
            # copy holds), in this iteration's batch.
            current = loaded
            for _ in range(1 + BATCHED_RETRIES):
                merged = apply_operations(current.record, operations, now)
                result = await self._batched_cas(node, key, merged, current.version, ttl)
                if result is True:
                    return merged
                if not current.confirmed:
                    raise self._stale(key, result)
                if result is None:  # NOT_FOUND: deleted meanwhile
                    return None
                # Another writer came first. The batch read the key back after the writes: start
                # again from what won, in the next batch, with no read of its own. Not when this
                # process's own writers of the session raced in that batch: they would all try
                # again against the same version, and all but one lose again.
                if not isinstance(result, _Lost) or result.raw is None or not result.alone:
                    break
                won = self._decode(key, result.raw, result.token)
                if won is None:
                    break
                current = won
            # No read-back (copies off), or still losing: read and try again off the batch, where
            # the worker threads bound how many writers retry at once and back off.
        self._copies.drop(key)
        return await self._call(node, self._update_blocking, node.client, key, operations, now, ttl)

    async def _batched_cas(self, node: Node, key: str, record: Record, token: Any, ttl: float) -> bool | _Lost | None:
        """A cas of ``record`` in this iteration's batch: True stored (and kept as this process's
        copy, with the version memcached gave it), False or `_Lost` lost (the latter with what
        is stored now), None gone (no copy kept but on True)."""
        value = self._encode(key, record)
        write: CasWrite = (key, value, token, memcached_exptime(ttl))
        future: asyncio.Future[CasResult | bytes | _Lost] = asyncio.get_running_loop().create_future()
        self._batch(node).writes.append((write, future))
        try:
            result = await future
        except BaseException:
            self._copies.drop(key)  # the write may or may not have landed
            raise
        if isinstance(result, bytes):
            self._copies.keep(key, value, result, node.name)
            return True
        # Lost, gone, or stored and written over in the same batch: the copy at ``token`` is out
        # of date; a copy at another version is a later write of this process's and stays.
        self._copies.lost(key, token)
        if result is True:
            return True
        if isinstance(result, WriteRefused):
            raise StoreUnavailable(f"memcached {node.name} refused a write: {result}")
        return result

    def _stale(self, key: str, lost: bool | _Lost | None) -> StaleCopy:
        """A write against a copy lost: with what is stored now when the batch read it back (or
        the session is gone: NOT_FOUND), so the request starts again without loading it."""
        if lost is None:
            return StaleCopy(key, found=True)
        if isinstance(lost, _Lost):
            current = self._decode(key, lost.raw, lost.token) if lost.raw is not None else None
            return StaleCopy(key, found=True, current=current)
        return StaleCopy(key)

    def _update_blocking(
        self,
        client: PooledClient,
        key: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
    ) -> Record | None:
        """gets, re-apply, cas until one wins (on a worker thread, after a lost compare-and-swap)."""
        for attempt in range(self.cas_retries):
            with answers_read():
                raw, token = client.gets(key)
            current = self._decode(key, raw)
            if current is None or token is None:
                return None
            merged = apply_operations(current.record, operations, now)
            value = self._encode(key, merged)
            with answers_read():
                stored = client.cas(key, value, token, expire=memcached_exptime(ttl), noreply=False)
            if stored:
                return merged
            if stored is None:  # NOT_FOUND: deleted meanwhile
                return None
            # Lost the race: back off a little, with jitter, so the writers spread out.
            time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 8)))
        raise CasContention

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        key = self.key(session_id)
        node = self._ring.node_for(key)
        token = loaded.version if loaded is not None else None
        if loaded is not None and not loaded.confirmed and token is None:
            raise StaleCopy(key)  # a copy without a version: nothing to check it against
        if loaded is None or token is None:
            # No version to compare against: read one first (on a worker), as an update would.
            self._copies.drop(key)
            return await self._call(node, self._update_blocking, node.client, key, (), now, ttl) is not None
        if not loaded.confirmed:
            result = await self._batched_cas(node, key, apply_operations(loaded.record, (), now), token, ttl)
            if result is True:
                return True
            raise self._stale(key, result)
        # The record as loaded with a new last_seen, in this iteration's batch: no round trip of
        # its own. Lost (False) means another write landed after the load, and every write
        # refreshes last_seen and the TTL: the session is as fresh as this would have made it.
        return await self._batched_cas(node, key, apply_operations(loaded.record, (), now), token, ttl) is not None

    async def delete(self, session_id: str) -> None:
        key = self.key(session_id)
        node = self._ring.node_for(key)
        self._copies.drop(key)
        await self._call(node, node.client.delete, key, False)

    # Counters ------------------------------------------------------------------------------

    async def count(self, key: str, window: float) -> int:
        counter = self.counter_key(key)
        node = self._ring.node_for(counter)
        return await self._call(node, count_blocking, node.client, counter, memcached_exptime(window))
