"""Slow and excess connections, against a real server process through real sockets.

Slow headers and slow bodies are cut off by the server; at its connection cap, or out of file
descriptors, a process stops accepting without spinning or flooding its log, and serves again
once connections close. Each test decides by what the server does to the sockets (closes them,
answers), never by how long it took.
"""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import select
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from connections import DESCRIPTOR_RESERVE, LogThrottle, ThrottledLines, ThrottledWarning, connection_cap
from harness import cpu_seconds, partial_header_flood
from settings import SettingsError, load_settings
from tests.conftest import FakeClock
from tests.services import AppProcess

pytestmark = pytest.mark.slow  # server processes held by slow clients

# Short timeouts, so a test sees them end; a test that needs connections held sets its own.
FAST = {"HEADER_TIMEOUT": "1", "BODY_TIMEOUT": "1"}
# How long a client keeps trickling before the test gives up on the server: far beyond the
# timeouts above, so only a server that never cuts the client off gets there (and fails).
TRICKLE_BYTES = 400
TRICKLE_PAUSE = 0.05
CAP_LINE = re.compile(r"connections open, this process's cap")
OUT_OF_DESCRIPTORS_LINE = re.compile(r"cannot accept connections \(Too many open files\)")


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess(FAST) as process:
        yield process


def connect(app: AppProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", app.port), timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout guards)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def trickle_until_closed(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` a byte at a time until the server closes the connection; return bytes sent.

    Returns ``len(data)`` if the server never closed it.
    """
    for sent, byte in enumerate(data):
        readable, _, _ = select.select([sock], [], [], TRICKLE_PAUSE)
        if readable:
            try:
                if not sock.recv(4096, socket.MSG_PEEK):
                    return sent
            except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
                return sent
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return len(data)


def test_a_connection_that_sends_nothing_is_closed(app):
    with connect(app) as sock:
        assert read_until_closed(sock) == b""


def test_headers_that_never_finish_are_closed(app):
    with connect(app) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert read_until_closed(sock) == b""


def test_a_header_trickled_a_byte_at_a_time_is_closed(app):
    # Each byte arrives well within any per-read timeout; only a bound on the whole header ends it.
    head = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * TRICKLE_BYTES
    with connect(app) as sock:
        assert trickle_until_closed(sock, head) < len(head)
        assert read_until_closed(sock) == b""


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
def test_a_slow_body_is_closed_unanswered(app, trickle):
    body = b'{"email": "max@gmail.com", "password": "' + b"x" * TRICKLE_BYTES + b'"}'
    head = (
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Origin: %s\r\nContent-Length: %d\r\n\r\n" % (app.port, app.base_url.encode(), len(body))
    )
    with connect(app) as sock:
        sock.sendall(head + body[:10])
        if trickle:
            assert trickle_until_closed(sock, body[10:]) < len(body) - 10
        assert read_until_closed(sock) == b""
    # The login was never attempted: the process logged no request for it.
    assert "POST /api/login" not in app.output


def test_a_kept_alive_connection_serves_requests_until_it_idles_out(app):
    with connect(app) as sock:
        for _ in range(3):
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert read_until_closed(sock) == b""


def livez(app: AppProcess, timeout: float = 20) -> int:
    with urllib.request.urlopen(app.base_url + "/livez", timeout=timeout) as response:
        return int(response.status)


def limit_descriptors(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@contextlib.contextmanager
def flooded(app: AppProcess, count: int) -> Iterator[list[socket.socket]]:
    flood = partial_header_flood(app.port, count)
    try:
        yield flood
    finally:
        for sock in flood:
            sock.close()


def assert_quiet_and_idle_while_flooded(app: AppProcess, line: re.Pattern[str]) -> None:
    """While the flood holds: at most a line a second about it, and no core kept busy."""
    app.wait_for_output(line.pattern.replace("\\", ""), timeout=20)
    window = 2.0
    lines_before, cpu_before, started = len(line.findall(app.output)), sum(cpu_seconds(app.pid)), time.monotonic()
    time.sleep(window)  # a window to measure over, not an assertion about time
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(app.pid)) - cpu_before
    assert len(line.findall(app.output)) - lines_before <= elapsed + 1
    # Spinning on accept() keeps a core busy (0.77 s of CPU a second before this was fixed).
    assert cpu < 0.25 * elapsed, cpu


def test_the_connection_cap_follows_the_descriptor_limit_and_pauses_accepting():
    with AppProcess({"HEADER_TIMEOUT": "60"}, preexec_fn=lambda: limit_descriptors(256)) as app:
        assert f"at most {256 - DESCRIPTOR_RESERVE} connections" in app.output
        with flooded(app, 300):
            assert_quiet_and_idle_while_flooded(app, CAP_LINE)
            assert not OUT_OF_DESCRIPTORS_LINE.search(app.output)
        assert livez(app) == 200


def test_out_of_descriptors_the_process_pauses_accepting_and_serves_again():
    with AppProcess({"HEADER_TIMEOUT": "60"}) as app:
        # Lowered after start-up, under the cap derived from the limit it started with: the
        # process runs out of descriptors before it reaches its cap.
        resource.prlimit(app.pid, resource.RLIMIT_NOFILE, (64, 64))
        with flooded(app, 100):
            assert_quiet_and_idle_while_flooded(app, OUT_OF_DESCRIPTORS_LINE)
            assert "Traceback" not in app.output
        assert livez(app) == 200


def test_a_slow_header_flood_ends_by_itself_and_the_process_answers_again():
    with AppProcess({"HEADER_TIMEOUT": "1"}, preexec_fn=lambda: limit_descriptors(256)) as app, flooded(app, 300):
        # The flood's connections stay open on the client side: the server ends them itself.
        assert livez(app) == 200


def test_the_default_cap_leaves_a_reserve_below_the_soft_descriptor_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        assert connection_cap() == 512 - DESCRIPTOR_RESERVE
        assert connection_cap(store_connections=16) == 512 - DESCRIPTOR_RESERVE - 16
        assert connection_cap(max_connections=100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_throttled_warning_writes_a_line_a_second_and_counts_the_rest(caplog):
    clock = FakeClock()
    warn = ThrottledWarning(logging.getLogger("server"), LogThrottle(clock=clock))
    for _ in range(5):
        warn("out of %s", "descriptors")
    clock.advance(0.5)
    warn("at the cap")
    clock.advance(0.5)
    warn("at the %s", "cap")
    assert [r.getMessage() for r in caplog.records] == [
        "out of descriptors",
        "at the cap (5 more such since the last line)",
    ]


def test_throttled_lines_pass_each_call_site_once_a_second(caplog):
    clock = FakeClock()
    logger = logging.getLogger("tornado.general")
    caplog.set_level(logging.INFO, logger=logger.name)
    throttled = ThrottledLines(LogThrottle(clock=clock))
    logger.addFilter(throttled)

    def two_call_sites() -> None:
        logger.info("Timeout reading body from %s", "127.0.0.1")
        logger.info("Unsatisfiable read: 100% full")  # formatted by its caller

    try:
        for _ in range(3):
            two_call_sites()
        clock.advance(1.0)
        two_call_sites()
    finally:
        logger.removeFilter(throttled)
    assert [r.getMessage() for r in caplog.records] == [
        "Timeout reading body from 127.0.0.1",
        "Unsatisfiable read: 100% full",
        "Timeout reading body from 127.0.0.1 (2 more such since the last line)",
        "Unsatisfiable read: 100% full (2 more such since the last line)",
    ]


def test_many_slow_bodies_cost_a_log_line_a_second(app):
    head = (
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Origin: %s\r\nContent-Length: 100\r\n\r\n{" % (app.port, app.base_url.encode())
    )
    lines_before = app.output.count("Timeout reading body")
    connections = [connect(app) for _ in range(30)]
    for sock in connections:
        sock.sendall(head)
    for sock in connections:
        assert read_until_closed(sock) == b""
        sock.close()
    # All 30 timed out within the same second or two.
    assert app.output.count("Timeout reading body") - lines_before <= 2


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"HEADER_TIMEOUT": "0"}, "header_timeout (HEADER_TIMEOUT): must be positive"),
        ({"BODY_TIMEOUT": "-1"}, "body_timeout (BODY_TIMEOUT): must be positive"),
        ({"BODY_TIMEOUT": "soon"}, "BODY_TIMEOUT: expected a whole number"),
    ],
)
def test_slow_client_settings_are_validated(environ, problem):
    with pytest.raises(SettingsError) as refused:
        load_settings("test", environ=environ)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


def test_slow_client_settings_default_to_seconds_and_read_the_environment():
    defaults = load_settings("prod", environ={}, session_secrets=("s" * 32,), users_file="users.json")
    assert (defaults.header_timeout, defaults.body_timeout, defaults.max_connections) == (10, 30, None)
    tuned = load_settings("test", environ={"HEADER_TIMEOUT": "5", "BODY_TIMEOUT": "20"})
    assert (tuned.header_timeout, tuned.body_timeout) == (5, 20)
    with pytest.raises(SettingsError, match="max_connections: must be positive"):
        load_settings("test", environ={}, max_connections=0)
