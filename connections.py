"""What a process does about its connections: how many it keeps open, how it accepts them
when it is short of descriptors, what it runs of what a client pipelines after its last answer,
and how often (and how much of) the lines a client can cause reach the log.

Only public Tornado APIs: the server's ``add_sockets``, ``handle_stream``, ``start_request``,
``on_close`` and ``stop`` hooks, IOStream (its public ``socket``, ``set_nodelay`` and ``close``),
``HTTP1Connection.detach``, and IOLoop's ``add_handler`` / ``remove_handler``; lingering uses the
socket module's ``dup`` and ``shutdown``.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import socket
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPMessageDelegate
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("server")

# Descriptors a process needs besides its client connections: standard streams, the listening
# sockets, the event loop's own (epoll, wake-up pipes), log files, the users file at start-up,
# and slack. The store's pooled connections come on top (connection_cap).
DESCRIPTOR_RESERVE = 32
# accept() errors that mean the process or the system is out of something (descriptors, socket
# buffers), not that one connection failed: accepting pauses until it frees up.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# While out of descriptors, how often accepting is tried again; a connection closing tries at once
# (descriptors freed elsewhere, by the store say, are only seen by the retry).
ACCEPT_RETRY_INTERVAL = 0.1
# Connections accepted per wake-up, as Tornado's own accept handler does (its listen backlog):
# requests already in flight get the loop between batches.
ACCEPT_BATCH = 128


class LogThrottle:
    """Lets each kind of log line through at most once per ``interval`` seconds.

    Whatever makes a line recur (a client, a flood, a condition that lasts), it costs at most a
    line a second; the next line let through says how many were held back.
    """

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.next_allowed: dict[Hashable, float] = {}
        self.held_back: dict[Hashable, int] = {}

    def allow(self, kind: Hashable) -> int | None:
        """None if a line of ``kind`` must be held back now; else the count held back before it."""
        now = self.clock()
        if now < self.next_allowed.get(kind, -math.inf):
            self.held_back[kind] = self.held_back.get(kind, 0) + 1
            return None
        self.next_allowed[kind] = now + self.interval
        return self.held_back.pop(kind, 0)


HELD_BACK = " (%d more such since the last line)"


class ThrottledWarning:
    """One warning about one condition (its messages may differ), at most once a second."""

    def __init__(self, logger: logging.Logger, throttle: LogThrottle | None = None) -> None:
        self.logger = logger
        self.throttle = throttle or LogThrottle()

    def __call__(self, message: str, *args: object) -> None:
        held_back = self.throttle.allow(self)
        if held_back is None:
            return
        if held_back:
            message, args = message + HELD_BACK, (*args, held_back)
        self.logger.warning(message, *args)


class ThrottledLines(logging.Filter):
    """A logger filter: each line of the code that logs it (file and line), once a second at most.

    For Tornado's connection layer, whose lines a client can cause at will: a body that times
    out, a malformed request, a read error each log a line per connection.
    """

    def __init__(self, throttle: LogThrottle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or LogThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        held_back = self.throttle.allow((record.pathname, record.lineno))
        if held_back is None:
            return False
        if held_back:
            # Formatted here: a message Tornado formatted itself may hold a literal "%".
            record.msg, record.args = record.getMessage() + HELD_BACK % held_back, ()
        return True


class ThrottledEvents(ThrottledLines):
    """`ThrottledLines` for the lines of the given ``event``s only (their ``extra``); the rest,
    a session's life-cycle lines among them, pass untouched."""

    def __init__(self, events: Iterable[str], throttle: LogThrottle | None = None) -> None:
        super().__init__(throttle)
        self.events = frozenset(events)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event", None) not in self.events:
            return True
        return super().filter(record)


# Tornado's line for a request it could not parse, and the kinds of error it quotes client text in.
MALFORMED_MESSAGE = "Malformed HTTP message from %s: %s"
QUOTING_ERRORS = (
    "Invalid header name",
    "Invalid header value",
    "Invalid Host header",
    "Multiple host headers not allowed",
    "Invalid query string",
    "Multiple unequal Content-Lengths",
    "Only integer Content-Length is allowed",
    "Unsupported Transfer-Encoding",
    "Unsupported Content-Encoding",
    "Unexpected HTTP version",
    "Invalid x-www-form-urlencoded body",
    "Invalid multipart/form-data",
    "invalid gzip data",
)
# An error text of another kind is kept only as long as Tornado's fixed messages are.
FIXED_MESSAGE_LENGTH = 60


def withheld_request_text(error: object) -> str:
    """What a log line may say of an error parsing a request: its kind, never what the client sent.

    Tornado's errors quote the offending text: a whole header's value, so a Cookie header with one
    stray control character would put every cookie it carries, the signed session cookie
    included, in the log.
    """
    text = str(error)
    for kind in QUOTING_ERRORS:
        if text.startswith(kind):
            return f"{kind} (not logged)"
    if len(text) > FIXED_MESSAGE_LENGTH or not text.isprintable() or any(q in text for q in "'\"%"):
        return "malformed request (its text not logged)"
    return text


