"""Entry point: parse the command line, load settings, build the app, serve, drain on SIGTERM.

python server.py --env=dev                 serve (dev: http://127.0.0.1:3000)
python server.py hash-password < pw.txt    print a password hash for a users file

A server with routes of its own calls `main` with them (see the README, Write your own handler):
``sys.exit(main(extra_routes=[(r"/api/cart", CartHandler)]))``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from connections import (
    LINGER_SECONDS,
    CappedHTTPServer,
    ThrottledEvents,
    ThrottledLines,
    WithheldRequestText,
    connection_cap,
)
from handlers.app import Routes, SessionApplication
from handlers.logging_setup import configure_logging
from handlers.session_manager import CLIENT_CAUSED_EVENTS
from settings import ENV_VARIABLES, ENVIRONMENTS, Settings, SettingsError, load_settings
from stores import build_store
from stores.base import SessionStore, StoreContext
from stores.sealing import record_keys
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
# Bytes a connection asks the socket for at a time (Tornado's ``chunk_size``). Tornado's default,
# 64 KiB, is allocated and zero-filled afresh for every read, at least two per request: 128 KiB
# of memset per request, 15% of a sessionless request's instructions. A request's head fits in
# 4 KiB; a larger one takes a few more reads.
READ_CHUNK_SIZE = 4096


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="Cookie-session server for browser front ends.",
        epilog="Environment variables: "
        + ", ".join(ENV_VARIABLES)
        + ", and the chosen store's options as <STORE>_<OPTION>, e.g. MEMCACHED_SERVERS or REDIS_URL"
        + " (see README.md, Settings, and docs/STORES.md).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "hash-password"),
        help="serve (default), or hash-password: print a password's hash for a users file (it "
        "prompts at a terminal, or reads one line on standard input)",
    )
    parser.add_argument(
        "--env", default="dev", choices=ENVIRONMENTS, help="environment settings to load (default: dev)"
    )
    parser.add_argument("--host", help="address to listen on (overrides HOST and the environment's default)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides PORT and the environment's default)")
    return parser


def hash_password_command() -> int:
    # Prompt only at a terminal; a pipe gives exactly one line.
    try:
        password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt
        password = ""
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
    return UserDirectory.from_file(settings.users_file or DEMO_USERS_FILE, max_waiting=settings.password_queue_size)


def session_store(settings: Settings, clock: Callable[[], float] = time.time) -> SessionStore:
    """The store ``settings`` choose, built from its options (checked when settings loaded)."""
    context = StoreContext(record_keys(settings.session_secrets), settings.session_max_size, clock)
    return build_store(settings.store, settings.store_options.get(settings.store, {}), context)


async def serve(settings: Settings, users: UserDirectory, extra_routes: Routes | None = None) -> None:
    store = session_store(settings)
    app = SessionApplication(settings, store, users, extra_routes=extra_routes)
    server = CappedHTTPServer(
        app,
        xheaders=settings.xheaders,
        chunk_size=READ_CHUNK_SIZE,
        max_body_size=TORNADO_MAX_BODY,
        # Tornado's name for what bounds the wait for a request's complete headers (an hour by
        # default), idle kept-alive connections included; see Settings.header_timeout.
        idle_connection_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=connection_cap(settings.max_connections, store.connections),
    )
    sockets = bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    general = logging.getLogger("tornado.general")
    general.addFilter(WithheldRequestText())
    general.addFilter(ThrottledLines())
    # Lines any client can cause once per request by replaying a cookie: once a second each.
    logging.getLogger("sessions").addFilter(ThrottledEvents(CLIENT_CAUSED_EVENTS))
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
        sockets[0].getsockname()[1],  # the port the system chose, when 0 asked for any
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

    Each answer given while draining says ``Connection: close`` and closes its connection once
    written (see `JsonHandler.finish`), instead of keeping the connection around.
    """
    log.info("stopping: no new connections; draining %d request(s) for up to %.1fs", app.in_flight, timeout)
    server.stop()
    app.draining = True
    deadline = time.monotonic() + timeout
    while app.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if app.in_flight:
        log.warning("drain timeout: closing %d unfinished request(s)", app.in_flight)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        log.warning("some connections did not close in time")
    # Connections still lingering after an early answer (connections.Lingering) end on their own,
    # within LINGER_SECONDS: exiting first would reset them, and their answers with them.
    linger_deadline = time.monotonic() + LINGER_SECONDS
    while getattr(server, "open_connections", 0) > 0 and time.monotonic() < linger_deadline:
        await asyncio.sleep(0.02)


def run(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop's event loop when it is installed (measurably faster), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)
        return
    uvloop.run(main_coroutine)


def main(argv: Sequence[str] | None = None, extra_routes: Routes | None = None) -> int:
    """Run the command line ``argv`` (default: the process's). ``extra_routes``, Tornado URL specs
    such as ``[(r"/api/cart", CartHandler)]``, are served beside the API (and take precedence)."""
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
        run(serve(settings, users, extra_routes))
    except OSError as e:
        print(f"server.py: cannot listen on {settings.host}:{settings.port}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
