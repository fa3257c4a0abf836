"""Requests a hostile or broken client sends below what a browser would: malformed headers,
pipelining past a close, repeated and planted cookies, and what such requests leave in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator

import pytest

from connections import LINGER_SECONDS, Lingering
from handlers.cookies import CookieSigner
from handlers.json_handler import COOKIE_VALUES_CHECKED
from handlers.session_object import new_session_id
from settings import load_settings
from tests.conftest import Browser, FakeClock, test_secret
from tests.services import AppProcess

LOGIN = {"email": "max@gmail.com", "password": "1234"}


def exchange(app: AppProcess, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read every byte until the server closes it."""
    received = b""
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def request(app: AppProcess, method: str, path: str, headers: str = "", body: str = "", close: bool = True) -> str:
    lines = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n{headers}"
    if body:
        lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    if close:
        lines += "Connection: close\r\n"
    return lines + "\r\n" + body


def set_cookies(answer: bytes) -> dict[str, str]:
    cookies = {}
    for line in answer.decode("latin-1").split("\r\n\r\n", 1)[0].split("\r\n"):
        if line.lower().startswith("set-cookie:"):
            name, _, rest = line.split(":", 1)[1].strip().partition("=")
            cookies[name] = rest.split(";", 1)[0]
    return cookies


