"""The deploy's nginx under faults and abuse, with the real nginx in front of two app processes
on a real memcached: the app's answers reach the client as they are, only failed connections
move a request to the other process, slow clients are cut off and login attempts are budgeted."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import cpu_seconds
from tests.services import AppProcess
from tests.test_deploy import FAST_USER, SLOW_USER, Deployment, deployed, fetch, login, session_cookie

pytestmark = [pytest.mark.memcached, pytest.mark.slow]  # nginx and server processes
NGINX_UNAVAILABLE = {"errorMessage": "Service temporarily unavailable."}
NGINX_TOO_MANY = {"errorMessage": "Too many login attempts, please wait a moment."}
STORE_UNAVAILABLE = {"errorMessage": "Session store unavailable, please retry shortly."}
# Enough CPU to tell the process hashing the slow user's password (about half a second of it)
# from the idle one.
HASHING = 0.1


def short_client_timeouts(site: str) -> str:
    """The site with nginx's client timeouts at one second, so a test sees them end."""
    edited, count = re.subn(r"(client_header_timeout|client_body_timeout) 10s;", r"\1 1s;", site)
    assert count == 4, "the site no longer sets the client timeouts this test shortens"
    return edited


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[Deployment]:
    """One deployment for the tests that leave it as they found it (short client timeouts)."""
    with deployed(tmp_path_factory.mktemp("deploy-limits"), short_client_timeouts) as d:
        yield d


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of the test's own, for a test that stops a process or spends a budget."""
    with deployed(tmp_path) as d:
        yield d


def https_client(deployment: Deployment) -> AsyncHTTPClient:
    return AsyncHTTPClient(force_instance=True, defaults={"ca_certs": deployment.ca_cert, "validate_cert": True})


def logged_requests(app: AppProcess, method: str, path: str) -> int:
    """Requests for ``method path`` in the JSON access log of ``app``, once its log is current.

    A marker request, sent straight to the process and logged after everything before it,
    tells when the log holds every earlier request.
    """
    marker = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(f"GET /api/{marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        sock.recv(4096)
    lines = [json.loads(line) for line in app.wait_for_output(marker).splitlines() if line.startswith("{")]
    return sum(1 for e in lines if e.get("event") == "access" and (e["method"], e["path"]) == (method, path))


@pytest.mark.gen_test(timeout=60)
async def test_during_a_store_outage_livez_stays_up_and_sessions_get_the_apps_503(shared):
    client = https_client(shared)
    r = await login(client, shared)
    cookie = {"Cookie": f"__Host-sid={session_cookie(r).value}"}
    shared.memcached.pause()
    try:
        # Each session request waits out the store's 0.5 s timeout; the only memcached node never
        # leaves the ring, so every one of them meets the outage.
        for _ in range(4):
            r = await fetch(client, shared.https + "/api/login", headers=cookie)
            assert r.code == 503
            assert json.loads(r.body) == STORE_UNAVAILABLE
            assert r.headers["Retry-After"] == "2"
            assert r.headers["Strict-Transport-Security"]
            # The app's 503 took no process out of the rotation: both still answer every time.
            for _ in range(2):
                r = await fetch(client, shared.https + "/livez")
                assert (r.code, json.loads(r.body)) == (200, {"status": "ok"})
    finally:
        shared.memcached.resume()
    deadline = time.monotonic() + 10
    while (r := await fetch(client, shared.https + "/api/login", headers=cookie)).code != 200:
        assert time.monotonic() < deadline, r.body
        await asyncio.sleep(0.1)
    assert json.loads(r.body) == {"loggedIn": True}
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_stopped_process_sends_idempotent_requests_to_the_other(own):
    client = https_client(own)
    r = await login(client, own)
    cookie = {"Cookie": f"__Host-sid={session_cookie(r).value}"}
    # Both processes hold kept-alive connections from nginx before one goes away.
    for _ in range(4):
        assert (await fetch(client, own.https + "/livez")).code == 200
    assert own.apps[0].stop() == 0
    for _ in range(6):
        r = await fetch(client, own.https + "/livez")
        assert r.code == 200
        r = await fetch(client, own.https + "/api/login", headers=cookie)
        assert (r.code, json.loads(r.body)) == (200, {"loggedIn": True})
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_post_the_app_received_is_not_retried_on_the_other_process(own):
    client = https_client(own)
    before = {app.pid: sum(cpu_seconds(app.pid)) for app in own.apps}
    pending = asyncio.ensure_future(login(client, own, SLOW_USER))
    # Whichever process nginx chose is hashing the password now: it dies with the request.
    deadline = time.monotonic() + 20
    while not (busy := [a for a in own.apps if sum(cpu_seconds(a.pid)) - before[a.pid] > HASHING]):
        assert time.monotonic() < deadline and not pending.done()
        await asyncio.sleep(0.02)
    chosen = busy[0]
    survivor = next(a for a in own.apps if a is not chosen)
    chosen.stop(signal.SIGKILL)
    r = await pending
    # nginx's own answer for the failed upstream (502, shown as its JSON 503), not a retry.
    assert (r.code, json.loads(r.body)) == (503, NGINX_UNAVAILABLE)
    assert logged_requests(survivor, "POST", "/api/login") == 0
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_login_posts_are_budgeted_per_address_and_nothing_else_is(own):
    client = https_client(own)
    site = (own.nginx.dir / "site.conf").read_text()
    burst = int(re.search(r"zone=session_server_login burst=(\d+)", site).group(1))  # type: ignore[union-attr]
    refused_by_nginx = []
    attempts = 2 * burst + 5
    for attempt in range(attempts):
        r = await login(client, own)
        if r.code == 429 and json.loads(r.body) == NGINX_TOO_MANY:
            assert r.headers["Strict-Transport-Security"]
            refused_by_nginx.append(attempt)
    # A burst passes nginx untouched; past it, nginx refuses before the app does any hashing.
    assert refused_by_nginx and refused_by_nginx[0] > burst
    reached_the_apps = sum(logged_requests(app, "POST", "/api/login") for app in own.apps)
    assert reached_the_apps == attempts - len(refused_by_nginx)
    # Everything but POST /api/login goes on as before for the same address.
    r = await fetch(client, own.https + "/api/login")
    assert r.code == 200
    r = await fetch(client, own.https + "/api")
    assert r.code == 200
    client.close()


def tls_connection(deployment: Deployment) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=deployment.ca_cert)
    port = int(deployment.https.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, ssl.SSLEOFError):
            return received
        if not chunk:
            return received
        received += chunk


