"""The memcached store's hot path on the IOLoop itself: one pipelined connection per node.

A batch is every load and compare-and-swap the requests of one loop iteration ask of a node
(`stores.memcached_client.request_bytes`). On a worker thread it would cost two thread
hand-offs a batch: the IOLoop wakes a worker, the worker wakes the IOLoop. At one connection that
is most of what memcached adds to a request (a loopback round trip is about 10 µs; a hand-off
each way several times that). Here the batch is written on an asyncio connection and its answers
are parsed as they arrive, in `data_received`, on the IOLoop: no thread, no wake-up but the
socket's own.

Batches are pipelined: one is sent without waiting for the one before, and memcached answers a
connection's commands in order, so answers are matched to batches first in, first out. The
oldest unanswered batch bounds the wait: no answer to it within ``timeout`` closes the connection
and fails every batch on it (a later answer could not be trusted to match). A closed or failed
connection is opened again by the next batch, within ``connect_timeout``.

Busy polling (`stores.busy_poll`): while a batch's answers are due, the loop polls rather than
sleeps, for up to ``busy_poll`` after the last send.

pymemcache keeps the rest (adds, deletes, counters, probes, and the read-again-and-retry after a
lost compare-and-swap): rare calls, on its pooled blocking connections and the store's threads.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Sequence
from typing import cast

from pymemcache.exceptions import MemcacheUnexpectedCloseError, MemcacheUnknownError

from stores.busy_poll import BusyPoll
from stores.memcached_client import CasResult, CasWrite, Exchanged, Found, cas_result, request_bytes

# The longest answer line read: a VALUE line (a key of at most 250 bytes and three numbers) or a
# status line is far shorter.
MAX_LINE = 1024
# The longest value kept unless told otherwise: memcached's own default item size limit.
MAX_VALUE = 1 << 20
# What a finished batch reports to, on the IOLoop: (answers, None) or (None, error).
Landed = Callable[[Exchanged | None, BaseException | None], None]


class _Batch:
    """One sent batch: what its answer holds, parsed as far as the bytes received allow."""

    __slots__ = ("done", "found", "header", "keys", "next_key", "sent_at", "skipped", "writes", "written")

    def __init__(self, writes: int, keys: Sequence[str], done: Landed, sent_at: float) -> None:
        self.writes = writes
        self.keys = keys
        self.done = done
        self.sent_at = sent_at
        self.written: list[CasResult] = []
        self.found: Found = {}
        self.header: tuple[str, int, bytes] | None = None  # a VALUE line whose data has not all come
        self.next_key = 0  # the keys before it were answered or passed over (not found)
        self.skipped = 0  # bytes of an oversized value passed over so far

    def parse(self, buffer: bytes, position: int, max_value: int) -> tuple[bool, int]:
        """Read this batch's answers from ``buffer`` at ``position``: (complete, new position).

        A value longer than ``max_value`` is passed over as it arrives, never kept (a miss).
        """
        while len(self.written) < self.writes:
            end = buffer.find(b"\r\n", position)
            if end < 0:
                return _line_to_come(buffer, position)
            self.written.append(cas_result(buffer[position:end]))
            position = end + 2
        if not self.keys:
            return True, position
        while True:
            if self.header is None:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    return _line_to_come(buffer, position)
                line = buffer[position:end]
                position = end + 2
                if line == b"END":
                    return True, position
                self.header = self._header(line)
            key, size, token = self.header
            end = position + size
            if size > max_value:
                left = size + 2 - self.skipped
                if len(buffer) - position < left:
                    self.skipped += len(buffer) - position
                    return False, len(buffer)
                position += left
                self.skipped = 0
                self.header = None
                continue
            if len(buffer) < end + 2:
                return False, position
            if buffer[end : end + 2] != b"\r\n":
                raise MemcacheUnknownError("a value not ended as the protocol has it")
            self.found[key] = (buffer[position:end], token)
            position = end + 2
            self.header = None

    def _header(self, line: bytes) -> tuple[str, int, bytes]:
        """A VALUE line, checked against the keys asked: memcached answers them in the order
        asked, each at most once, so any other key is an answer out of step (another batch's)."""
        header = _value_header(line)
        keys, index = self.keys, self.next_key
        while index < len(keys) and keys[index] != header[0]:
            index += 1
        if index == len(keys):
            raise MemcacheUnknownError("a value for a key this batch did not ask for, or out of order")
        self.next_key = index + 1
        return header


def _line_to_come(buffer: bytes, position: int) -> tuple[bool, int]:
    """An answer line not yet whole: wait for the rest, unless it is already longer than any
    memcached sends (kept, and searched again, on every read, it would cost the loop dear)."""
    if len(buffer) - position > MAX_LINE:
        raise MemcacheUnknownError("an answer line longer than memcached ever sends")
    return False, position


def _value_header(line: bytes) -> tuple[str, int, bytes]:
    """``VALUE <key> <flags> <bytes> <cas>`` as (key, size, cas token)."""
    parts = line.split()
    if len(parts) != 5 or parts[0] != b"VALUE" or not parts[3].isdigit():
        raise MemcacheUnknownError(line[:64].decode("ascii", "replace"))
    return parts[1].decode("ascii"), int(parts[3]), parts[4]


class _Connection(asyncio.Protocol):
    """One connection to memcached and the batches sent on it, oldest first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        busy_poll_seconds: float = 0.0,
        max_value: int = MAX_VALUE,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.max_value = max_value
        self.busy_poll = BusyPoll(busy_poll_seconds, self.answers_due)
        self.transport: asyncio.Transport | None = None
        self.sent: collections.deque[_Batch] = collections.deque()
        self.buffer = b""
        self.position = 0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or uvloop's, which does not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, batch: _Batch) -> None:
        assert self.transport is not None
        self.sent.append(batch)
        self.transport.write(request)
        if self.timer is None:
            self.timer = self.loop.call_at(batch.sent_at + self.timeout, self._check_deadline)
        self.busy_poll.sent(self.loop)

    def answers_due(self) -> bool:
        return bool(self.sent) and not self.closed

    def _check_deadline(self) -> None:
        """The oldest unanswered batch has waited ``timeout``: fail the connection; else look again later."""
        self.timer = None
        if not self.sent or self.closed:
            return
        deadline = self.sent[0].sent_at + self.timeout
        if self.loop.time() >= deadline:
            self.fail(TimeoutError(f"memcached did not answer within {self.timeout:g}s"))
        else:
            self.timer = self.loop.call_at(deadline, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        if self.position < len(self.buffer):
            data = self.buffer[self.position :] + data
        self.buffer, self.position = data, 0
        try:
            while self.sent:
                complete, self.position = self.sent[0].parse(self.buffer, self.position, self.max_value)
                if not complete:
                    return
                batch = self.sent.popleft()
                batch.done(Exchanged(batch.written, batch.found), None)
            if self.position < len(self.buffer):  # more answers than questions: out of step
                raise MemcacheUnexpectedCloseError()
        except (MemcacheUnknownError, MemcacheUnexpectedCloseError) as error:
            self.fail(error)
        except (ValueError, UnicodeDecodeError) as error:  # a line not as the protocol has it
            self.fail(MemcacheUnknownError(f"unreadable answer from memcached: {error.__class__.__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc if exc is not None else MemcacheUnexpectedCloseError())

    def fail(self, error: BaseException) -> None:
        """Close the connection; every batch still waiting on it fails with ``error``."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.loop.is_closed():
            self.transport.abort()
        while self.sent:
            self.sent.popleft().done(None, error)


class Wire:
    """Batches to one memcached node over one pipelined connection, opened when first needed."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        busy_poll_seconds: float = 0.0,
        max_value: int = MAX_VALUE,
    ) -> None:
        self.host, self.port = host, port
        self.max_value = max_value
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.busy_poll_seconds = busy_poll_seconds
        self.tls = tls
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiting: list[tuple[bytes, _Batch]] = []

    def exchange(self, writes: Sequence[CasWrite], keys: Sequence[str], done: Landed) -> None:
        """Send the writes, then a gets of ``keys``; ``done`` gets their answers on the IOLoop."""
        loop = asyncio.get_running_loop()
        batch = _Batch(len(writes), keys, done, loop.time())
        request = request_bytes(writes, keys)
        connection = self._connection
        if connection is not None and not connection.closed and connection.loop is loop:
            connection.send(request, batch)
            return
        self._waiting.append((request, batch))
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            old, self._connection = self._connection, None
            if old is not None and old.loop is loop:
                old.fail(MemcacheUnexpectedCloseError())
            server_hostname = self.host if self.tls is not None else None
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self.timeout, self.busy_poll_seconds, self.max_value),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=server_hostname,
                ),
                self.connect_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as error:
            self._release(None, error)
            return
        finally:
            self._connecting = None
        self._connection = connection
        self._release(connection, None)

    def _release(self, connection: _Connection | None, error: BaseException | None) -> None:
        """Send the batches that waited for a connection, or fail them with ``error``."""
        waiting, self._waiting = self._waiting, []
        for request, batch in waiting:
            if connection is not None:
                connection.send(request, batch)
            else:
                batch.done(None, error)

    def close(self) -> None:
        """Close the connection; batches still on it fail."""
        if self._connection is not None:
            self._connection.fail(MemcacheUnexpectedCloseError())
            self._connection = None