def logged_in_cookies(app: AppProcess) -> dict[str, str]:
    origin = f"Origin: {app.base_url}\r\n"
    answer = exchange(app, request(app, "POST", "/api/login", origin, json.dumps(LOGIN)).encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return set_cookies(answer)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def server() -> Iterator[AppProcess]:
    with AppProcess({"SESSION_SECRETS": test_secret(), "LOG_FORMAT": "text"}, args=("--env=dev",)) as app:
        yield app


def test_a_malformed_header_is_logged_without_the_text_it_carries():
    # A server of its own: Tornado's line for a malformed request is let through once a second.
    with AppProcess({"SESSION_SECRETS": test_secret(), "LOG_FORMAT": "text"}, args=("--env=dev",)) as server:
        sid = logged_in_cookies(server)["sid"]
        malformed = request(server, "GET", "/api/balance", f"Cookie: sid={sid}; theme=\x01dark\r\n")
        assert status(exchange(server, malformed.encode())) == 400
        log = server.wait_for_output("Invalid header value")
    assert "Invalid header value (not logged)" in log
    assert sid not in log and sid.split("|")[-1] not in log and "theme=" not in log


def test_requests_pipelined_behind_one_that_closes_the_connection_are_not_run(server: AppProcess):
    cookies = logged_in_cookies(server)
    cookie = f"Cookie: sid={cookies['sid']}\r\n"
    logout = request(server, "POST", "/api/logout", cookie + f"Origin: {server.base_url}\r\n", "{}", close=False)
    for first in (
        request(server, "GET", "/livez"),  # Connection: close
        "GET /livez HTTP/1.0\r\n\r\n",  # HTTP/1.0 closes unless asked to keep alive
    ):
        answers = exchange(server, (first + logout).encode())
        assert answers.count(b" 200 OK\r\n") == 1, answers
    # Nor is the body of one read (a length past the limit would be logged), nor a 100 Continue sent.
    for expect in ("", "Expect: 100-continue\r\n"):
        waiting = request(server, "POST", "/api/logout", cookie + expect, close=False)
        waiting = waiting.replace("\r\n\r\n", "\r\nContent-Length: 99999999999\r\n\r\n")
        answers = exchange(server, (request(server, "GET", "/livez") + waiting).encode())
        assert answers.count(b"HTTP/1.1 ") == 1 and b"100 Continue" not in answers, answers
    # The logout was never answered, so it never ran: the session is still logged in.
    assert status(exchange(server, request(server, "GET", "/api/balance", cookie).encode())) == 200
    assert "Content-Length too long" not in server.output


def test_an_access_line_bounds_and_escapes_the_method_and_path_a_client_chose(server: AppProcess):
    forged = "2026-12-02\xa007:01:00,000\xa0INFO\xa0access:\xa0POST\xa0/api/login\xa0200"
    assert status(exchange(server, request(server, "GET", "/x\x85" + forged).encode("latin-1"))) == 404
    assert status(exchange(server, request(server, "X" * 5000, "/api").encode())) == 405
    assert status(exchange(server, request(server, "GET", "/y\\x85").encode())) == 404
    log = server.wait_for_output("(5000 characters)", "x85", "/y")
    lines = [line for line in log.splitlines() if " access: " in line]
    assert any("/x\\x852026-12-02\\xa007:01:00" in line for line in lines), lines
    assert any("/y\\\\x85 404" in line for line in lines), lines  # a backslash sent is escaped too
    assert "\x85" not in log and "\xa0" not in log
    long_method = [line for line in lines if "(5000 characters)" in line]
    assert len(long_method) == 1 and len(long_method[0]) < 200, long_method


def test_repeated_cookie_headers_are_read_as_one_list_of_cookies(server: AppProcess):
    first = exchange(server, request(server, "GET", "/api").encode())
    cookies = set_cookies(first)
    repeated = f"Cookie: sid={cookies['sid']}\r\nCookie: XSRF-TOKEN={cookies['XSRF-TOKEN']}\r\n"
    for headers in (repeated, "\r\n".join(reversed(repeated.split("\r\n")[:2])) + "\r\n"):
        answer = exchange(server, request(server, "GET", "/api", headers).encode())
        assert b"You visited this page" in answer and b"Set-Cookie: sid=" not in answer, answer


def ended_session_cookie(server: AppProcess) -> str:
    """A correctly signed session cookie whose session was logged out: anyone can make one."""
    sid = logged_in_cookies(server)["sid"]
    headers = f"Cookie: sid={sid}\r\nOrigin: {server.base_url}\r\n"
    assert status(exchange(server, request(server, "POST", "/api/logout", headers, "{}").encode())) == 200
    return sid


@pytest.mark.parametrize("signed", [False, True], ids=["junk", "signed, ended"])
@pytest.mark.parametrize("order", ["planted last", "planted first"])
def test_a_planted_second_session_cookie_does_not_log_the_user_out(server: AppProcess, order, signed):
    sid = logged_in_cookies(server)["sid"]
    planted = "sid=" + (ended_session_cookie(server) if signed else "planted-by-a-sibling-subdomain")
    pair = [f"sid={sid}", planted] if order == "planted last" else [planted, f"sid={sid}"]
    answer = exchange(server, request(server, "GET", "/api/balance", f"Cookie: {'; '.join(pair)}\r\n").encode())
    assert status(answer) == 200 and b"Set-Cookie: sid=" not in answer, answer


def test_eight_planted_session_cookies_before_the_browser_s_own_do_not_hide_it(server: AppProcess):
    # One per path prefixing the request's ("/", "/api", "/api/", "/api/balance") on two parent
    # domains: as many as a sibling subdomain can have a browser send ahead of its own.
    sid = logged_in_cookies(server)["sid"]
    planted = [f"sid=planted-{i}" for i in range(8)]
    cookie = "; ".join([*planted, f"sid={sid}"])
    answer = exchange(server, request(server, "GET", "/api/balance", f"Cookie: {cookie}\r\n").encode())
    assert status(answer) == 200 and b"Set-Cookie: sid=" not in answer, answer


@pytest.mark.gen_test
async def test_planted_xsrf_cookies_do_not_hide_the_browser_s_token(browser: Browser):
    await browser.get("/api")
    token = browser.cookies["XSRF-TOKEN"]
    planted = "; ".join(f"XSRF-TOKEN=planted{i}.x" for i in range(6))
    cookies = f"{planted}; XSRF-TOKEN={token}; sid={browser.cookies['sid']}"
    headers = {"Cookie": cookies, "X-XSRF-TOKEN": token}
    response = await browser.post("/api/logout", {}, headers=headers, send_origin=False)
    assert response.code == 200, response.body


@pytest.mark.gen_test
async def test_a_header_repeating_the_xsrf_cookie_costs_a_bounded_number_of_checks(browser: Browser, app):
    macs = []
    real_mac = app.sessions.xsrf._mac

    def counted_mac(*args):
        macs.append(args)
        return real_mac(*args)

    app.sessions.xsrf._mac = counted_mac
    response = await browser.get("/api/login", headers={"Cookie": "; ".join(["XSRF-TOKEN=a.b"] * 3500)})
    assert response.code == 200
    # A check per secret of the one value a parser keeps and of at most COOKIE_VALUES_CHECKED of
    # the 3,500 repeats, and the token the answer issues.
    bound = (1 + COOKIE_VALUES_CHECKED) * len(app.config.session_secrets) + 1
    assert 1 <= len(macs) <= bound < 3500, len(macs)


def test_a_cookie_signed_in_the_future_is_refused_and_the_clock_named(caplog):
    config = load_settings("test", environ={}, session_secrets=(test_secret(),))
    clock = FakeClock()
    signer = CookieSigner(config, clock)
    with caplog.at_level(logging.WARNING, logger="sessions"):
        for ahead, accepted in ((30, True), (3600, False), (3601, False)):
            session_id = new_session_id()
            value = CookieSigner(config, FakeClock(clock.now + ahead)).sign(session_id)
            assert (signer.verify(value)[0] == session_id) is accepted, ahead
    warnings = [r.getMessage() for r in caplog.records if "ahead of this clock" in r.getMessage()]
    assert warnings == ["session cookie signed 3600 s ahead of this clock refused: are the servers' clocks apart?"]


@pytest.mark.parametrize("refusal", ["413", "403"])
def test_an_answer_given_before_the_body_is_read_reaches_the_client(server: AppProcess, refusal):
    # Answered from the headers (a declared size past the limit, or a foreign Origin), while the
    # body is still unread: closing at once would reset the connection, and the reset would
    # destroy the answer before the client read it (behind nginx: a 502 and a process out of the
    # rotation).
    size, origin = (70_000, server.base_url) if refusal == "413" else (20_000, "https://evil.example")
    for _ in range(10):
        answer = exchange(server, (request(server, "POST", "/api/login", f"Origin: {origin}\r\n", "x" * size)).encode())
        assert answer.startswith(f"HTTP/1.1 {refusal} ".encode()), answer[:80]


def test_a_client_that_goes_on_sending_after_the_answer_is_cut_off(server: AppProcess):
    headers = f"Origin: {server.base_url}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request(server, "POST", "/api/login", headers, close=False).encode())
        answer = b""
        while chunk := sock.recv(65536):  # the answer, then the end of the server's side
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
        # What follows is read and dropped up to a bound (2 MiB), then the connection ends.
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(256):
                sock.sendall(b"x" * 65536)


def test_an_error_after_the_body_was_read_keeps_the_connection(server: AppProcess):
    # /livez has no PUT: Tornado's 405 comes once the body is read, and the connection goes on.
    put = request(server, "PUT", "/livez", f"Origin: {server.base_url}\r\n", "{}", close=False)
    answers = exchange(server, (put + request(server, "GET", "/livez")).encode())
    assert answers.startswith(b"HTTP/1.1 405 ") and b"Connection: close" not in answers.split(b"\r\n\r\n")[0]
    assert answers.count(b"HTTP/1.1 200 OK") == 1, answers


def test_a_connection_lingers_only_while_input_is_waiting_or_owed():
    ended: list[bool] = []

    async def start(pending: bytes, owed: bool, client_closed: bool = False) -> bool:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(pending)
            if client_closed:
                theirs.shutdown(socket.SHUT_WR)
            lingering = Lingering.start(ours, lambda: ended.append(True), owed)
            if lingering:
                theirs.close()  # the client closes: the lingering ends on its own
                while not ended:
                    await asyncio.sleep(0.01)
            return lingering

    async def cases() -> list[bool]:
        return [
            await start(b"", owed=False),  # a whole exchange, or a timeout: close at once
            await start(b"", owed=True),  # an early answer: the body may be on its way
            await start(b"body", owed=False),  # input already waiting (a malformed request's)
            await start(b"", owed=True, client_closed=True),  # the client closed: nothing to wait for
        ]

    assert asyncio.run(cases()) == [False, True, True, False]
    assert len(ended) == 2


def test_a_client_that_neither_sends_nor_closes_is_let_go_after_the_linger_time():
    async def linger_on_a_silent_client() -> bytes:
        ours, theirs = socket.socketpair()
        ended = asyncio.Event()
        with theirs:
            with ours:
                assert Lingering.start(ours, ended.set, True)
            # Only the duplicate held by the lingering keeps the connection open now.
            await asyncio.wait_for(ended.wait(), timeout=LINGER_SECONDS + 10)
            theirs.setblocking(False)
            return theirs.recv(1)  # end of stream: the lingering side is closed

    assert asyncio.run(linger_on_a_silent_client()) == b""


@pytest.mark.gen_test
async def test_a_header_repeating_the_session_cookie_costs_a_bounded_number_of_loads(browser: Browser, app, store):
    # Correctly signed values for sessions the store does not hold: each that verifies may be loaded.
    repeated = "; ".join(f"sid={app.sessions.sign(new_session_id())}" for _ in range(10))
    store.calls.clear()
    response = await browser.get("/api/balance", headers={"Cookie": repeated})
    assert response.code == 401
    assert 1 <= store.calls.count("load") <= 4, store.calls


def test_a_dead_cookie_replayed_costs_a_log_line_a_second_not_one_a_request(server: AppProcess):
    sid = ended_session_cookie(server)
    before = server.output.count("session cookie for an unknown session")
    for _ in range(100):
        answer = exchange(server, request(server, "GET", "/api/balance", f"Cookie: sid={sid}\r\n").encode())
        assert status(answer) == 401
    # A request of its own last: once its access line is out, so are the lines before it.
    assert status(exchange(server, request(server, "GET", "/api/after-the-replays").encode())) == 404
    server.wait_for_output("GET /api/after-the-replays 404")
    warned = server.output.count("session cookie for an unknown session") - before
    # One a second at most (100 requests on loopback take well under ten), never one a request.
    assert 1 <= warned <= 10
