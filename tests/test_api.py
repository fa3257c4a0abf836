"""The reference app's API, endpoint by endpoint, with its faults fixed."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from handlers.app import SessionApplication
from stores.users import DEMO_USERS_FILE, UserDirectory, _parse_hash
from tests.conftest import LILY, MAX, Browser, CountingStore, body_json, serve


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
async def test_unknown_email_and_wrong_password_cost_the_same_hash(make_browser, users: UserDirectory):
    # Both run one full scrypt at the users' own cost: an unknown email is checked against a decoy
    # hash of the same parameters, so the two take the same time without timing them.
    before = users.hashes_run
    r = await make_browser().post("/api/login", {"email": "max@gmail.com", "password": "x"})
    assert r.code == 401 and users.hashes_run == before + 1
    r = await make_browser().post("/api/login", {"email": "ghost@example.com", "password": "x"})
    assert r.code == 401 and users.hashes_run == before + 2
    costs = {_parse_hash(password_hash)[:3] for _, password_hash in users._users.values()}
    assert costs == {_parse_hash(users._decoy_hash)[:3]}


@pytest.mark.gen_test(timeout=30)
async def test_password_checks_do_not_block_the_event_loop(http_server, make_browser, config, store, clock):
    # While two logins hash (at the shipped users' cost), a sessionless request is answered:
    # were hashing on the event loop, both logins would be done before /livez could be.
    users = UserDirectory.from_file(DEMO_USERS_FILE)
    serve(http_server, SessionApplication(config, store, users, clock=clock))
    try:
        before = users.hashes_run
        logins = [asyncio.ensure_future(make_browser().login()) for _ in range(2)]
        for _ in range(5000):  # bounded: until both checks have gone to the hashing threads
            if users.hashes_run == before + 2:
                break
            await asyncio.sleep(0.001)
        r = await make_browser().get("/livez")
        assert r.code == 200
        assert not all(login.done() for login in logins)
        results = await asyncio.gather(*logins)
        assert all(x.code == 200 for x in results)
    finally:
        users.close()


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
async def test_logout_with_a_body_not_an_object_is_400_and_ends_nothing(browser: Browser, store: CountingStore):
    await browser.login()
    bodies: list[object] = [[], "x", 1, None]
    for body in bodies:
        r = await browser.post("/api/logout", body=json.dumps(body), headers={"Content-Type": "application/json"})
        assert (r.code, body_json(r)) == (400, {"errorMessage": "Expected a JSON object ({}) or an empty body."})
    assert (await browser.get("/api/balance")).code == 200


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


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/livez", "/readyz"])
async def test_health_endpoints_answer_head_like_get_without_a_body(browser: Browser, path: str):
    got = await browser.get(path)
    head = await browser.fetch("HEAD", path)
    assert (head.code, head.body) == (200, b"")
    assert head.headers["Content-Type"] == got.headers["Content-Type"] == "application/json; charset=UTF-8"


@pytest.mark.gen_test
async def test_an_access_line_keeps_a_bounded_part_of_a_long_path(http_client, base_url, caplog):
    path = "/api/" + "x" * 30_000
    with caplog.at_level(logging.INFO, logger="access"):
        response = await http_client.fetch(base_url + path, raise_error=False)
    assert response.code == 404
    lines = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert len(lines) == 1
    assert len(lines[0].getMessage()) < 400 and len(lines[0].path) < 300
    assert lines[0].path.endswith("(30005 characters)")
