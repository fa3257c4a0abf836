"""The production store: memcached through pymemcache, off the IOLoop, over one or many nodes.

pymemcache is a blocking client, so every round trip runs on a small thread pool with one pooled
connection per thread and node; the IOLoop only hands work over and takes results back. Loads
that arrive in the same loop iteration are fetched with one multi-get per node.

Placement: rendezvous hashing over the nodes in the ring, so losing a node loses only its share.
Node health is kept on the IOLoop thread: a node that fails answers 503 for its sessions (the
session is not silently dropped) until it has failed for ``dead_after`` seconds; it then leaves
the ring, its sessions count as lost, and a background probe puts it back once it answers.

Keys: ``prefix + sha256(session id)``, so a dump of memcached holds no usable cookie and no client
input reaches the protocol raw. Values: JSON only, size-limited. Each session has a second, tiny
key holding its ``last_seen``, so a touch refreshes the TTL without rewriting (or racing) the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheError

from stores.base import (
    VERSION,
    Operation,
    Record,
    SessionStore,
    StoreUnavailable,
    apply_operations,
    dump_record,
    parse_record,
)
from stores.workers import Workers

log = logging.getLogger("stores.memcached")

THIRTY_DAYS = 30 * 24 * 3600
T = TypeVar("T")
# What a load fetched: the record's bytes and version token, and the last_seen key's bytes.
_Fetched = tuple[bytes | None, Any, bytes | None]


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


class _Node:
    """One memcached server: its pooled client and what the IOLoop knows of its health."""

    def __init__(self, name: str, client: PooledClient) -> None:
        self.name = name
        self.client = client
        self.failing_since: float | None = None
        self.in_ring = True


class MemcachedStore(SessionStore):
    """Session records in memcached. See the module docstring for the design."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
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
        self.prefix = prefix
        self.max_record_size = max_record_size
        self.dead_after = dead_after
        self.maintenance_interval = probe_interval
        self.cas_retries = cas_retries
        self._workers = Workers(threads, name="memcached")
        self._nodes: dict[str, _Node] = {}
        for server in servers:
            host, _, port = server.rpartition(":")
            client = PooledClient(
                (host.strip("[]"), int(port)),
                connect_timeout=connect_timeout,
                timeout=timeout,
                no_delay=True,
                max_pool_size=threads,
                default_noreply=False,  # every write is confirmed
                tls_context=tls,
            )
            self._nodes[server] = _Node(server, client)
        self._ring = RendezvousHash(nodes=list(self._nodes))
        self._pending: dict[_Node, dict[str, list[asyncio.Future[_Fetched]]]] = {}
        self._only_node = next(iter(self._nodes.values())) if len(self._nodes) == 1 else None
        self._flush_scheduled = False
        self._fetches: set[asyncio.Future[None]] = set()

    # Keys and placement --------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The memcached key for a session id: the prefix and the id's hex SHA-256."""
        return self.prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()

    @staticmethod
    def _seen_key(key: str) -> str:
        return key + ":seen"

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

    async def _call(self, node: _Node, function: Callable[..., T], *args: Any) -> T:
        """Run one blocking client call on the thread pool; map failures to StoreUnavailable."""
        try:
            result = await self._workers.run(function, *args)
        except (OSError, MemcacheError) as e:
            self._failed(node, e)
            raise StoreUnavailable(f"memcached {node.name}: {e.__class__.__name__}") from e
        except CasContention:
            self._succeeded(node)
            raise StoreUnavailable("session updated too often at once") from None
        self._succeeded(node)
        return result

    async def close(self) -> None:
        await super().close()
        self.shutdown()

    def shutdown(self) -> None:
        """Release threads and connections (synchronous, for callers outside the IOLoop)."""
        self._workers.shutdown()
        for node in self._nodes.values():
            node.client.close()

    async def maintain(self) -> None:
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

    def _decode(self, raw: bytes | None, seen: bytes | None, token: Any = None) -> Record | None:
        if raw is None or len(raw) > self.max_record_size:
            return None
        record = parse_record(raw)
        if record is None:
            return None
        try:
            last_seen = float(seen) if seen is not None else None
        except ValueError:
            last_seen = None
        if last_seen is not None and math.isfinite(last_seen) and last_seen > record["last_seen"]:
            record["last_seen"] = last_seen
        if token is not None:
            record[VERSION] = token
        return record

    def _encode(self, record: Record) -> bytes:
        return dump_record(record, self.max_record_size).encode("utf-8")

    # Loads, batched ------------------------------------------------------------------------

    async def load(self, session_id: str) -> Record | None:
        key = self.key(session_id)
        node = self._node_for(key)
        future: asyncio.Future[_Fetched] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(node, {}).setdefault(key, []).append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_loads)
        raw, token, seen = await future
        return self._decode(raw, seen, token)

    def _flush_loads(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for node, waiters in pending.items():
            task = asyncio.ensure_future(self._fetch(node, waiters))
            # Held until done: the loop keeps only weak references to tasks.
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _fetch(self, node: _Node, waiters: dict[str, list[asyncio.Future[_Fetched]]]) -> None:
        keys = [k for key in waiters for k in (key, self._seen_key(key))]
        try:
            found: dict[str, tuple[bytes, Any]] = await self._call(node, node.client.gets_many, keys)
        except StoreUnavailable as e:
            for futures in waiters.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(StoreUnavailable(str(e)))
            return
        for key, futures in waiters.items():
            raw, token = found.get(key, (None, None))
            seen, _ = found.get(self._seen_key(key), (None, None))
            value = (raw, token, seen)
            for future in futures:
                if not future.done():
                    future.set_result(value)

    # Writes --------------------------------------------------------------------------------

    async def create(self, session_id: str, record: Record, ttl: float) -> None:
        key = self.key(session_id)
        value = self._encode(record)
        node = self._node_for(key)
        stored = await self._call(node, node.client.add, key, value, memcached_exptime(ttl))
        if not stored:
            # A 256-bit id never collides; an existing key means something is badly wrong.
            raise StoreUnavailable("memcached refused to add a new session")

    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Record | None = None,
    ) -> Record | None:
        key = self.key(session_id)
        node = self._node_for(key)
        return await self._call(node, self._update_blocking, node.client, key, operations, now, ttl, loaded)

    def _update_blocking(
        self,
        client: PooledClient,
        key: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Record | None,
    ) -> Record | None:
        """cas against the loaded version; on a conflict gets, re-apply, cas (on a worker thread)."""
        for attempt in range(self.cas_retries):
            current: Record | None = loaded
            token = loaded.get(VERSION) if attempt == 0 and loaded is not None else None
            if token is None:
                raw, token = client.gets(key)
                current = self._decode(raw, None)
            if current is None or token is None:
                return None
            merged = apply_operations(current, operations, now)
            stored = client.cas(key, self._encode(merged), token, expire=memcached_exptime(ttl), noreply=False)
            if stored:
                return merged
            if stored is None:  # NOT_FOUND: deleted meanwhile
                return None
            # Lost the race: back off a little, with jitter, so the writers spread out.
            time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 8)))
        raise CasContention

    async def touch(self, session_id: str, now: float, ttl: float) -> bool:
        key = self.key(session_id)
        node = self._node_for(key)
        return await self._call(node, self._touch_blocking, node.client, key, now, memcached_exptime(ttl))

    def _touch_blocking(self, client: PooledClient, key: str, now: float, exptime: int) -> bool:
        if not client.touch(key, exptime, noreply=False):
            return False
        client.set(self._seen_key(key), repr(now).encode("ascii"), exptime, noreply=False)
        return True

    async def delete(self, session_id: str) -> None:
        key = self.key(session_id)
        node = self._node_for(key)
        await self._call(node, node.client.delete_many, [key, self._seen_key(key)], False)