class WithheldRequestText(logging.Filter):
    """A filter for Tornado's connection-layer logger: a malformed request's line keeps the kind
    of error and the client's address, not the request text Tornado quotes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == MALFORMED_MESSAGE and isinstance(record.args, tuple) and len(record.args) == 2:
            record.args = (record.args[0], withheld_request_text(record.args[1]))
        return True


def connection_cap(max_connections: int | None = None, store_connections: int = 0) -> int:
    """The most client connections a process takes at once.

    ``max_connections`` when given; otherwise what the soft RLIMIT_NOFILE leaves once
    ``DESCRIPTOR_RESERVE`` and ``store_connections`` (the store's pooled connections) are set
    aside, so client connections alone never exhaust the process's descriptors.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    available = soft - DESCRIPTOR_RESERVE - store_connections
    if max_connections is not None:
        if max_connections > available:
            log.warning(
                "max_connections %d is above the %d connections RLIMIT_NOFILE (%d) leaves: the process may "
                "run out of descriptors (it then stops accepting until some are free)",
                max_connections,
                max(available, 0),
                soft,
            )
        return max_connections
    if available < 1:
        log.warning("RLIMIT_NOFILE (%d) leaves no descriptors for connections: raise it (LimitNOFILE)", soft)
        return 1
    return available


# A connection this side closes while its client may still be sending (an answer given before
# the request's body was read: a 413 judged from Content-Length, a CSRF 403, a 404, a malformed
# request's 400) is not closed at once. Closing a socket with unread input makes the kernel reset
# the connection, and the reset destroys the answer before the client reads it: the client sees
# a reset instead of its 413, and nginx logs an upstream error, answers 502 and takes the process
# out of its rotation. Instead its sending side is shut (the answer, then end of stream) and what
# the client still sends is read and dropped until it closes: at most LINGER_SECONDS and
# LINGER_BYTES (twice nginx's client_max_body_size in the shipped site). It still counts against
# the process's connection cap meanwhile.
LINGER_SECONDS = 2.0
LINGER_BYTES = 2 << 20


class Lingering:
    """One connection closed by this side, its input read and dropped until the client closes."""

    def __init__(self, sock: socket.socket, ended: Callable[[], None]) -> None:
        self.sock = sock
        self.ended = ended
        self.dropped = 0
        self.io_loop = IOLoop.current()
        self.io_loop.add_handler(sock, self.drop, IOLoop.READ)
        self.timer: object | None = self.io_loop.call_later(LINGER_SECONDS, self.end)

    @classmethod
    def start(cls, sock: socket.socket, ended: Callable[[], None], input_expected: bool) -> bool:
        """Linger on ``sock``'s connection (through a duplicate descriptor: the stream closes its
        own) if input is waiting, or ``input_expected`` (an answer given before the request was
        read whole) and the client has not closed; ``ended`` is called when done. False if it
        need not: a close after a whole exchange, or a timeout, closes at once."""
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return False  # the client has closed its side: nothing more will come
        except BlockingIOError:
            if not input_expected:
                return False  # nothing waiting, nothing owed
        except OSError:
            return False  # reset, or gone
        try:
            held = sock.dup()
        except OSError:
            return False
        try:
            held.setblocking(False)
            held.shutdown(socket.SHUT_WR)
            cls(held, ended)
        except Exception:  # never let lingering keep the stream from closing
            held.close()
            return False
        return True

    def drop(self, fd: object, events: int) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.dropped += len(chunk)
                if self.dropped > LINGER_BYTES:
                    break
        except BlockingIOError:
            return  # all read for now
        except OSError:
            pass
        self.end()  # end of stream, the byte budget spent, or an error

    def end(self) -> None:
        if self.timer is None:
            return
        self.io_loop.remove_timeout(self.timer)
        self.timer = None
        self.io_loop.remove_handler(self.sock)
        self.sock.close()
        self.ended()


class ClientStream(IOStream):
    """A client connection that keeps TCP_NODELAY on for its whole life.

    Tornado turns Nagle's algorithm off as each response finishes and back on once it is sent:
    two setsockopt calls (and a look-up of the socket's family) per request, about 1% of a
    request's instructions. Answers here are written whole as they finish, so there is nothing
    for Nagle's algorithm to gather between them: it is turned off once, at accept.
    """

    def __init__(
        self, connection: socket.socket, linger: Callable[[socket.socket, bool], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(connection, **kwargs)
        super().set_nodelay(True)
        # Called with the socket and input_unread when this side closes it (see Lingering).
        self.linger = linger
        # An answer went out before the request was read whole (see JsonHandler.write_error).
        self.input_unread = False
        # Closed, or its last answer on the way (a draining process closes it once sent): a
        # request read after that is not run (see CappedHTTPServer.start_request).
        self.last_answer_given = False

    def close(self, exc_info: Any = False) -> None:
        self.last_answer_given = True
        try:
            if not exc_info and self.linger is not None and self.socket is not None and not self.closed():
                self.linger(self.socket, self.input_unread)
        finally:
            super().close(exc_info)

    def set_nodelay(self, value: bool) -> None:
        """Nothing to do: TCP_NODELAY is on from the start (see the class)."""


class _NotRun(HTTPMessageDelegate):
    """A request read from a connection that gave its last answer: nothing runs, and the
    connection's request loop ends with it, before its body is read."""

    def __init__(self, request_conn: HTTPConnection) -> None:
        self.request_conn = request_conn

    def headers_received(self, start_line: Any, headers: Any) -> None:
        if isinstance(self.request_conn, HTTP1Connection):
            # Taking the stream (allowed while headers are received) ends Tornado's reading on
            # it. The last answer before this request was written whole: Tornado reads a
            # connection's next request only once the answer before it is sent.
            stream = self.request_conn.detach()
            if isinstance(stream, ClientStream):
                stream.input_unread = True  # this request's body, at least
            stream.close()


class CappedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with a cap on open connections, and an accept loop that pauses
    instead of spinning when the process runs out of descriptors.

    Tornado's own accept handler logs a traceback for every accept() that fails and, the
    listening socket being still readable, is called again at once: out of descriptors, it spins
    on a core and fills the disk with tracebacks while no request is served. Here the listening
    sockets are watched only while the process can take a connection: at ``max_connections``
    open, or when accept() finds no descriptor, they are set aside until a connection closes
    (or, for descriptors, ``ACCEPT_RETRY_INTERVAL`` has passed), and the kernel's listen queue
    holds what arrives meanwhile. Either condition is logged at most once a second.
    """

    def initialize(self, *args: Any, max_connections: int | None = None, **kwargs: Any) -> None:
        """HTTPServer's arguments, and ``max_connections`` (default: `connection_cap`)."""
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections if max_connections is not None else connection_cap()
        self.open_connections = 0
        self.listening_sockets: list[socket.socket] = []
        self.accepting = False
        self.accept_retry: object | None = None
        self.accept_warning = ThrottledWarning(log)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        self.listening_sockets.extend(sockets)
        self.start_accepting()

    def start_accepting(self) -> None:
        """Watch the listening sockets, unless stopped, watching already, or at the cap."""
        if self.accepting or not self.listening_sockets or self.open_connections >= self.max_connections:
            return
        io_loop = IOLoop.current()
        if self.accept_retry is not None:
            io_loop.remove_timeout(self.accept_retry)
            self.accept_retry = None
        self.accepting = True
        for sock in self.listening_sockets:
            io_loop.add_handler(sock, self.accept_connections, IOLoop.READ)

    def pause_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            for sock in self.listening_sockets:
                IOLoop.current().remove_handler(sock)

    def accept_connections(self, sock: socket.socket, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.open_connections >= self.max_connections:
                self.pause_accepting()
                self.accept_warning(
                    "%d connections open, this process's cap (max_connections): not accepting until one closes",
                    self.open_connections,
                )
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self.pause_accepting()
                    self.accept_retry = IOLoop.current().call_later(ACCEPT_RETRY_INTERVAL, self.start_accepting)
                    self.accept_warning(
                        "cannot accept connections (%s) with %d open: paused until descriptors free up",
                        e.strerror,
                        self.open_connections,
                    )
                    return
                # Any other error belongs to the one connection it took off the queue.
                self.accept_warning("accepting a connection failed: %s", e.strerror)
                continue
            stream = ClientStream(
                connection,
                linger=self.linger,
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )
            self.handle_stream(stream, address)

    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        self.open_connections += 1
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        # Tornado reads on from a connection it has closed: requests a client pipelined behind
        # one that asked to close it (``Connection: close``, HTTP/1.0) would run without anyone
        # to answer, logins and logouts included, against RFC 9112 (9.6); so would requests
        # behind a draining process's last answer. They are read and dropped instead.
        if isinstance(server_conn, HTTP1ServerConnection):
            stream = server_conn.stream
            if stream.last_answer_given if isinstance(stream, ClientStream) else stream.closed():
                return _NotRun(request_conn)
        return super().start_request(server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.connection_ended()

    def connection_ended(self) -> None:
        self.open_connections -= 1
        self.start_accepting()

    def linger(self, sock: socket.socket, input_unread: bool) -> None:
        """A connection this side closes lingers while its client may still send (see Lingering),
        counted as open until it ends."""
        if Lingering.start(sock, self.connection_ended, input_unread):
            self.open_connections += 1

    def stop(self) -> None:
        self.pause_accepting()
        if self.accept_retry is not None:
            IOLoop.current().remove_timeout(self.accept_retry)
            self.accept_retry = None
        for sock in self.listening_sockets:
            sock.close()
        self.listening_sockets = []
        super().stop()
