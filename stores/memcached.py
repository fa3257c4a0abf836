"""The production store: memcached through pymemcache, off the IOLoop, over one or many nodes.

pymemcache is a blocking client, so every round trip runs on a small thread pool with one pooled
connection per thread and node; the IOLoop only hands work over and takes results back. What the
requests of one loop iteration ask of a node travels as one batch, in one worker call and one
round trip: their compare-and-swap writes (updates and touches) and one multi-get for their loads, in a
single send (``BatchClient.exchange``). A thread hand-off and a round trip cost more than the
work itself on loopback, so batching them is what keeps the store close to the in-memory one.

Placement: rendezvous hashing over the nodes in the ring, so losing a node loses only its share.
Node health is kept on the IOLoop thread: a node that fails answers 503 for its sessions (the
session is not silently dropped) until it has failed for ``dead_after`` seconds; it then leaves
the ring, its sessions count as lost, and a background probe puts it back once it answers.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import random
import select
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeVar

from pymemcache.client.base import Client, PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)
from pymemcache.pool import ObjectPool

from stores.base import (
    Loaded,
    Operation,
    Record,
    SessionStore,
    StoreContext,
    StoreUnavailable,
    apply_operations,
    counter_digest,
)
from stores.options import KEY_PREFIX, Options, parse_address
from stores.periodic import Periodic
from stores.sealing import SealedRecords
from stores.workers import Workers

log = logging.getLogger("stores.memcached")

THIRTY_DAYS = 30 * 24 * 3600
T = TypeVar("T")
# What a load fetched: the record's bytes and version token, or (None, None).
_Fetched = tuple[bytes | None, Any]
# One compare-and-swap write: key, value, version token, exptime.
CasWrite = tuple[str, bytes, bytes, int]
# What a gets found: key -> (value, cas token); a missing key is absent.
Found: TypeAlias = dict[str, tuple[bytes, bytes]]
RECEIVE_SIZE = 65536


class WriteRefused(Exception):
    """memcached answered one write of a batch with an error (out of memory, say)."""


# What a cas answered: True stored, False lost to another writer, None gone; or the server's error.
CasResult: TypeAlias = bool | WriteRefused | None


class Exchanged(NamedTuple):
    """A batch's answers: one per write, and what the gets found."""

    written: list[CasResult]
    found: Found


class CasContention(Exception):
    """An update lost every compare-and-swap round; the request is answered 503."""


def memcached_exptime(ttl: float, wall_clock: Callable[[], float] = time.time) -> int:
    """The exptime memcached needs for a ttl in seconds.

    memcached reads an exptime over 30 days as an absolute Unix time, so a longer ttl is sent as
    one (never as a raw offset, which would expire the item at once, in 1970).
    """
    seconds = max(1, math.ceil(ttl))
    if seconds <= THIRTY_DAYS:
        return seconds
    return int(wall_clock()) + seconds


