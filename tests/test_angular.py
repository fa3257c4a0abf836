"""The Angular example (examples/angular) built by the Angular CLI and driven in headless Chromium.

Three set-ups, each against the real server, each through the same story:

- ``cross-origin``: ``npm start`` (the dev server on http://localhost:4736) calling the API on
  http://localhost:3000, as the tutorial's client does; both ports are the documented ones.
- ``proxy``: ``npm run start:proxy``, relative URLs forwarded by the dev server (proxy.conf.json).
- ``production``: ``ng build`` served by the deploy's nginx over TLS, on the API's origin, with
  memcached and the prod settings.

Node and npm come from the machine; the example's packages are installed with ``npm ci`` from the
committed lock file when it has changed since the last install.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, expect, sync_playwright

from tests.conftest import test_secret
from tests.services import (
    ROOT,
    AppProcess,
    TestPKI,
    free_port,
    prod_behind_nginx,
    require_binary,
)
from tests.test_browser_e2e import CHROMIUM_FLAGS

sys.path.insert(0, str(ROOT / "deploy"))

pytestmark = [pytest.mark.memcached, pytest.mark.slow]  # an Angular build, Chromium and nginx

EXAMPLE = ROOT / "examples" / "angular"
MIN_NODE = (20, 19)  # Angular 21's engines: ^20.19.0 || ^22.12.0 || >=24.0.0
DEV_SERVER_PORT = 4736  # npm start's port, the origin the dev settings allow
DEV_API_PORT = 3000  # where the development environment and proxy.conf.json send API calls
INSTALL_STAMP = EXAMPLE / "node_modules" / ".installed-lock-sha256"
# The CLI must never stop to ask (analytics, port in use); colours would clutter the logs.
NODE_ENV = {**os.environ, "NG_CLI_ANALYTICS": "false", "NO_COLOR": "1", "FORCE_COLOR": "0"}


def unavailable(message: str) -> NoReturn:
    """Skip: a tool the tests need cannot be had here (fail under CI=true)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def node_version(node: str) -> tuple[int, int]:
    text = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    found = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", text)
    assert found, text
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def example() -> Path:
    """examples/angular with its packages installed (``npm ci`` when the lock file changed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("Node.js and npm are needed to build the Angular example (node or npm not found)")
    major, minor = node_version(node)
    if (major, minor) < MIN_NODE or major in (21, 23) or (major == 22 and minor < 12):
        unavailable(
            f"Node.js {major}.{minor} cannot build the Angular example (Angular 21 needs 20.19+, 22.12+ or 24+)"
        )
    lock_hash = hashlib.sha256((EXAMPLE / "package-lock.json").read_bytes()).hexdigest()
    if not INSTALL_STAMP.is_file() or INSTALL_STAMP.read_text() != lock_hash:
        install = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLE,
            env=NODE_ENV,
            capture_output=True,
            text=True,
        )
        assert install.returncode == 0, f"npm ci failed:\n{install.stdout}\n{install.stderr}"
        INSTALL_STAMP.write_text(lock_hash)
    return EXAMPLE


def claim_port(port: int, wait: float = 90) -> None:
    """Wait for ``port``, which a set-up documents, to be free (other suites hold it for a while)."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"port {port} is needed by the documented Angular set-up and is taken")
        time.sleep(0.5)