def test_nginx_closes_headers_that_never_finish(shared):
    with tls_connection(shared) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n")
        assert b"200 OK" not in read_until_closed(sock)


def test_nginx_closes_a_stalled_body_and_the_app_never_sees_it(shared):
    body = json.dumps(FAST_USER).encode()
    logins_before = sum(logged_requests(app, "POST", "/api/login") for app in shared.apps)
    with tls_connection(shared) as sock:
        sock.sendall(
            b"POST /api/login HTTP/1.1\r\nHost: %s\r\nOrigin: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (shared.https.split("//")[1].encode(), shared.https.encode(), len(body), body[:5])
        )
        answer = read_until_closed(sock)
    # nginx answers 408 (or just closes); the request never reached either process.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert sum(logged_requests(app, "POST", "/api/login") for app in shared.apps) == logins_before


def test_one_address_holds_at_most_32_requests_in_nginx_at_once(own):
    # Each held request has sent its whole header and waits for its body: nginx is processing it.
    head = (
        b"POST /api/logout HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    held = []
    try:
        for _ in range(32):
            sock = tls_connection(own)
            sock.sendall(head)
            held.append(sock)
        answers = []
        for _ in range(20):  # nginx counts each held request once it has read its header
            with tls_connection(own) as sock:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answers.append(read_until_closed(sock).split(b"\r\n", 1)[0])
            if answers[-1] == b"HTTP/1.1 503 Service Temporarily Unavailable":
                break
        assert answers[-1] == b"HTTP/1.1 503 Service Temporarily Unavailable", answers
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):  # the closed connections leave nginx's count as it notices them
        with tls_connection(own) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            if read_until_closed(sock).startswith(b"HTTP/1.1 200"):
                return
    pytest.fail("nginx kept refusing after the held requests closed")
