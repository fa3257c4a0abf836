"""The demo client in real headless Chromium (Debian's), driven by Playwright.

The API runs as ``server.py --env=dev`` in a subprocess; cross-origin tests serve the client,
written for that API by deploy/render_client.py, from http://localhost:4736 (the reference
Angular dev server's origin) and from a disallowed origin.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import test_secret
from tests.services import ROOT, AppProcess, free_port, listening_addresses, require_binary, wait_for_port

sys.path.insert(0, str(ROOT / "deploy"))
from render_client import render as render_client

pytestmark = pytest.mark.slow  # Chromium and server processes

DEV_CLIENT_PORT = 4736  # the origin the dev settings allow, as the reference app did
README_PORT = 3000  # the README's address for the demo client, http://127.0.0.1:3000/
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # The tests' servers listen on 127.0.0.1 only; without this, Chromium tries localhost's ::1
    # first and reaches whatever else listens on that port there (another project's dev server).
    "--host-resolver-rules=MAP localhost 127.0.0.1",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = require_binary("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def api() -> Iterator[AppProcess]:
    with AppProcess({"SESSION_SECRETS": test_secret()}, args=("--env=dev",)) as app:
        yield app


class StaticServer:
    """The client's files served by another server, as an Angular dev server would."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def client_for_api(api: AppProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's files written for the API's origin, as the README has them made."""
    out = tmp_path_factory.mktemp("client")
    render_client(api=api_url(api), out=out)
    return out


@pytest.fixture(scope="module")
def dev_client_server(client_for_api: Path) -> Iterator[StaticServer]:
    try:
        server = StaticServer(DEV_CLIENT_PORT, client_for_api)
    except TimeoutError:
        pytest.fail(f"port {DEV_CLIENT_PORT} is needed for the cross-origin test and is taken")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_client_server(client_for_api: Path) -> Iterator[StaticServer]:
    server = StaticServer(free_port(), client_for_api)
    yield server
    server.stop()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    ctx = chromium.new_context(viewport={"width": 1100, "height": 800})
    yield ctx
    ctx.close()


def api_url(api: AppProcess) -> str:
    return f"http://localhost:{api.port}"