def tls_context(ca_file: str, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the memcached server against ``ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class BatchClient(Client):  # type: ignore[misc]  # pymemcache ships no type hints
    """pymemcache's client, plus one batch of writes and loads in a single send.

    pymemcache's own ``cas`` takes one key per round trip, its multi-key store shares one cas
    token among all keys, and its ``gets_many`` parses the answer a line at a time (re-slicing
    the buffer for each). A batch here is one send of every ``cas`` and one ``gets``, and one
    pass over the answers, on the client's own connection (TLS and timeouts included).
    """

    def exchange(self, writes: Sequence[CasWrite], keys: Sequence[str]) -> Exchanged:
        """Send the writes, then a gets of ``keys``; read their answers in that order.

        The gets comes last, so a load sees the writes of its own batch. Keys are sent as given:
        the store makes them (a checked prefix and a hex digest), so pymemcache's per-key check,
        over a quarter of the cost of a batch, is not repeated here.
        """
        request = [
            b"cas %s 0 %d %d %s\r\n%s\r\n" % (key.encode("ascii"), exptime, len(value), token, value)
            for key, value, token, exptime in writes
        ]
        if keys:
            request.append(b"gets %s\r\n" % " ".join(keys).encode("ascii"))
        if not request:
            return Exchanged([], {})
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        try:
            self.sock.sendall(b"".join(request))
            answers = _Answers(self.sock)
            written = [_cas_result(answers.line()) for _ in writes]
            found: Found = {}
            if keys:
                while (line := answers.line()) != b"END":
                    if not line.startswith(b"VALUE "):
                        raise MemcacheUnknownError(line[:64].decode("ascii", "replace"))
                    _, key, _, size, token = line.split()
                    found[key.decode("ascii")] = (answers.value(int(size)), token)
            if answers.unread():
                raise MemcacheUnexpectedCloseError()  # more answers than questions: out of step
        except (OSError, MemcacheError):
            self.close()
            raise
        except (ValueError, UnicodeDecodeError) as e:  # a VALUE line not as the protocol has it
            self.close()
            raise MemcacheUnknownError("unreadable answer from memcached") from e
        return Exchanged(written, found)


class _Answers:
    """What memcached sent back, read from the socket only as far as the next answer needs."""

    __slots__ = ("buffer", "position", "receive_size", "sock")

    def __init__(self, sock: Any, receive_size: int = RECEIVE_SIZE) -> None:
        self.sock = sock
        self.receive_size = receive_size
        self.buffer = b""
        self.position = 0

    def _receive(self) -> None:
        chunk = self.sock.recv(self.receive_size)
        if not chunk:
            raise MemcacheUnexpectedCloseError()
        self.buffer = self.buffer[self.position :] + chunk
        self.position = 0

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        while (end := self.buffer.find(b"\r\n", self.position)) < 0:
            self._receive()
        line = self.buffer[self.position : end]
        self.position = end + 2
        return line

    def value(self, size: int) -> bytes:
        """The next ``size`` bytes, which memcached ends with CRLF."""
        while len(self.buffer) - self.position < size + 2:
            self._receive()
        end = self.position + size
        if self.buffer[end : end + 2] != b"\r\n":
            raise MemcacheUnexpectedCloseError()
        value = self.buffer[self.position : end]
        self.position = end + 2
        return value

    def unread(self) -> bool:
        return self.position < len(self.buffer)


def _cas_result(line: bytes) -> CasResult:
    if line == b"STORED":
        return True
    if line == b"EXISTS":
        return False
    if line == b"NOT_FOUND":
        return None
    if line.startswith(b"SERVER_ERROR"):
        return WriteRefused(line.decode("ascii", "replace")[:200])
    # ERROR or CLIENT_ERROR: the server misread a command, so what follows may be out of step.
    raise MemcacheUnknownError(line[:64].decode("ascii", "replace"))


def closed_by_server(sock: Any) -> bool:
    """Whether an idle connection has something to read. memcached sends nothing unasked, so that
    is its end of the connection (a restart, a crash, an idle timeout) or garbage: unusable."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _CheckedPool(ObjectPool):  # type: ignore[misc]
    """pymemcache's pool, but a pooled connection the server has closed is reopened before use.

    Without this, after a memcached restart the first call on each pooled connection failed (a 503
    for the requests in that batch) although the server was back.
    """

    def get(self) -> Any:
        client = super().get()
        if client.sock is not None and closed_by_server(client.sock):
            client.close()  # the client connects again on its next command
        return client


class BatchPooledClient(PooledClient):  # type: ignore[misc]
    """A PooledClient whose connections are BatchClients, checked before each use."""

    client_class = BatchClient

    def __init__(
        self,
        server: tuple[str, int],
        *,
        max_pool_size: int | None = None,
        pool_idle_timeout: int = 0,
        lock_generator: Callable[[], Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(server, **options)
        # The pool PooledClient would build, with the same settings, but checked.
        self.client_pool = _CheckedPool(
            self._create_client,
            after_remove=BatchClient.close,
            max_size=max_pool_size,
            idle_timeout=pool_idle_timeout,
            lock_generator=lock_generator,
        )

    def exchange(self, writes: Sequence[CasWrite], keys: Sequence[str]) -> Exchanged:
        """One batch (see `BatchClient.exchange`) on one pooled connection."""
        with self.client_pool.get_and_release(destroy_on_fail=True) as client:
            result: Exchanged = client.exchange(writes, keys)
            return result


class _Node:
    """One memcached server: its pooled client and what the IOLoop knows of its health."""

    def __init__(self, name: str, client: BatchPooledClient) -> None:
        self.name = name
        self.client = client
        self.failing_since: float | None = None
        self.in_ring = True


class _Batch:
    """What the requests of one loop iteration ask of one node."""

    __slots__ = ("loads", "writes")

    def __init__(self) -> None:
        self.loads: dict[str, list[asyncio.Future[_Fetched]]] = {}
        self.writes: list[tuple[CasWrite, asyncio.Future[CasResult]]] = []


class MemcachedOptions(NamedTuple):
    servers: tuple[str, ...]
    prefix: str
    connect_timeout: float
    timeout: float
    threads: int
    dead_after: float
    probe_interval: float
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None


class MemcachedStore(SessionStore):
    """Session records in memcached. See the module docstring for the design.

    Options (environment variables ``MEMCACHED_<OPTION>``): ``servers`` (host:port, comma-separated;
    127.0.0.1:11211), ``prefix`` ("session:"), ``timeout`` and ``connect_timeout`` (0.5 s),
    ``threads`` (16: worker threads, and pooled connections per node: the most round trips in
    flight at once), ``dead_after`` (3 s failing before a node leaves the ring), ``probe_interval``
    (1 s), and TLS: ``tls_ca`` (turns it on), ``tls_cert`` and ``tls_key`` (a client certificate).
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
        max_record_size: int = 64 * 1024,
        dead_after: float = 3.0,
        probe_interval: float = 1.0,
        cas_retries: int = 64,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not servers:
            raise ValueError("at least one memcached server is required")
        if not KEY_PREFIX.fullmatch(prefix):
            # Batches send keys unchecked (see BatchClient.exchange): this makes every key valid.
            raise ValueError(f"memcached key prefix {prefix!r}: up to 100 printable ASCII characters, no spaces")
        self.prefix = prefix
        self.max_record_size = max_record_size
        self._records = SealedRecords(record_keys, max_record_size, "memcached")
        self.dead_after = dead_after
        self._prober = Periodic(probe_interval, self.probe, "memcached probe")
        self.cas_retries = cas_retries
        self._workers = Workers(threads, name="memcached")
        self._nodes: dict[str, _Node] = {}
        self.threads = threads
        for server in servers:
            client = BatchPooledClient(
                parse_address(server),
                connect_timeout=connect_timeout,
                timeout=timeout,
                no_delay=True,
                max_pool_size=threads,
                default_noreply=False,  # every write is confirmed
                tls_context=tls,
            )
            self._nodes[server] = _Node(server, client)
        self._ring = RendezvousHash(nodes=list(self._nodes))
        self._pending: dict[_Node, _Batch] = {}
        self._only_node = next(iter(self._nodes.values())) if len(self._nodes) == 1 else None
        self._flush_scheduled = False

    # Keys and placement --------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The memcached key for a session id: the prefix and the id's hex SHA-256."""
        return self.prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()

    def counter_key(self, key: str) -> str:
        """The memcached key for a counter: the prefix, ``count:`` and the key's hex SHA-256."""
        return f"{self.prefix}count:{counter_digest(key)}"

    def node_name(self, session_id: str) -> str | None:
        """The node a session id lives on now (None when no node is in the ring)."""
        name: str | None = self._ring.get_node(self.key(session_id))
        return name

    def _node_for(self, key: str) -> _Node:
        if self._only_node is not None:
            # One node: nothing to place, and pymemcache's hashing is pure Python.
            return self._only_node
        name = self._ring.get_node(key)
        if name is None:
            raise StoreUnavailable("no memcached node is up")
        return self._nodes[name]

    # Health --------------------------------------------------------------------------------

    def _failed(self, node: _Node, error: BaseException) -> None:
        now = time.monotonic()
        if node.failing_since is None:
            node.failing_since = now
            log.error("memcached %s unavailable: %s", node.name, error.__class__.__name__)
        elif node.in_ring and len(self._nodes) > 1 and now - node.failing_since >= self.dead_after:
            # With one node there is nowhere else to go: it stays, and requests get 503.
            node.in_ring = False
            self._ring.remove_node(node.name)
            log.error(
                "memcached %s removed from the ring after %.1fs; its sessions are lost", node.name, self.dead_after
            )

    def _succeeded(self, node: _Node) -> None:
        if node.failing_since is not None:
            node.failing_since = None
            log.warning("memcached %s available again", node.name)
        if not node.in_ring:
            node.in_ring = True
            self._ring.add_node(node.name)

    def _store_error(self, node: _Node, error: BaseException) -> BaseException:
        """What a failed client call means to a request; outages are noted against the node."""
        if isinstance(error, OSError | MemcacheError):
            self._failed(node, error)
            return StoreUnavailable(f"memcached {node.name}: {error.__class__.__name__}")
        if isinstance(error, CasContention):
            self._succeeded(node)
            return StoreUnavailable("session updated too often at once")
        return error

    async def _call(self, node: _Node, function: Callable[..., T], *args: Any) -> T:
        """Run one blocking client call on the thread pool; map failures to StoreUnavailable."""
        try:
            result = await self._workers.run(function, *args)
        except Exception as e:
            failure = self._store_error(node, e)
            if failure is e:
                raise
            raise failure from e
        self._succeeded(node)
        return result

    @property
    def connections(self) -> int:
        return self.threads * len(self._nodes)

    async def start(self) -> None:
        self._prober.start()

    async def close(self) -> None:
        self._prober.stop()
        self.shutdown()

    def shutdown(self) -> None:
        """Release threads and connections (synchronous, for callers outside the IOLoop)."""
        self._workers.shutdown()
        for node in self._nodes.values():
            node.client.close()

    async def probe(self) -> None:
        """Probe failed nodes, so they are retired after ``dead_after`` and rejoin once they answer."""
        for node in list(self._nodes.values()):
            if node.failing_since is not None or not node.in_ring:
                with contextlib.suppress(StoreUnavailable):
                    await self._call(node, node.client.version)

    async def ready(self) -> bool:
        """True if at least one node in the ring answers."""
        for node in self._nodes.values():
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

    def _batch(self, node: _Node) -> _Batch:
        batch = self._pending.get(node)
        if batch is None:
            batch = self._pending[node] = _Batch()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return batch

    async def load(self, session_id: str) -> Loaded | None:
        key = self.key(session_id)
        future: asyncio.Future[_Fetched] = asyncio.get_running_loop().create_future()
        self._batch(self._node_for(key)).loads.setdefault(key, []).append(future)
        raw, token = await future
        return self._decode(key, raw, token)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for node, batch in pending.items():
            writes = [write for write, _ in batch.writes]
            # Handed to a worker at once: the round trip overlaps the loop's next iteration.
            self._workers.submit(
                node.client.exchange, (writes, list(batch.loads)), functools.partial(self._landed, node, batch)
            )

    def _landed(self, node: _Node, batch: _Batch, answer: Any, error: BaseException | None) -> None:
        """A batch's answers (or its failure) reach each waiting request."""
        try:
            if error is not None:
                raise self._store_error(node, error)
            self._succeeded(node)
            written, found = answer
            for (_, wrote), result in zip(batch.writes, written, strict=True):
                if not wrote.done():
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
        node = self._node_for(key)
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
        node = self._node_for(key)
        token = loaded.version if loaded is not None else None
        if loaded is not None and token is not None:
            # The common case: one cas against the version the load fetched, in this iteration's batch.
            merged = apply_operations(loaded.record, operations, now)
            result = await self._batched_cas(node, key, merged, token, ttl)
            if result is True:
                return merged
            if result is None:  # NOT_FOUND: deleted meanwhile
                return None
            # Another writer came first: read the current version and try again, off the batch.
        return await self._call(node, self._update_blocking, node.client, key, operations, now, ttl)

    async def _batched_cas(self, node: _Node, key: str, record: Record, token: Any, ttl: float) -> bool | None:
        """A cas of ``record`` in this iteration's batch: True stored, False lost, None gone."""
        write: CasWrite = (key, self._encode(key, record), token, memcached_exptime(ttl))
        future: asyncio.Future[CasResult] = asyncio.get_running_loop().create_future()
        self._batch(node).writes.append((write, future))
        result = await future
        if isinstance(result, WriteRefused):
            raise StoreUnavailable(f"memcached {node.name} refused a write: {result}")
        return result

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
            raw, token = client.gets(key)
            current = self._decode(key, raw)
            if current is None or token is None:
                return None
            merged = apply_operations(current.record, operations, now)
            stored = client.cas(key, self._encode(key, merged), token, expire=memcached_exptime(ttl), noreply=False)
            if stored:
                return merged
            if stored is None:  # NOT_FOUND: deleted meanwhile
                return None
            # Lost the race: back off a little, with jitter, so the writers spread out.
            time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 8)))
        raise CasContention

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        key = self.key(session_id)
        node = self._node_for(key)
        token = loaded.version if loaded is not None else None
        if loaded is None or token is None:
            # No version to compare against: read one first (on a worker), as an update would.
            return await self._call(node, self._update_blocking, node.client, key, (), now, ttl) is not None
        # The record as loaded with a new last_seen, in this iteration's batch: no round trip of
        # its own. Lost (False) means another write landed after the load, and every write
        # refreshes last_seen and the TTL: the session is as fresh as this would have made it.
        return await self._batched_cas(node, key, apply_operations(loaded.record, (), now), token, ttl) is not None

    async def delete(self, session_id: str) -> None:
        key = self.key(session_id)
        node = self._node_for(key)
        await self._call(node, node.client.delete, key, False)

    # Counters ------------------------------------------------------------------------------

    async def count(self, key: str, window: float) -> int:
        counter = self.counter_key(key)
        node = self._node_for(counter)
        return await self._call(node, _count_blocking, node.client, counter, memcached_exptime(window))


def _count_blocking(client: PooledClient, key: str, exptime: int) -> int:
    """incr; if there is no counter, add one at 1 that expires with its window; if another
    process added it first, incr again. On a worker thread."""
    for _ in range(3):
        try:
            value = client.incr(key, 1, noreply=False)
        except MemcacheClientError:
            # Not a number: written by someone else (memcached has no authentication). Counting
            # starts again rather than refusing every login it names or calling the node down.
            log.warning("memcached counter held a non-number; restarted", extra={"event": "store.forged"})
            client.set(key, b"1", expire=exptime, noreply=False)
            return 1
        if value is not None:
            return int(value)
        if client.add(key, b"1", expire=exptime, noreply=False):
            return 1
    # Added by someone else and gone again between our calls, three times over: no count to
    # trust, but no sign of an outage either (the node is not marked as failing).
    raise StoreUnavailable("counter vanished while counting")