class DevServer:
    """An npm script that runs ``ng serve``, in its own process group so that all of it stops."""

    def __init__(self, example: Path, port: int, *npm_args: str) -> None:
        self.port = port
        self.log = Path(tempfile.mkstemp(prefix=f"ng-serve-{port}-", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["npm", *npm_args],
                cwd=example,
                env=NODE_ENV,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://localhost:{port}/", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.stop()
                    raise RuntimeError(f"ng serve did not come up:\n{output}") from None
                time.sleep(0.1)

    def stop(self) -> str:
        """Stop it; what it printed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        output = self.log.read_text(errors="replace") if self.log.exists() else ""
        self.log.unlink(missing_ok=True)
        return output


@pytest.fixture(scope="module")
def dev_api() -> Iterator[AppProcess]:
    """The server with dev settings on the port the development set-ups call."""
    claim_port(DEV_API_PORT)
    with AppProcess({"SESSION_SECRETS": test_secret()}, args=("--env=dev",), port=DEV_API_PORT) as app:
        yield app


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("angular-pki"))


def spki_hash(cert_path: str) -> str:
    """The base64 SHA-256 of the certificate's public key, as Chromium's SPKI allowlist takes it."""
    openssl = require_binary("openssl")
    pem = subprocess.run([openssl, "x509", "-in", cert_path, "-pubkey", "-noout"], capture_output=True, check=True)
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-outform", "DER"], input=pem.stdout, capture_output=True, check=True
    )
    return base64.b64encode(hashlib.sha256(der.stdout).digest()).decode()


@pytest.fixture(scope="module")
def chromium(pki: TestPKI) -> Iterator[Browser]:
    executable = require_binary("chromium")
    # Trust exactly the test server's key, and nothing else the default store does not.
    trust = f"--ignore-certificate-errors-spki-list={spki_hash(pki.server_cert)}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[*CHROMIUM_FLAGS, trust])
        yield browser
        browser.close()


@dataclass(frozen=True)
class Setup:
    name: str
    url: str  # where the page is opened
    api_origin: str  # where its API calls go
    session_cookie: str
    prefilled: bool  # the login form starts with the first demo user (development builds)

    @property
    def same_origin(self) -> bool:
        return self.url.rstrip("/") == self.api_origin


@pytest.fixture(scope="module")
def cross_origin(example: Path, dev_api: AppProcess) -> Iterator[Setup]:
    claim_port(DEV_SERVER_PORT)
    server = DevServer(example, DEV_SERVER_PORT, "start")
    yield Setup("cross-origin", f"http://localhost:{DEV_SERVER_PORT}/", f"http://localhost:{DEV_API_PORT}", "sid", True)
    server.stop()


@pytest.fixture(scope="module")
def proxied(example: Path, dev_api: AppProcess) -> Iterator[Setup]:
    port = free_port()
    server = DevServer(example, port, "run", "start:proxy", "--", f"--port={port}")
    yield Setup("proxy", f"http://localhost:{port}/", f"http://localhost:{port}", "sid", True)
    server.stop()


@pytest.fixture(scope="module")
def production(example: Path, pki: TestPKI, tmp_path_factory) -> Iterator[Setup]:
    """``ng build`` behind the deploy's nginx over TLS, with memcached and a prod app process."""
    root = tmp_path_factory.mktemp("angular-deploy")
    build = subprocess.run(
        [str(example / "node_modules" / ".bin" / "ng"), "build", f"--output-path={root / 'dist'}"],
        cwd=example,
        env=NODE_ENV,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"ng build failed:\n{build.stdout}\n{build.stderr}"
    with prod_behind_nginx(root, pki, root / "dist" / "browser") as origin:
        yield Setup("production", origin + "/", origin, "__Host-sid", False)


@pytest.fixture(scope="module", params=["cross-origin", "proxy", "production"])
def angular(request: pytest.FixtureRequest) -> Setup:
    fixture = {"cross-origin": "cross_origin", "proxy": "proxied", "production": "production"}[request.param]
    result: Setup = request.getfixturevalue(fixture)
    return result


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    ctx = chromium.new_context()
    yield ctx
    ctx.close()


def api_call(setup: Setup, method: str, path: str) -> Callable[[Request], bool]:
    return lambda r: r.method == method and r.url == setup.api_origin + path


def open_app(page: Page, setup: Setup) -> None:
    """Open the app and wait until it knows whether this browser is logged in."""
    page.goto(setup.url)
    expect(page.get_by_role("button", name=re.compile("^Log (in|out)$"))).to_be_visible()


def log_in(page: Page, setup: Setup, password: str = "1234") -> None:
    if not setup.prefilled:
        page.get_by_label("Email").fill("max@gmail.com")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_shows_loading_until_the_server_says_whether_the_browser_is_logged_in(context, angular: Setup):
    page = context.new_page()
    held: list[Route] = []
    page.route(lambda url: url == angular.api_origin + "/api/login", lambda route: held.append(route))
    page.goto(angular.url)
    expect(page.get_by_role("status")).to_have_text("Loading...")
    deadline = time.monotonic() + 30
    while not held:
        assert time.monotonic() < deadline, "the app never asked GET /api/login"
        page.wait_for_timeout(20)
    expect(page.get_by_role("status")).to_have_text("Loading...")
    expect(page.get_by_role("button", name="Log in")).to_have_count(0)
    held[0].continue_()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("status")).to_have_count(0)


def test_login_welcome_balance_reload_and_logout(context, angular: Setup):
    page = context.new_page()
    open_app(page, angular)
    expect(page.get_by_label("Email")).to_have_value("max@gmail.com" if angular.prefilled else "")
    expect(page.get_by_label("Password")).to_have_value("1234" if angular.prefilled else "")
    log_in(page, angular)
    expect(page.get_by_text("Welcome, Max Miller!")).to_be_visible()
    page.get_by_role("button", name="Show balance").click()
    expect(page.get_by_test_id("balance")).to_have_text("Balance: 53,762")
    page.reload()
    expect(page.get_by_text("Welcome back!")).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    page.get_by_role("button", name="Show balance").click()
    expect(page.get_by_test_id("balance")).to_have_text("Balance: 53,762")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.get_by_role("button", name="Show balance").click()
    expect(page.get_by_role("alert")).to_have_text("You must be logged in.")
    page.reload()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_a_wrong_password_shows_the_servers_message(context, angular: Setup):
    page = context.new_page()
    open_app(page, angular)
    log_in(page, angular, password="wrong")
    expect(page.get_by_role("alert")).to_have_text("Permission denied!")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)


def test_each_browser_counts_its_own_visits(chromium, angular: Setup):
    first, second = chromium.new_context(), chromium.new_context()
    try:
        page = first.new_page()
        page.goto(angular.url)
        counter = page.get_by_test_id("counter")
        expect(counter).to_have_text("Welcome to this page for the first time!")
        page.reload()
        expect(counter).to_have_text("You visited this page 2 times")
        other = second.new_page()
        other.goto(angular.url)
        expect(other.get_by_test_id("counter")).to_have_text("Welcome to this page for the first time!")
        page.reload()
        expect(counter).to_have_text("You visited this page 3 times")
    finally:
        first.close()
        second.close()


def test_page_script_never_sees_the_session_cookie(context, angular: Setup):
    page = context.new_page()
    open_app(page, angular)
    log_in(page, angular)
    expect(page.get_by_text("Welcome, Max Miller!")).to_be_visible()
    session = [c for c in context.cookies() if c["name"] == angular.session_cookie]
    assert session and session[0]["httpOnly"], context.cookies()
    script_cookies = page.evaluate("document.cookie")
    assert "XSRF-TOKEN=" in script_cookies
    assert angular.session_cookie + "=" not in script_cookies
    assert session[0]["value"] not in script_cookies


def test_calls_carry_the_xsrf_header_on_one_origin_and_the_origin_across_two(context, angular: Setup):
    page = context.new_page()
    open_app(page, angular)
    with page.expect_request(api_call(angular, "POST", "/api/login")) as login:
        log_in(page, angular)
    expect(page.get_by_text("Welcome, Max Miller!")).to_be_visible()
    with page.expect_request(api_call(angular, "POST", "/api/logout")) as logout:
        page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    for request in (login.value, logout.value):
        headers = request.all_headers()
        assert headers["origin"] == angular.url.rstrip("/")
        if angular.same_origin:
            # Angular's defaults echo the XSRF-TOKEN cookie on relative URLs.
            assert f"XSRF-TOKEN={headers['x-xsrf-token']}" in headers["cookie"].split("; ")
        else:
            # Angular sends no XSRF header to another origin; the server's allowlist admits it.
            assert "x-xsrf-token" not in headers
