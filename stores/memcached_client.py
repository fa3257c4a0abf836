"""memcached's protocol as the memcached store speaks it, on pymemcache's connections.

pymemcache does connections, TLS, timeouts and pooling. Here: the exptime rule, a client TLS
context, one batch of compare-and-swap writes and a multi-get in a single send and one pass over
the answers (`BatchClient.exchange`), a pool that reopens connections memcached has closed, and
the counter's incr-or-add. Blocking calls: the store runs them on its worker threads.
"""

from __future__ import annotations

import logging
import math
import select
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

from pymemcache.client.base import Client, PooledClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheUnexpectedCloseError,
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


def count_blocking(client: PooledClient, key: str, exptime: int) -> int:
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
