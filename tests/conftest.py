"""Shared fixtures: a fake clock, the app on the memory store, and a cookie-keeping client.

Handler tests go through real HTTP (pytest-tornado starts the app on a free port).
"""

from __future__ import annotations

import http.cookies
import json
import secrets
from collections.abc import Sequence
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from handlers.app import SessionApplication
from settings import Settings, load_settings
from stores.base import Loaded, Operation, Record
from stores.memory import MemoryStore
from stores.users import DEMO_USERS_FILE, UserDirectory, hash_password

START = 1_800_000_000.0
MAX = {"email": "max@gmail.com", "password": "1234"}
LILY = {"email": "lily@gmail.com", "password": "1235"}


class FakeClock:
    """A clock the test moves by hand, so timeout tests never sleep."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryStore):
    """The real memory store, counting the calls made to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    async def load(self, session_id: str) -> Loaded | None:
        self.calls.append("load")
        return await super().load(session_id)

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        self.calls.append("create")
        return await super().create(session_id, record, ttl)

    async def update(
        self, session_id: str, operations: Sequence[Operation], now: float, ttl: float, loaded: Loaded | None = None
    ) -> Record | None:
        self.calls.append("update")
        return await super().update(session_id, operations, now, ttl, loaded)

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        self.calls.append("touch")
        return await super().touch(session_id, now, ttl, loaded)

    async def delete(self, session_id: str) -> None:
        self.calls.append("delete")
        await super().delete(session_id)


def test_secret() -> str:
    """A fresh random secret: no fixed secret ships in the test suite."""
    return secrets.token_urlsafe(32)


test_secret.__test__ = False  # type: ignore[attr-defined]


# Fixtures that start a memcached process (tests/services.Memcached) for the test using them.
MEMCACHED_FIXTURES = frozenset({"memcached", "small_memcached", "tls_memcached"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that starts memcached is in the slow tier with the other process tests.
    for item in items:
        starts_memcached = MEMCACHED_FIXTURES & set(getattr(item, "fixturenames", ()))
        if (item.get_closest_marker("memcached") or starts_memcached) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config() -> Settings:
    return load_settings("test", environ={}, session_secrets=(test_secret(),))


@pytest.fixture
def store(config: Settings, clock: FakeClock) -> CountingStore:
    return CountingStore(config.store_options["memory"]["max_sessions"], clock=clock)


# scrypt's cheapest cost the users file accepts: a login's check takes a millisecond.
CHEAP_HASH_COST = (10, 8, 1)


@pytest.fixture(scope="session")
def users() -> UserDirectory:
    """The demo users with their documented passwords, hashed at `CHEAP_HASH_COST` instead of the
    shipped file's cost (a tenth of a second a login), so the many logins of the fast tier stay
    fast. Tests about what hashing costs use DEMO_USERS_FILE itself."""
    passwords = {MAX["email"]: MAX["password"], LILY["email"]: LILY["password"]}
    entries = [
        {**entry, "password_hash": hash_password(passwords[entry["email"]], cost=CHEAP_HASH_COST)}
        for entry in json.loads(DEMO_USERS_FILE.read_text())
    ]
    return UserDirectory(entries)


@pytest.fixture
def app(config: Settings, store: CountingStore, users: UserDirectory, clock: FakeClock) -> SessionApplication:
    return SessionApplication(config, store, users, clock=clock)


class Browser:
    """Talks to the app like one browser profile: keeps cookies, sends Origin on unsafe methods.

    ``origin`` is the page's origin; by default the app's own (a same-origin page).
    """

    def __init__(self, http_client: AsyncHTTPClient, base_url: str, origin: str | None = "same") -> None:
        self.client = http_client
        self.base_url = base_url
        self.origin = base_url if origin == "same" else origin
        self.cookies: dict[str, str] = {}
        self.last_set_cookies: dict[str, http.cookies.Morsel[str]] = {}

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        send_origin: bool | None = None,
    ) -> HTTPResponse:
        all_headers: dict[str, str] = {}
        if self.cookies:
            all_headers["Cookie"] = self.cookie_header()
        unsafe = method in ("POST", "PUT", "PATCH", "DELETE")
        if (send_origin if send_origin is not None else unsafe) and self.origin:
            all_headers["Origin"] = self.origin
        if json_body is not None:
            body = json.dumps(json_body)
            all_headers["Content-Type"] = "application/json"
        if body is None and unsafe:
            body = b""
        all_headers.update(headers or {})
        response = await self.client.fetch(
            self.base_url + path,
            method=method,
            body=body,
            headers=all_headers,
            raise_error=False,
            follow_redirects=False,
            allow_nonstandard_methods=True,
        )
        self.last_set_cookies = {}
        for line in response.headers.get_list("Set-Cookie"):
            jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                self.last_set_cookies[name] = morsel
                if morsel.value == "" or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response

    async def get(self, path: str, **kwargs: Any) -> HTTPResponse:
        return await self.fetch("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> HTTPResponse:
        return await self.fetch("POST", path, json_body=json_body, **kwargs)

    async def login(self, credentials: dict[str, str] = MAX) -> HTTPResponse:
        return await self.post("/api/login", credentials)


def body_json(response: HTTPResponse) -> Any:
    return json.loads(response.body)


@pytest.fixture
def browser(http_client: AsyncHTTPClient, base_url: str) -> Browser:
    return Browser(http_client, base_url)


@pytest.fixture
def make_browser(http_client: AsyncHTTPClient, base_url: str) -> Any:
    def make(origin: str | None = "same") -> Browser:
        return Browser(http_client, base_url, origin)

    return make


def serve(http_server: Any, app: SessionApplication) -> SessionApplication:
    """Point the running test server at ``app`` (for tests that need their own settings)."""
    http_server.request_callback = app
    return app
