"""The reference app's API, endpoint by endpoint, with its faults fixed."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from handlers.app import SessionApplication
from stores.users import DEMO_USERS_FILE, UserDirectory
from tests.conftest import LILY, MAX, Browser, CountingStore, body_json


@pytest.mark.gen_test
async def test_page_counter_counts_this_browsers_visits(make_browser):
    first, second = make_browser(), make_browser()
    r = await first.get("/api")
    assert r.code == 200
    assert r.body.decode() == "Welcome to this page for the first time!"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert (await first.get("/api")).body.decode() == "You visited this page 2 times"
    assert (await first.get("/api")).body.decode() == "You visited this page 3 times"
    # Another browser has its own count.
    assert (await second.get("/api")).body.decode() == "Welcome to this page for the first time!"


@pytest.mark.gen_test
async def test_login_returns_the_user_and_a_session(browser: Browser):
    assert body_json(await browser.get("/api/login")) == {"loggedIn": False}
    r = await browser.login()
    assert r.code == 200
    assert body_json(r) == {"user": {"email": "max@gmail.com", "name": "Max Miller"}}
    assert "sid" in browser.cookies
    assert body_json(await browser.get("/api/login")) == {"loggedIn": True}
    assert body_json(await browser.get("/api/balance")) == {"balance": 53762}


@pytest.mark.gen_test
async def test_each_demo_user_sees_their_own_balance(make_browser):
    max_browser, lily_browser = make_browser(), make_browser()
    await max_browser.login(MAX)
    r = await lily_browser.login(LILY)
    assert body_json(r) == {"user": {"email": "lily@gmail.com", "name": "Lily Walter"}}
    assert body_json(await lily_browser.get("/api/balance")) == {"balance": 4826}
    assert body_json(await max_browser.get("/api/balance")) == {"balance": 53762}


@pytest.mark.gen_test
async def test_email_is_matched_case_insensitively(browser: Browser):
    r = await browser.post("/api/login", {"email": " Max@Gmail.com", "password": "1234"})
    assert r.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "credentials",
    [
        {"email": "max@gmail.com", "password": "wrong"},
        {"email": "nobody@example.com", "password": "1234"},
        {"email": "max@gmail.com", "password": ""},
        {"email": "max@gmail.com", "password": "1235"},  # another user's password
    ],
)
async def test_bad_credentials_get_401_permission_denied(browser: Browser, store: CountingStore, credentials):
    r = await browser.post("/api/login", credentials)
    assert r.code == 401
    assert body_json(r) == {"errorMessage": "Permission denied!"}
    assert "sid" not in browser.cookies
    assert len(store) == 0


@pytest.mark.gen_test(timeout=60)
async def test_unknown_email_and_wrong_password_take_the_same_time(make_browser):
    # Both run one full scrypt; an early return for unknown emails would be ~1000x faster.
    async def timed(credentials: dict[str, str]) -> float:
        started = time.perf_counter()
        r = await make_browser().post("/api/login", credentials)
        assert r.code == 401
        return time.perf_counter() - started

    wrong = [await timed({"email": "max@gmail.com", "password": "x"}) for _ in range(3)]
    unknown = [await timed({"email": "ghost@example.com", "password": "x"}) for _ in range(3)]
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (wrong, unknown)


@pytest.mark.gen_test(timeout=30)
async def test_password_checks_do_not_block_the_event_loop(make_browser):
    # While two logins hash, a sessionless request is answered at once.
    logins = [asyncio.ensure_future(make_browser().login()) for _ in range(2)]
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    r = await make_browser().get("/livez")
    elapsed = time.perf_counter() - started
    assert r.code == 200
    results = await asyncio.gather(*logins)
    assert all(x.code == 200 for x in results)
    assert elapsed < 0.1, elapsed


@pytest.mark.gen_test
async def test_balance_needs_a_login(browser: Browser):
    r = await browser.get("/api/balance")
    assert r.code == 401
    assert body_json(r) == {"errorMessage": "You must be logged in."}


@pytest.mark.gen_test
async def test_logout_ends_the_session(browser: Browser, store: CountingStore):
    await browser.login()
    assert len(store) == 1
    r = await browser.post("/api/logout", {})
    assert r.code == 200
    assert body_json(r) == {}
    assert len(store) == 0
    assert "sid" not in browser.cookies
    assert body_json(await browser.get("/api/login")) == {"loggedIn": False}
    assert (await browser.get("/api/balance")).code == 401


@pytest.mark.gen_test
async def test_logout_when_not_logged_in_is_200(browser: Browser, store: CountingStore):
    r = await browser.post("/api/logout", {})
    assert r.code == 200
    assert body_json(r) == {}
    # Also with no body at all, as curl -X POST sends it.
    r = await browser.fetch("POST", "/api/logout")
    assert r.code == 200
    assert len(store) == 0


@pytest.mark.gen_test
async def test_health_endpoints(browser: Browser):
    r = await browser.get("/livez")
    assert (r.code, body_json(r)) == (200, {"status": "ok"})
    r = await browser.get("/readyz")
    assert (r.code, body_json(r)) == (200, {"status": "ready"})
    assert "Set-Cookie" not in r.headers


@pytest.mark.gen_test
async def test_a_removed_user_is_logged_out(browser: Browser, app: SessionApplication):
    app.users = UserDirectory.from_file(DEMO_USERS_FILE)  # this test's own copy
    await browser.login()
    app.users._users.pop("max@gmail.com")
    assert body_json(await browser.get("/api/login")) == {"loggedIn": False}
    assert (await browser.get("/api/balance")).code == 401
