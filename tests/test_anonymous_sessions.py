"""Anonymous sessions never displace logged-in ones: eviction order, a shorter idle timeout, and a
budget of new sessions per client address. Through HTTP; memcached for real where it matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from handlers.app import SessionApplication
from settings import Settings, load_settings
from stores.base import new_record
from stores.memcached import MemcachedStore
from stores.memory import MemoryStore
from stores.sealing import record_keys
from stores.users import UserDirectory
from tests.conftest import Browser, FakeClock, body_json, serve, test_secret
from tests.services import Memcached

BOUND = 50


async def cookieless_hits(http_client: AsyncHTTPClient, base_url: str, count: int, batch: int = 50) -> list[str]:
    """``count`` cookieless ``GET /api`` (a new browser each): their texts, after checking each is 200."""
    texts: list[str] = []

    async def hit() -> None:
        r = await http_client.fetch(base_url + "/api", raise_error=False)
        assert r.code == 200
        texts.append(r.body.decode())

    for start in range(0, count, batch):
        await asyncio.gather(*(hit() for _ in range(min(batch, count - start))))
    return texts


async def logged_in(browser: Browser) -> bool:
    loggedin: bool = body_json(await browser.get("/api/login"))["loggedIn"]
    return loggedin


@pytest.mark.gen_test
async def test_memory_store_evicts_anonymous_records_before_logged_in_ones(clock: FakeClock):
    store = MemoryStore(3, clock=clock)
    await store.create("user", new_record(clock(), privileged=True), ttl=60)
    for name in ("a", "b", "c", "d"):
        await store.create(name, new_record(clock()), ttl=60)
    # The logged-in record is the least recently used, yet the anonymous ones went first.
    assert await store.load("user") is not None
    assert [await store.load(n) is not None for n in "abcd"] == [False, False, True, True]
    # Only when every record is logged in does the oldest of those go.
    for name in ("u2", "u3", "u4"):
        await store.create(name, new_record(clock(), privileged=True), ttl=60)
    assert len(store) == 3
    assert await store.load("user") is None


@pytest.mark.gen_test
async def test_sweep_frees_expired_anonymous_records_behind_a_live_logged_in_one(clock: FakeClock):
    store = MemoryStore(10, clock=clock)
    await store.create("user", new_record(clock(), privileged=True), ttl=1800)
    for name in "abc":
        await store.create(name, new_record(clock()), ttl=300)
    clock.advance(300)
    assert await store.sweep() == 3
    assert len(store) == 1


@pytest.fixture
def small_store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(BOUND, clock=clock)


def app_on(http_server: Any, config: Settings, store: Any, users: UserDirectory, clock: FakeClock, **changes: Any):
    return serve(http_server, SessionApplication(config.replace(**changes), store, users, clock=clock))


@pytest.mark.gen_test(timeout=120)
async def test_a_logged_in_user_stays_logged_in_through_a_flood_of_cookieless_requests(
    http_server, http_client, base_url, config, small_store, users, clock, browser: Browser
):
    # No creation budget in the way: the eviction order alone protects the user.
    app_on(http_server, config, small_store, users, clock, store_options={"memory": {"max_sessions": BOUND}})
    assert (await browser.login()).code == 200
    texts = await cookieless_hits(http_client, base_url, 20 * BOUND)
    assert set(texts) == {"Welcome to this page for the first time!"}
    assert len(small_store) == BOUND
    assert await logged_in(browser)
    assert body_json(await browser.get("/api/balance")) == {"balance": 53762}


@pytest.mark.gen_test(timeout=120)
async def test_past_the_new_session_budget_requests_are_answered_but_not_stored(
    http_server, http_client, base_url, config, store, users, clock: FakeClock, browser: Browser, caplog
):
    app_on(http_server, config, store, users, clock, new_sessions_per_address=20, new_sessions_window=60)
    texts = await cookieless_hits(http_client, base_url, 200)
    assert set(texts) == {"Welcome to this page for the first time!"}
    assert len(store) == 20
    budget_lines = [r for r in caplog.records if getattr(r, "event", None) == "session.budget"]
    assert len(budget_lines) == 1  # once per window, not per request
    # A browser past the budget gets no cookie, so it has nothing to lose; a login still works
    # (logins have budgets of their own) and the logged-in session is stored.
    r = await browser.get("/api")
    assert "sid" not in browser.cookies
    assert r.code == 200
    assert (await browser.login()).code == 200
    assert await logged_in(browser)
    assert len(store) == 21
    # The window ends: new sessions are stored again.
    clock.advance(60)
    await browser.post("/api/logout", {})
    await browser.get("/api")
    assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"


@pytest.mark.gen_test
async def test_anonymous_sessions_end_after_the_shorter_idle_timeout(
    http_server, config, store, users, clock: FakeClock, make_browser
):
    app = app_on(http_server, config, store, users, clock)
    assert app.config.anonymous_idle_timeout == 300 < app.config.idle_timeout
    anonymous, user = make_browser(), make_browser()
    await anonymous.get("/api")
    await user.get("/api")
    await user.login()
    clock.advance(300)
    assert (await anonymous.get("/api")).body.decode() == "Welcome to this page for the first time!"
    assert await logged_in(user)
    assert (await user.get("/api")).body.decode() == "You visited this page 2 times"
    # After logout the session is anonymous again, with the short timeout.
    await user.post("/api/logout", {})
    await user.get("/api")
    clock.advance(300)
    assert (await user.get("/api")).body.decode() == "Welcome to this page for the first time!"


# memcached --------------------------------------------------------------------------------------


@pytest.fixture
def small_memcached() -> Iterator[Memcached]:
    # -m 8: the smallest memory the issue's flood filled; the later -m wins over services' -m 64.
    with Memcached("-m", "8") as server:
        yield server


def memcached_app(http_server: Any, server: Memcached, users: UserDirectory, clock: FakeClock, **changes: Any):
    config = load_settings("test", environ={}, session_secrets=(test_secret(),), store="memcached", **changes)
    keys = record_keys(config.session_secrets)
    store = MemcachedStore([server.address], record_keys=keys, timeout=0.3, connect_timeout=0.3, threads=4)
    return serve(http_server, SessionApplication(config, store, users, clock=clock))


@pytest.mark.gen_test(timeout=120)
async def test_on_memcached_anonymous_records_carry_the_short_ttl_and_the_creation_budget(
    http_server, http_client, base_url, small_memcached: Memcached, users, clock, make_browser
):
    app = memcached_app(http_server, small_memcached, users, clock, new_sessions_per_address=100)
    store = app.store
    assert isinstance(store, MemcachedStore)
    try:
        user, anonymous = make_browser(), make_browser()
        await user.login()
        await anonymous.get("/api")
        ttls = {}
        for name, browser in (("user", user), ("anonymous", anonymous)):
            session_id, _ = app.sessions.verify(browser.cookies["sid"])
            assert session_id is not None
            ttls[name] = small_memcached.ttl(store.key(session_id))
        assert ttls["user"] is not None and 1795 <= ttls["user"] <= 1800
        assert ttls["anonymous"] is not None and 295 <= ttls["anonymous"] <= 300
        # One address, 3,000 cookieless hits: only its budget of sessions is stored.
        texts = await cookieless_hits(http_client, base_url, 3000)
        assert set(texts) == {"Welcome to this page for the first time!"}
        sessions = [k for k in small_memcached.stored_keys() if not k.startswith("session:count:")]
        assert len(sessions) == 100 + 1  # the budget (the anonymous browser's included) and the user
        assert await logged_in(user)
    finally:
        await store.close()
