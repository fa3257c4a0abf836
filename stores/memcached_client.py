"""memcached's protocol as the memcached store speaks it, on pymemcache's connections.

pymemcache does connections, TLS, timeouts and pooling for the store's rare calls (adds,
deletes, counters, probes, a retry after a lost compare-and-swap), which run on its worker
threads. Here: the exptime rule, a client TLS context, a pool that reopens connections memcached
has closed, the counter's incr-or-add, and the bytes of a batch (compare-and-swap writes and one
multi-get in a single send, `request_bytes`) and what its write answers mean (`cas_result`),
which `stores.memcached_wire` sends and reads on the IOLoop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeAlias

from pymemcache.client.base import Client, PooledClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheUnknownError,
)
from pymemcache.pool import ObjectPool

from stores.base import StoreUnavailable

log = logging.getLogger("stores.memcached")

THIRTY_DAYS = 30 * 24 * 3600
# One compare-and-swap write: key, value, version token, exptime.
CasWrite = tuple[str, bytes, bytes, int]
# What a gets found: key -> (value, cas token); a missing key is absent.
Found: TypeAlias = dict[str, tuple[bytes, bytes]]


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


def request_bytes(writes: Sequence[CasWrite], keys: Sequence[str]) -> bytes:
    """One batch's commands: a ``cas`` per write, then one ``gets`` of ``keys`` (none if empty).

    Keys are sent as given: the store makes them (a checked prefix and a hex digest), so
    pymemcache's per-key check, over a quarter of the cost of a batch, is not repeated here.
    """
    request = [
        b"cas %s 0 %d %d %s\r\n%s\r\n" % (key.encode("ascii"), exptime, len(value), token, value)
        for key, value, token, exptime in writes
    ]
    if keys:
        request.append(b"gets %s\r\n" % " ".join(keys).encode("ascii"))
    return b"".join(request)


def cas_result(line: bytes) -> CasResult:
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


class CheckedPooledClient(PooledClient):  # type: ignore[misc]
    """pymemcache's PooledClient, its connections checked before each use (see `_CheckedPool`)."""

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
            after_remove=Client.close,
            max_size=max_pool_size,
            idle_timeout=pool_idle_timeout,
            lock_generator=lock_generator,
        )


@contextlib.contextmanager
def answers_read() -> Iterator[None]:
    """pymemcache calls whose answers it cannot read (a counter's reply that is not a number, a
    VALUE line of the wrong shape) raise ValueError: that node is out of step, which the store
    calls an outage as it does `MemcacheUnknownError` (503, and the node noted as failing)."""
    try:
        yield
    except ValueError as error:  # UnicodeDecodeError included
        raise MemcacheUnknownError(f"unreadable answer from memcached: {error.__class__.__name__}") from error


def count_blocking(client: PooledClient, key: str, exptime: int) -> int:
    """incr; if there is no counter, add one at 1 that expires with its window; if another
    process added it first, incr again. On a worker thread."""
    for _ in range(3):
        try:
            with answers_read():
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
