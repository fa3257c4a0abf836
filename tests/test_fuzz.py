"""Property-based: arbitrary cookies, headers and bodies never get a 5xx from the API."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer

from handlers.app import SessionApplication
from settings import load_settings
from stores.memory import MemoryStore
from stores.users import DEMO_USERS_FILE, UserDirectory
from tests.conftest import test_secret


class ServerThread:
    """The app served from its own thread and IOLoop, for tests that talk raw sockets."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        config = load_settings("test", environ={}, session_secrets=(test_secret(),))
        app = SessionApplication(config, MemoryStore(1000), UserDirectory.from_file(DEMO_USERS_FILE))
        server = HTTPServer(app, max_body_size=16 * 1024 * 1024)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        server.add_sockets([sock])
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        server.stop()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


class Collected(logging.Handler):
    """Every log record the server writes while the module runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def failures(self) -> list[str]:
        """Tracebacks and error lines: what a request must never cause."""
        return [r.getMessage()[:200] for r in self.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def server_log() -> Iterator[Collected]:
    collected = Collected()
    root = logging.getLogger()
    root.addHandler(collected)
    yield collected
    root.removeHandler(collected)


@pytest.fixture(scope="module")
def live_server(server_log: Collected) -> Iterator[ServerThread]:
    with ServerThread() as server:
        yield server


def raw_status(port: int, request: bytes) -> int | None:
    """Send raw bytes; return the response status, or None if the server closed without one."""
    # No half-close: Tornado reads a shut-down write side as the client going away.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return None
    if not data:
        return None
    parts = data.split(b" ", 2)
    assert parts[0].startswith(b"HTTP/1."), data[:100]
    return int(parts[1])


# Header values as bytes travel: Latin-1, where "²" (0xB2) is a digit to str.isdigit() and not to int().
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)
cookie_text = st.one_of(
    header_text,
    st.builds(lambda v: f"device={v}", header_text),
    st.builds(lambda v: f"device={v}.0123456789abcdef0123456789abcdef", header_text),
    st.builds(lambda v: f"sid={v}", header_text),
    st.builds(lambda v: f'sid="2|{v}"', header_text),
    st.builds(lambda a, b: f"sid={a}; XSRF-TOKEN={b}", header_text, header_text),
)
body_bytes = st.one_of(
    st.binary(max_size=2000),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]),
    path=st.sampled_from(["/api", "/api/login", "/api/logout", "/api/balance", "/livez", "/readyz", "/x"]),
    cookie=cookie_text,
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-16", ""]),
    origin=st.sampled_from([None, "http://localhost:4736", "null", "http://evil.example"]),
    body=body_bytes,
)
def test_no_input_gets_a_server_error(live_server: ServerThread, method, path, cookie, content_type, origin, body):
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Cookie: {cookie}", "Connection: close"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if origin:
        head.append(f"Origin: {origin}")
    head.append(f"Content-Length: {len(body)}")
    status = raw_status(live_server.port, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    assert status is not None and status < 500, status


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 60_000 + b"\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\nzz\r\n",
        b"GET /api/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api?%ff=%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nOrigin: http://x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\n\r\n\x00\x01\x02\x03\x04",
        # Digits str.isdigit() takes and int() refuses, where a number is read from a header.
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:4736\r\n"
        b"Content-Type: application/json\r\nCookie: device=\xb2.0123456789abcdef0123456789abcdef\r\n"
        b'Content-Length: 39\r\n\r\n{"email":"nobody@x.com","password":"1"}',
    ],
)
def test_malformed_requests_are_never_a_server_error(live_server: ServerThread, request_bytes):
    status = raw_status(live_server.port, request_bytes)
    assert status is None or status < 500


def raw_response(port: int, request: bytes) -> bytes:
    """Send raw bytes; return the whole response (the request asks to close the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


# JSON texts a parser may choke on: lone surrogates (valid JSON text, not valid Unicode), odd
# escapes, deep nesting, numbers past every float and past Python's int-from-text limit.
odd_strings = st.one_of(
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(['"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\/\\b\\f"', '"\\x41"', '"\\u12"']),
    st.integers(min_value=0xD800, max_value=0xDFFF).map(lambda c: f'"\\u{c:04x}"'),
)
odd_numbers = st.one_of(
    st.sampled_from(["1e999", "-1e999", "1e-999", "-0", "0.0000000000000000000001", "NaN", "Infinity"]),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.integers().map(str),
)
# Nesting far past the parser's recursion limit, within the 64 KiB body limit.
deep = st.integers(min_value=1, max_value=30_000).map(lambda n: "[" * n + "]" * n)
json_texts = st.recursive(
    odd_strings | odd_numbers | st.sampled_from(["true", "false", "null"]),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(odd_strings, children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
)
credentials = st.builds(
    lambda email, password: '{"email":' + email + ',"password":' + password + "}",
    odd_strings | odd_numbers,
    odd_strings | odd_numbers,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/api/login", "/api/logout"]),
    body=st.one_of(json_texts, credentials, deep).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
def test_no_json_text_gets_a_server_error_or_a_traceback(live_server: ServerThread, server_log: Collected, path, body):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:4736\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    response = raw_response(live_server.port, head.encode() + body)
    status = int(response.split(b" ", 2)[1])
    assert status < 500, (status, body[:100])
    if status >= 400:
        assert json.loads(response.partition(b"\r\n\r\n")[2])["errorMessage"]
    assert server_log.failures() == []


def test_a_lone_surrogate_password_is_a_400_not_a_500(live_server: ServerThread, server_log: Collected):
    body = b'{"email":"max@gmail.com","password":"\\ud800"}'
    head = (
        "POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:4736\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    response = raw_response(live_server.port, head.encode() + body)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"errorMessage" in response
    assert server_log.failures() == []
