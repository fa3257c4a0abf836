"""Production behind nginx with TLS, end to end: real nginx from deploy/, real certificates,
memcached and two app processes; a client that trusts only the test CA."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import http.cookies
import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from stores.users import hash_password
from tests.conftest import test_secret
from tests.services import AppProcess, Memcached, Nginx, TestPKI, free_port, listening_addresses, wait_for_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))
from render_nginx import render

pytestmark = [pytest.mark.memcached, pytest.mark.slow]  # nginx and several server processes
SLOW_USER = {"email": "slow@example.com", "password": "patience"}
FAST_USER = {"email": "ann@example.com", "password": "pw"}


@dataclass
class Deployment:
    https: str
    http: str
    ca_cert: str
    memcached: Memcached
    apps: list[AppProcess]
    nginx: Nginx
    env: dict[str, str]
    session_ids: set[str] = field(default_factory=set)


@contextlib.contextmanager
def deployed(root: Path, edit_site: Callable[[str], str] = lambda site: site) -> Iterator[Deployment]:
    """memcached, two prod app processes and nginx with the deploy's site, under ``root``.

    ``edit_site`` may change the rendered site first (a test that needs a shorter timeout).
    """
    pki = TestPKI(root)
    static = root / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>demo</title><p>demo client</p>\n")
    users = root / "users.json"
    users.write_text(
        json.dumps(
            [
                {
                    "email": FAST_USER["email"],
                    "name": "Ann",
                    "balance": 12,
                    "password_hash": hash_password(FAST_USER["password"], cost=(10, 8, 1)),
                },
                # Costly on purpose: its login is the slow request in flight during SIGTERM.
                {
                    "email": SLOW_USER["email"],
                    "name": "Slow",
                    "balance": 1,
                    "password_hash": hash_password(SLOW_USER["password"], cost=(16, 8, 2)),
                },
            ]
        )
    )
    with Memcached() as memcached:
        env = {
            "SESSION_SECRETS": test_secret(),
            "USERS_FILE": str(users),
            "MEMCACHED_SERVERS": memcached.address,
            "LOG_FORMAT": "json",
        }
        apps = [AppProcess(env, args=("--env=prod",)) for _ in range(2)]
        nginx = None
        try:
            for app in apps:
                app.start()
            http_port, https_port = free_port(), free_port()
            site = render(
                server_name="localhost",
                app_ports=[a.port for a in apps],
                certificate=pki.server_cert,
                certificate_key=pki.server_key,
                static_root=str(static),
                http_listen=f"127.0.0.1:{http_port}",
                https_listen=f"127.0.0.1:{https_port}",
            )
            nginx = Nginx(root / "nginx", edit_site(site)).start()
            wait_for_port(https_port)
            yield Deployment(
                f"https://localhost:{https_port}",
                f"http://localhost:{http_port}",
                pki.ca_cert,
                memcached,
                apps,
                nginx,
                env,
            )
        finally:
            if nginx is not None:
                nginx.stop()
            for app in apps:
                app.__exit__()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("deploy")) as d:
        yield d


@pytest.fixture
def client(deployment: Deployment) -> Iterator[AsyncHTTPClient]:
    c = AsyncHTTPClient(force_instance=True, defaults={"ca_certs": deployment.ca_cert, "validate_cert": True})
    yield c
    c.close()


async def fetch(client: AsyncHTTPClient, url: str, *, method: str = "GET", body=None, headers=None) -> HTTPResponse:
    return await client.fetch(
        url,
        method=method,
        body=body,
        headers=headers or {},
        raise_error=False,
        follow_redirects=False,
    )


async def login(client, deployment: Deployment, user=FAST_USER, base: str | None = None) -> HTTPResponse:
    base = base or deployment.https
    return await fetch(
        client,
        base + "/api/login",
        method="POST",
        body=json.dumps(user),
        headers={"Content-Type": "application/json", "Origin": base},
    )


def session_cookie(response: HTTPResponse) -> http.cookies.Morsel[str]:
    for line in response.headers.get_list("Set-Cookie"):
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        jar.load(line)
        if "__Host-sid" in jar:
            return jar["__Host-sid"]
    raise AssertionError(f"no session cookie in {response.headers.get_list('Set-Cookie')}")


@pytest.mark.gen_test(timeout=60)
async def test_login_sets_a_host_prefixed_secure_cookie_valid_on_every_process(client, deployment):
    r = await login(client, deployment)
    assert r.code == 200, r.body
    morsel = session_cookie(r)
    assert morsel["secure"] and morsel["httponly"]
    assert morsel["samesite"] == "Lax" and morsel["path"] == "/" and not morsel["domain"]
    cookie = {"Cookie": f"__Host-sid={morsel.value}"}
    for _ in range(6):
        r = await fetch(client, deployment.https + "/api/balance", headers=cookie)
        assert (r.code, json.loads(r.body)) == (200, {"balance": 12})
    # Straight to each process, bypassing nginx's choice: both know the session.
    for app in deployment.apps:
        r = await fetch(client, app.base_url + "/api/balance", headers=cookie)
        assert (r.code, json.loads(r.body)) == (200, {"balance": 12}), app.port


@pytest.mark.gen_test(timeout=60)
async def test_security_headers_on_success_not_found_and_server_errors(client, deployment):
    responses = [
        await fetch(client, deployment.https + "/api/login"),
        await fetch(client, deployment.https + "/"),
        await fetch(client, deployment.https + "/api/nope"),
        await fetch(client, deployment.https + "/static-nope.css"),
    ]
    deployment.memcached.stop()
    try:
        responses.append(await fetch(client, deployment.https + "/readyz"))
    finally:
        deployment.memcached.start()
    assert [r.code for r in responses] == [200, 200, 404, 200, 503]
    for r in responses:
        hsts = r.headers["Strict-Transport-Security"]
        assert "includeSubDomains" in hsts
        assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
        assert r.headers.get_list("X-Content-Type-Options") == ["nosniff"]
        assert r.headers["Server"] == "nginx"
    deadline = time.monotonic() + 10
    while (await fetch(client, deployment.https + "/readyz")).code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


@pytest.mark.gen_test(timeout=60)
async def test_plain_http_redirects_pages_and_refuses_the_api(client, deployment):
    r = await fetch(client, deployment.http + "/some/page?x=1")
    assert r.code == 301
    assert r.headers["Location"] == deployment.https + "/some/page?x=1"
    for method, path in (("GET", "/api"), ("GET", "/api/login"), ("POST", "/api/login"), ("GET", "/readyz")):
        r = await fetch(
            client,
            deployment.http + path,
            method=method,
            body=json.dumps(FAST_USER) if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        assert r.code == 403, path
        assert "Location" not in r.headers
        assert "Set-Cookie" not in r.headers
        assert json.loads(r.body) == {"errorMessage": "HTTPS is required."}
        assert r.headers.get_list("X-Content-Type-Options") == ["nosniff"]
        assert (r.headers["X-Frame-Options"], r.headers["Referrer-Policy"]) == ("DENY", "same-origin")
    # certbot's challenges stay on plain HTTP (renewals included): not redirected.
    r = await fetch(client, deployment.http + "/.well-known/acme-challenge/token")
    assert r.code == 404 and "Location" not in r.headers


@pytest.mark.gen_test(timeout=60)
async def test_spoofed_forwarding_headers_change_nothing(client, deployment):
    marker = uuid.uuid4().hex
    spoof = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "X-Scheme": "http",
        "X-Forwarded-Proto": "http",
        "Forwarded": "for=6.6.6.6;proto=http",
    }
    r = await fetch(client, deployment.https + f"/api/{marker}", headers=spoof)
    assert r.code == 404
    # The app still sees https: a same-origin POST with the https Origin passes its CSRF check.
    r = await fetch(
        client,
        deployment.https + "/api/login",
        method="POST",
        body=json.dumps(FAST_USER),
        headers={**spoof, "Content-Type": "application/json", "Origin": deployment.https},
    )
    assert r.code == 200
    outputs = []
    for app in deployment.apps:
        # The line is on one of the two processes; wait for the buffered log of each.
        try:
            outputs.append(app.wait_for_output(marker, timeout=1.5))
        except AssertionError:
            outputs.append(app.output)
    lines = [json.loads(line) for text in outputs for line in text.splitlines() if marker in line]
    assert len(lines) == 1
    assert lines[0]["client"] == "127.0.0.1"
    assert lines[0]["scheme"] == "https"
    assert lines[0]["status"] == 404


def login_counts(memcached: Memcached) -> int:
    """How many counter increments memcached has answered (each login attempt makes three)."""
    stats = memcached._exchange(b"stats\r\n", b"END\r\n").decode().split()
    return sum(int(stats[i + 2]) for i, word in enumerate(stats) if word == "STAT" and stats[i + 1] in COUNTS)


COUNTS = ("incr_hits", "incr_misses")


def test_app_processes_listen_on_loopback_only(deployment):
    for app in deployment.apps:
        addresses = listening_addresses(app.pid)
        assert addresses, app.pid
        for address, port in addresses:
            assert address == "127.0.0.1", (address, port)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_lets_a_slow_request_finish_and_keeps_its_session(client, deployment, stop_signal):
    with AppProcess(deployment.env, args=("--env=prod",)) as draining:
        counted = login_counts(deployment.memcached)
        pending = asyncio.ensure_future(login(client, deployment, SLOW_USER, base=draining.base_url))
        # The login is in flight once its attempt is counted: its scrypt check starts right after.
        for _ in range(1000):
            if login_counts(deployment.memcached) >= counted + 3:
                break
            await asyncio.sleep(0.01)
        draining.send_signal(stop_signal)
        r = await pending
        assert r.code == 200, r.body
        cookie = {"Cookie": f"__Host-sid={session_cookie(r).value}"}
        assert draining.wait() == 0
        log = draining.output
        assert "draining 1 request" in log
    # The session written during the drain is there for the other processes.
    r = await fetch(client, deployment.https + "/api/login", headers=cookie)
    assert json.loads(r.body) == {"loggedIn": True}


@pytest.mark.gen_test(timeout=60)
async def test_logs_hold_no_session_id_but_its_hash(client, deployment):
    r = await login(client, deployment)
    session_value = session_cookie(r).value
    await fetch(client, deployment.https + "/api/balance", headers={"Cookie": f"__Host-sid={session_value}"})
    await fetch(
        client,
        deployment.https + "/api/logout",
        method="POST",
        body="{}",
        headers={
            "Cookie": f"__Host-sid={session_value}",
            "Content-Type": "application/json",
            "Origin": deployment.https,
        },
    )
    raw_id = base64.b64decode(session_value.strip('"').split("|")[4].split(":", 1)[1]).decode()
    logs = "".join(app.output for app in deployment.apps) + (deployment.nginx.dir / "logs" / "access.log").read_text()
    assert raw_id not in logs
    assert session_value not in logs
    events = [json.loads(line) for app in deployment.apps for line in app.output.splitlines() if line.startswith("{")]
    kinds = {e.get("event") for e in events}
    assert {"access", "session.regenerated", "session.destroyed"} <= kinds
    assert all(len(e["session"]) in (1, 12) for e in events if "session" in e)


def test_a_draining_process_closes_kept_alive_connections_after_answering(deployment):
    with AppProcess(deployment.env, args=("--env=prod",)) as draining:
        kept = http.client.HTTPConnection("127.0.0.1", draining.port, timeout=10)
        kept.request("GET", "/livez")
        first = kept.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection") != "close"
        # A slow login keeps the process draining while the kept-alive connection is used again.
        slow = http.client.HTTPConnection("127.0.0.1", draining.port, timeout=10)
        body = json.dumps(SLOW_USER)
        headers = {"Content-Type": "application/json", "Origin": draining.base_url}
        counted = login_counts(deployment.memcached)
        worker = threading.Thread(target=lambda: slow.request("POST", "/api/login", body, headers))
        worker.start()
        for _ in range(1000):  # until the login is in flight (its attempt counted)
            if login_counts(deployment.memcached) >= counted + 3:
                break
            time.sleep(0.01)
        draining.send_signal(signal.SIGTERM)
        draining.wait_for_output("stopping: no new connections")
        kept.request("GET", "/livez")
        second = kept.getresponse()
        second.read()
        assert second.status == 200
        assert second.getheader("Connection") == "close"
        worker.join(10)
        assert slow.getresponse().status == 200
        assert draining.wait() == 0


def test_requests_pipelined_behind_a_draining_process_s_last_answer_are_not_run(deployment):
    with AppProcess(deployment.env, args=("--env=prod",)) as draining:
        body = json.dumps(SLOW_USER)
        host = f"Host: 127.0.0.1:{draining.port}\r\n"
        login_request = (
            f"POST /api/login HTTP/1.1\r\n{host}Origin: {draining.base_url}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )
        behind = f"GET /api HTTP/1.1\r\n{host}\r\n" * 3
        counted = login_counts(deployment.memcached)
        with socket.create_connection(("127.0.0.1", draining.port), timeout=10) as sock:
            sock.sendall((login_request + behind).encode())
            for _ in range(1000):  # until the login is in flight (its attempt counted)
                if login_counts(deployment.memcached) >= counted + 3:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the login's attempt was never counted")
            draining.send_signal(signal.SIGTERM)
            answers = b""
            while chunk := sock.recv(65536):
                answers += chunk
        assert draining.wait() == 0
        log = draining.output
    # The login was the connection's last answer; what the client sent behind it never ran.
    assert answers.startswith(b"HTTP/1.1 200 ") and answers.count(b"HTTP/1.1 ") == 1, answers
    assert b"Connection: close" in answers
    assert "draining 1 request" in log and "GET /api " not in log, log


@pytest.mark.gen_test(timeout=60)
async def test_requests_refused_before_their_body_is_read_keep_both_processes_in_rotation(client, deployment):
    # The app answers a declared size past its limit (413) and a foreign Origin (403) from the
    # headers. Closing with the body unread would reset the connection: nginx then answered 502
    # and took the process out of its rotation, so a few such requests a second kept every
    # process out (503 "no live upstreams" for everyone).
    error_log = deployment.nginx.dir / "logs" / "error.log"
    logged_before = error_log.read_text()
    big = {"Content-Type": "application/json", "Origin": deployment.https}
    foreign = {"Content-Type": "application/json", "Origin": "https://evil.example"}
    for headers, size, status in ((big, 70_000, 413), (foreign, 20_000, 403)):
        for _ in range(10):
            r = await fetch(client, deployment.https + "/api/balance", method="POST", body="a" * size, headers=headers)
            assert r.code == status and "errorMessage" in json.loads(r.body), (r.code, r.body[:200])
    r = await login(client, deployment)
    assert r.code == 200
    logged = error_log.read_text()[len(logged_before) :]
    assert "temporarily disabled" not in logged and "reset by peer" not in logged, logged


@pytest.mark.gen_test(timeout=60)
async def test_nginx_s_own_answers_keep_to_the_site_s_name_and_the_api_s_error_shape(client, deployment):
    # The redirect goes to the site's name, whatever Host the client sent.
    r = await fetch(client, deployment.http + "/page", headers={"Host": "evil.example"})
    assert r.code == 301 and r.headers["Location"] == deployment.https + "/page", r.headers.get("Location")
    # Requests nginx refuses itself answer in the API's JSON error shape.
    for method, path, headers, status in (
        ("GET", "/api/" + "x" * 9000, {}, 414),
        ("GET", "/api", {"Cookie": "x=" + "y" * 9000}, 400),
        ("TRACE", "/api", {}, 405),
    ):
        r = await client.fetch(
            deployment.https + path, method=method, headers=headers, raise_error=False, allow_nonstandard_methods=True
        )
        assert r.code == status, (method, path[:20], r.code)
        assert "errorMessage" in json.loads(r.body), r.body[:200]


@pytest.mark.gen_test(timeout=60)
async def test_the_static_files_hide_dotfiles_and_links_and_are_revalidated(client, deployment):
    static = deployment.nginx.dir.parent / "static"
    (static / ".env").write_text("SECRET=1\n")
    (static / "link.txt").symlink_to("/etc/hostname")
    r = await fetch(client, deployment.https + "/index.html")
    assert r.code == 200 and r.headers["Cache-Control"] == "no-cache"
    assert r.headers.get_list("X-Frame-Options") == ["DENY"]  # the site's headers are kept there
    r = await fetch(client, deployment.https + "/.env")
    assert r.code == 404 and b"SECRET" not in r.body
    # The API's own paths are the app's to answer, dotted or not.
    r = await fetch(client, deployment.https + "/api/.env")
    assert r.code == 404 and json.loads(r.body) == {"errorMessage": "Not found."}
    # A link is not followed: the path is as unknown as any other, so the page is the client's.
    r = await fetch(client, deployment.https + "/link.txt")
    assert r.body == (static / "index.html").read_bytes()
