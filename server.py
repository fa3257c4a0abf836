"""Entry point: parse the command line, load settings, build the app, serve, drain on SIGTERM.

python server.py --env=dev                 serve (dev: http://127.0.0.1:3000)
python server.py hash-password < pw.txt    print a password hash for a users file
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import getpass
import logging
import math
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from handlers.access import configure_logging
from handlers.app import SessionApplication
from settings import ENV_VARIABLES, ENVIRONMENTS, Settings, SettingsError, load_settings
from stores import build_store
from stores.users import DEMO_USERS_FILE, UserDirectory, UsersFileError, hash_password

log = logging.getLogger("server")

# Tornado's own cap, far above ours: the handlers answer 413 with a JSON error themselves
# (from Content-Length, before reading), and this only bounds what a chunked body may stream.
TORNADO_MAX_BODY = 16 * 1024 * 1024
# Net container allocations between young collections of the cyclic garbage collector (Python's
# default, 700, suits short scripts). Requests waiting on the store hold thousands of young
# objects (coroutines, futures, handlers, headers); every young collection walked and promoted
# them all again: 2.7% of the server's CPU under load on memcached, by perf. A collection walks
# what is alive, not what was freed, so at 20,000 the same work is done about 28 times less
# often; garbage in reference cycles waits a little longer for it (a few MiB at most).
GC_YOUNG_THRESHOLD = 20_000
# Bytes a connection asks the socket for at a time. Tornado's default, 64 KiB, is allocated and
# zero-filled afresh for every read, at least two per request (the request, then the read that
# finds nothing more): 128 KiB of memset per request, 15% of a sessionless request's
# instructions, and the writes push the session state out of the CPU caches between requests.
# A request's head fits in 4 KiB; a larger one takes a few more reads.
READ_CHUNK_SIZE = 4096
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


class ThrottledWarning:
    """A warning written at most once per ``interval`` seconds, whatever makes it recur.

    The next line written says how many were held back since the last one.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.next_allowed = -math.inf
        self.held_back = 0

    def __call__(self, message: str, *args: object) -> None:
        now = self.clock()
        if now < self.next_allowed:
            self.held_back += 1
            return
        self.next_allowed = now + self.interval
        if self.held_back:
            message += " (%d more such since the last line)"
            args = (*args, self.held_back)
            self.held_back = 0
        self.logger.warning(message, *args)


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


def store_connections(settings: Settings) -> int:
    """Descriptors the session store may hold open: one pooled connection per worker and node."""
    if settings.store == "memcached":
        return settings.memcached_threads * len(settings.memcached_servers)
    return 0


class SessionHTTPServer(HTTPServer):
    """Tornado's HTTPServer, with Nagle's algorithm off for the whole life of a connection, reads
    of ``READ_CHUNK_SIZE``, a cap on open connections, and an accept loop that pauses instead of
    spinning when the process runs out of descriptors.

    Tornado turns Nagle off before each response and on again after it: two setsockopt calls per
    request, about 4% of a bare request's time here. A JSON API writes each response whole, so
    the connection keeps TCP_NODELAY from the start, as nginx and Node.js do by default.

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
            stream = IOStream(connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)

    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        self.open_connections += 1
        stream.read_chunk_size = READ_CHUNK_SIZE
        stream.set_nodelay(True)
        stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.open_connections -= 1
        self.start_accepting()

    def stop(self) -> None:
        self.pause_accepting()
        if self.accept_retry is not None:
            IOLoop.current().remove_timeout(self.accept_retry)
            self.accept_retry = None
        for sock in self.listening_sockets:
            sock.close()
        self.listening_sockets = []
        super().stop()


def _keep_nodelay(value: bool) -> None:
    """Stands in for IOStream.set_nodelay once the connection has TCP_NODELAY for good."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="Cookie-session server for browser front ends.",
        epilog="Environment variables: " + ", ".join(ENV_VARIABLES) + " (see README.md, Settings).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "hash-password"),
        help="serve (default), or hash-password: read one password line on standard input and "
        "print its hash for a users file",
    )
    parser.add_argument(
        "--env", default="dev", choices=ENVIRONMENTS, help="environment settings to load (default: dev)"
    )
    parser.add_argument("--host", help="address to listen on (overrides HOST and the environment's default)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides PORT and the environment's default)")
    return parser


def hash_password_command() -> int:
    # Prompt only at a terminal; a pipe gives exactly one line.
    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("server.py: hash-password: no password given on standard input", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def settle_garbage_collector() -> None:
    """Freeze what start-up built (never walked again) and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def load_users(settings: Settings) -> UserDirectory:
    return UserDirectory.from_file(settings.users_file or DEMO_USERS_FILE)


async def serve(settings: Settings, users: UserDirectory) -> None:
    store = build_store(settings)
    app = SessionApplication(settings, store, users)
    server = SessionHTTPServer(
        app,
        xheaders=settings.xheaders,
        max_body_size=TORNADO_MAX_BODY,
        # Tornado's name for what bounds the wait for a request's complete headers (an hour by
        # default), idle kept-alive connections included; see Settings.header_timeout.
        idle_connection_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=connection_cap(settings.max_connections, store_connections(settings)),
    )
    server.listen(settings.port, settings.host)
    await store.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle_garbage_collector()
    log.info(
        "serving env=%s on http://%s:%d (store: %s; at most %d connections)",
        settings.env,
        settings.host,
        settings.port,
        settings.store,
        server.max_connections,
    )
    await stop.wait()
    await drain(server, app, settings.drain_timeout)
    await store.close()
    users.close()
    log.info("stopped")


async def drain(server: HTTPServer, app: SessionApplication, timeout: float) -> None:
    """Stop accepting, let requests in flight finish (and save their sessions), then close.

    Keep-alive is switched off first, so a request still arriving on an open connection is
    answered with ``Connection: close`` instead of keeping the connection around.
    """
    log.info("stopping: no new connections; draining %d request(s) for up to %.1fs", app.in_flight, timeout)
    server.stop()
    server.conn_params.no_keep_alive = True
    deadline = time.monotonic() + timeout
    while app.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if app.in_flight:
        log.warning("drain timeout: closing %d unfinished request(s)", app.in_flight)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        log.warning("some connections did not close in time")


def run(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop's event loop when it is installed (measurably faster), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)
        return
    uvloop.run(main_coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        return hash_password_command()
    configure_logging(os.environ.get("LOG_FORMAT", "text"))
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(args.env, **overrides)
        users = load_users(settings)
    except (SettingsError, UsersFileError) as e:
        print(f"server.py: refusing to start ({args.env}): {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    try:
        run(serve(settings, users))
    except OSError as e:
        print(f"server.py: cannot listen on {settings.host}:{settings.port}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