def open_client(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def log_in(page: Page, password: str = "1234", email: str = "max@gmail.com") -> None:
    # Typed in full: only the dev server's own page comes prefilled.
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#login-button")


def see_balance_and_stay_logged_in_after_reload(page: Page) -> None:
    """After a login: the welcome, the balance on the button, and still logged in after a reload."""
    expect(page.locator("#welcome")).to_have_text("Welcome, Max Miller!")
    page.click("#balance-button")
    expect(page.locator("#balance")).to_have_text("Balance: 53,762")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#logged-in")).to_be_visible()
    expect(page.locator("#logged-out")).to_be_hidden()


def test_same_origin_flow(context, api: AppProcess):
    page = context.new_page()
    open_client(page, api_url(api) + "/")
    expect(page.locator("#logged-out")).to_be_visible()
    # The dev server's page comes prefilled with the demo user.
    expect(page.locator("#email")).to_have_value("max@gmail.com")
    expect(page.locator("#password")).to_have_value("1234")
    log_in(page)
    see_balance_and_stay_logged_in_after_reload(page)
    page.click("#logout-button")
    expect(page.locator("#logged-out")).to_be_visible()
    page.click("#balance-button")
    expect(page.locator("#balance")).to_have_text("You must be logged in.")
    expect(page.locator("#error")).to_have_text("You must be logged in.")


def test_session_cookie_is_invisible_to_page_script(context, api: AppProcess):
    page = context.new_page()
    open_client(page, api_url(api) + "/")
    log_in(page)
    expect(page.locator("#welcome")).to_be_visible()
    script_cookies = page.evaluate("document.cookie")
    assert "XSRF-TOKEN=" in script_cookies
    assert "sid=" not in script_cookies
    session = [c for c in context.cookies() if c["name"] == "sid"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Lax"


def test_same_origin_calls_echo_the_xsrf_cookie(context, api: AppProcess):
    page = context.new_page()
    open_client(page, api_url(api) + "/")
    token = next(c["value"] for c in context.cookies() if c["name"] == "XSRF-TOKEN")
    with page.expect_request(lambda r: r.url.endswith("/api/login") and r.method == "POST") as info:
        log_in(page)
    assert info.value.headers.get("x-xsrf-token") == token
    expect(page.locator("#welcome")).to_have_text("Welcome, Max Miller!")


def test_wrong_password_shows_permission_denied(context, api: AppProcess):
    page = context.new_page()
    open_client(page, api_url(api) + "/")
    log_in(page, password="wrong")
    expect(page.locator("#error")).to_have_text("Permission denied!")
    expect(page.locator("#logged-out")).to_be_visible()


def test_page_counter_counts_per_browser(chromium, api: AppProcess):
    first, second = chromium.new_context(), chromium.new_context()
    try:
        page = first.new_page()
        open_client(page, api_url(api) + "/")
        expect(page.locator("#counter")).to_have_text("Welcome to this page for the first time!")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#counter")).to_have_text("You visited this page 2 times")
        other = second.new_page()
        open_client(other, api_url(api) + "/")
        expect(other.locator("#counter")).to_have_text("Welcome to this page for the first time!")
    finally:
        first.close()
        second.close()


def test_cross_origin_from_the_dev_client_origin(context, api: AppProcess, dev_client_server: StaticServer):
    page = context.new_page()
    open_client(page, f"{dev_client_server.origin}/")
    expect(page.locator("#api-base")).to_have_text(api_url(api))
    expect(page.locator("#logged-out")).to_be_visible()
    expect(page.locator("#email")).to_have_value("")
    expect(page.locator("#counter")).to_have_text("Welcome to this page for the first time!")
    with page.expect_request(lambda r: r.url.endswith("/api/login") and r.method == "POST") as login:
        log_in(page)
    see_balance_and_stay_logged_in_after_reload(page)
    with page.expect_request(lambda r: r.url.endswith("/api/logout") and r.method == "POST") as logout:
        page.click("#logout-button")
    expect(page.locator("#logged-out")).to_be_visible()
    # Like the reference Angular client: credentials, the page's Origin, no XSRF header.
    for request in (login.value, logout.value):
        headers = request.all_headers()
        assert headers.get("origin") == dev_client_server.origin
        assert "x-xsrf-token" not in headers


def test_a_disallowed_origin_is_blocked_by_the_browser(context, api: AppProcess, other_client_server: StaticServer):
    page = context.new_page()
    open_client(page, f"{other_client_server.origin}/")
    expect(page.locator("#error")).to_contain_text("Cannot reach the server")
    log_in(page)
    expect(page.locator("#error")).to_contain_text("Cannot reach the server")
    expect(page.locator("#logged-in")).to_be_hidden()


def test_screenshots_of_the_logged_in_state(chromium, api: AppProcess):
    update_readme = os.environ.get("UPDATE_README_SCREENSHOT") == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {"logged-in.png": {"width": 1100, "height": 760}, "logged-in-phone.png": {"width": 390, "height": 760}}
    with contextlib.ExitStack() as stack:
        server = api
        if update_readme:
            # The README's copy shows, in the page's footer, the address the README gives.
            server = stack.enter_context(AppProcess({"SESSION_SECRETS": test_secret()}, ("--env=dev",), README_PORT))
            # Not another program's server on that port answering in its place.
            assert ("127.0.0.1", README_PORT) in listening_addresses(server.pid), f"port {README_PORT} is taken"
        for name, viewport in shots.items():
            ctx = stack.enter_context(contextlib.closing(chromium.new_context(viewport=viewport)))
            page = ctx.new_page()
            open_client(page, server.base_url + "/")
            log_in(page)
            expect(page.locator("#welcome")).to_be_visible()
            page.click("#balance-button")
            expect(page.locator("#balance")).to_contain_text("Balance")
            path = ARTIFACTS / name
            page.screenshot(path=str(path))
            data = Path(path).read_bytes()
            assert data.startswith(b"\x89PNG") and len(data) > 5_000
    if update_readme:
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "demo-client.png").write_bytes((ARTIFACTS / "logged-in.png").read_bytes())
