"""Session behaviour through HTTP: cookies, ids, rotation, timeouts, laziness, concurrency."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from tornado.web import create_signed_value

from handlers.app import SessionApplication
from handlers.session_manager import CLIENT_CAUSED_EVENTS
from handlers.session_object import Session
from settings import Settings, key_version
from stores.base import Operation, Record, is_privileged
from stores.memory import MemoryStore
from tests.conftest import LILY, Browser, CountingStore, FakeClock, body_json, serve, test_secret


def stored_ids(store: MemoryStore) -> set[str]:
    return set(store._records)


def cookie_id(browser: Browser, app: SessionApplication) -> str | None:
    session_id, _ = app.sessions.verify(browser.cookies.get("sid"))
    return session_id


@pytest.mark.gen_test
async def test_cookie_attributes_in_dev_and_test(browser: Browser):
    await browser.get("/api")
    morsel = browser.last_set_cookies["sid"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert not morsel["secure"]
    assert not morsel["domain"]
    assert not morsel["expires"] and not morsel["max-age"]  # a browser-session cookie


@pytest.mark.gen_test
async def test_cookie_holds_only_a_signed_256_bit_id(browser: Browser, app: SessionApplication, store: MemoryStore):
    await browser.get("/api")
    raw = browser.cookies["sid"].strip('"')
    assert raw.startswith("2|")  # Tornado v2 signature
    session_id = cookie_id(browser, app)
    assert session_id is not None
    assert len(base64.urlsafe_b64decode(session_id + "=")) == 32
    assert stored_ids(store) == {session_id}
    assert "page_views" not in raw


@pytest.mark.gen_test
async def test_login_regenerates_the_id_so_the_old_one_is_dead(make_browser, app: SessionApplication, store):
    victim = make_browser()
    await victim.get("/api")  # an anonymous session an attacker might have planted
    planted = dict(victim.cookies)
    pre_login_id = cookie_id(victim, app)
    await victim.login()
    post_login_id = cookie_id(victim, app)
    assert post_login_id and post_login_id != pre_login_id
    assert pre_login_id not in stored_ids(store)
    # Data is kept across the new id.
    assert (await victim.get("/api")).body.decode() == "You visited this page 2 times"
    # The attacker holding the pre-login cookie is not logged in.
    attacker = make_browser()
    attacker.cookies.update(planted)
    assert body_json(await attacker.get("/api/login")) == {"loggedIn": False}
    assert (await attacker.get("/api/balance")).code == 401


@pytest.mark.gen_test
async def test_another_user_logging_in_on_a_logged_in_session_starts_with_none_of_its_data(browser):
    # A shared browser: Max's session data is not Lily's when she logs in without Max logging out;
    # the same user logging in again keeps it.
    await browser.login()
    for _ in range(3):
        await browser.get("/api")
    await browser.login()
    assert (await browser.get("/api")).body.decode() == "You visited this page 4 times"
    assert (await browser.login(LILY)).code == 200
    assert (await browser.get("/api")).body.decode() == "Welcome to this page for the first time!"
    assert body_json(await browser.get("/api/login")) == {"loggedIn": True}


@pytest.mark.gen_test
async def test_old_cookie_is_worthless_after_logout(make_browser):
    user = make_browser()
    await user.login()
    copied = dict(user.cookies)
    r = await user.post("/api/logout", {})
    cleared = user.last_set_cookies["sid"]
    assert cleared.value == ""
    assert cleared["max-age"] == "0" and cleared["expires"]
    assert cleared["path"] == "/"
    assert cleared["samesite"] == "Lax"
    assert cleared["httponly"] is True
    thief = make_browser()
    thief.cookies.update(copied)
    r = await thief.get("/api/balance")
    assert r.code == 401


def forge(app: SessionApplication, value: str, *, secret: str | None = None, version: int = 2) -> str:
    secret = secret or app.config.session_secrets[0]
    if version == 1:
        return create_signed_value(secret, "sid", value, version=1, clock=app.clock).decode()
    keys = {key_version(secret): secret}
    return create_signed_value(keys, "sid", value, version=2, key_version=key_version(secret), clock=app.clock).decode()


def swap_value(signed: str, other: str) -> str:
    """``signed`` with its value field replaced by ``other``'s, keeping ``signed``'s signature."""
    fields, other_fields = signed.split("|"), other.split("|")
    fields[4] = other_fields[4]
    return "|".join(fields)


def tamper(value: str) -> str:
    flipped = "A" if value[-1] != "A" else "B"
    return value[:-1] + flipped


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "make_cookie",
    [
        pytest.param(lambda app, sid: tamper(forge(app, sid)), id="tampered-signature"),
        pytest.param(lambda app, sid: swap_value(forge(app, sid), forge(app, "A" * 43)), id="tampered-value"),
        pytest.param(lambda app, sid: sid, id="unsigned"),
        pytest.param(lambda app, sid: forge(app, sid, version=1), id="v1-signature"),
        pytest.param(lambda app, sid: forge(app, sid, secret=test_secret()), id="foreign-secret"),
        pytest.param(lambda app, sid: forge(app, sid) + "x" * 5000, id="oversized"),
        pytest.param(lambda app, sid: forge(app, "../../etc/passwd"), id="signed-bad-format"),
        pytest.param(lambda app, sid: forge(app, sid + "\x01"), id="signed-control-char"),
        pytest.param(lambda app, sid: "2|garbage|||", id="malformed-v2"),
        pytest.param(lambda app, sid: "\u00e9\u00e9", id="non-ascii"),
    ],
)
async def test_bad_cookies_are_never_adopted(browser: Browser, app: SessionApplication, store, make_cookie):
    await browser.login()
    real_id = cookie_id(browser, app)
    assert real_id is not None
    browser.cookies["sid"] = make_cookie(app, real_id)
    r = await browser.get("/api/login")
    assert r.code == 200
    assert body_json(r) == {"loggedIn": False}
    r = await browser.get("/api")
    assert r.code == 200
    assert r.body.decode() == "Welcome to this page for the first time!"
    new_id = cookie_id(browser, app)
    assert new_id is not None and new_id != real_id


@pytest.mark.gen_test
async def test_control_characters_in_the_cookie_header_are_not_a_500(browser: Browser):
    for header in ('sid="2|1:0\\x00"; XSRF-TOKEN=\x7f', "sid=\x01\x02", "sid=%00%0d%0a"):
        r = await browser.get("/api/login", headers={"Cookie": header})
        # The HTTP parser may refuse a control character outright (400); never a 5xx.
        assert r.code in (200, 400), header
        if r.code == 200:
            assert body_json(r) == {"loggedIn": False}


@pytest.mark.gen_test
async def test_unknown_signed_id_is_not_adopted_and_is_logged_hashed(browser: Browser, app, store, caplog):
    chosen = "A" * 43  # an id the client picked and signed with a leaked secret, say
    browser.cookies["sid"] = forge(app, chosen)
    with caplog.at_level(logging.INFO):
        r = await browser.get("/api")
    assert r.code == 200
    assert chosen not in stored_ids(store)
    assert cookie_id(browser, app) != chosen
    warnings = [rec.getMessage() for rec in caplog.records if "unknown session" in rec.getMessage()]
    assert warnings and app.sessions.log_id(chosen) in warnings[0]
    assert all(chosen not in rec.getMessage() for rec in caplog.records)


@pytest.mark.gen_test
async def test_a_rejected_cookie_is_cleared_when_nothing_replaces_it(browser: Browser, app):
    browser.cookies["sid"] = forge(app, "B" * 43)
    await browser.get("/api/login")
    assert browser.last_set_cookies["sid"].value == ""
    assert "sid" not in browser.cookies


def rotated(config: Settings, *new_first: str) -> Settings:
    return config.replace(session_secrets=(*new_first, *config.session_secrets))


@pytest.mark.gen_test
async def test_key_rotation_keeps_old_cookies_and_re_signs_them(browser: Browser, app: SessionApplication, store):
    await browser.login()
    old_cookie = browser.cookies["sid"]
    session_id = cookie_id(browser, app)
    # Rotate: a new secret in front. The running app is rebuilt with the new list.
    from handlers.session_manager import SessionManager

    app.config = rotated(app.config, test_secret())
    app.sessions = SessionManager(app.config, store, app.clock)
    r = await browser.get("/api/balance")
    assert r.code == 200
    assert body_json(r) == {"balance": 53762}
    assert "sid" in browser.last_set_cookies  # re-issued
    new_cookie = browser.cookies["sid"]
    assert new_cookie != old_cookie
    assert cookie_id(browser, app) == session_id
    new_version = key_version(app.config.session_secrets[0])
    assert f"|{len(str(new_version))}:{new_version}|" in new_cookie
    # Once re-signed, no further re-issue.
    await browser.get("/api/balance")
    assert "sid" not in browser.last_set_cookies
    # Dropping the old secret now does not hurt this browser.
    app.config = app.config.replace(session_secrets=app.config.session_secrets[:1])
    app.sessions = SessionManager(app.config, store, app.clock)
    assert body_json(await browser.get("/api/balance")) == {"balance": 53762}


@pytest.mark.gen_test
async def test_cookie_signed_before_two_prepends_still_verifies(browser: Browser, app: SessionApplication, store):
    from handlers.session_manager import SessionManager

    await browser.login()
    app.config = rotated(app.config, test_secret(), test_secret())
    app.sessions = SessionManager(app.config, store, app.clock)
    assert (await browser.get("/api/balance")).code == 200


@pytest.mark.gen_test
async def test_idle_timeout(browser: Browser, app: SessionApplication, clock: FakeClock, store):
    await browser.login()
    idle = app.config.idle_timeout
    # Active every idle/2: stays logged in well past the idle timeout.
    for _ in range(4):
        clock.advance(idle / 2)
        assert (await browser.get("/api/balance")).code == 200
    clock.advance(idle + 1)
    r = await browser.get("/api/balance")
    assert r.code == 401
    assert len(store) == 0  # the expired record is deleted, not just ignored


@pytest.mark.gen_test
async def test_an_idle_timeout_shorter_than_the_touch_interval_never_ends_a_session_in_use(
    http_server, browser: Browser, config, store, users, clock: FakeClock
):
    # Read every second with a 5 s idle timeout: last_seen must be written often enough.
    short = config.replace(idle_timeout=5, anonymous_idle_timeout=5)
    assert short.touch_interval > short.idle_timeout
    serve(http_server, SessionApplication(short, store, users, clock=clock))
    await browser.login()
    for _ in range(30):
        clock.advance(1)
        assert (await browser.get("/api/balance")).code == 200
    clock.advance(5)
    assert (await browser.get("/api/balance")).code == 401


@pytest.mark.gen_test
async def test_a_short_anonymous_timeout_does_not_touch_logged_in_sessions_more_often(
    http_server, browser: Browser, config, store: CountingStore, users, clock: FakeClock
):
    serve(http_server, SessionApplication(config.replace(anonymous_idle_timeout=60), store, users, clock=clock))
    await browser.login()
    store.calls.clear()
    for _ in range(5):  # 50 s of reads: a quarter of 60 s would touch three times
        clock.advance(10)
        assert (await browser.get("/api/balance")).code == 200
    assert "touch" not in store.calls


@pytest.mark.gen_test
async def test_absolute_timeout_ends_even_an_active_session(browser: Browser, app: SessionApplication, clock):
    await browser.login()
    step = app.config.idle_timeout / 2
    elapsed = 0.0
    while elapsed + step < app.config.absolute_timeout:
        clock.advance(step)
        elapsed += step
        assert (await browser.get("/api/balance")).code == 200
    clock.advance(step)
    assert (await browser.get("/api/balance")).code == 401


@pytest.mark.gen_test
async def test_read_only_requests_touch_at_most_once_per_interval(browser: Browser, app, store: CountingStore, clock):
    await browser.login()
    store.calls.clear()
    for _ in range(5):
        clock.advance(1)
        await browser.get("/api/balance")
    assert store.calls == ["load"] * 5
    clock.advance(app.config.touch_interval)
    await browser.get("/api/balance")
    assert store.calls[-2:] == ["load", "touch"]


@pytest.mark.gen_test
async def test_requests_that_do_not_need_a_session_store_nothing(make_browser, store: CountingStore):
    b = make_browser()
    for path in ("/api/login", "/api/balance", "/livez", "/readyz", "/nope"):
        r = await b.get(path)
        assert "sid" not in b.last_set_cookies, path
    r = await b.fetch(
        "OPTIONS",
        "/api/login",
        headers={"Origin": "http://localhost:4736", "Access-Control-Request-Method": "POST"},
    )
    assert r.code == 204
    assert "Set-Cookie" not in r.headers
    await b.post("/api/logout", {})
    await b.post("/api/login", {"email": "max@gmail.com", "password": "bad"})
    assert "load" not in store.calls or set(store.calls) == {"load"}
    assert "create" not in store.calls
    assert len(store) == 0


@pytest.mark.gen_test
async def test_sessionless_routes_make_no_store_call(browser: Browser, store: CountingStore):
    await browser.get("/api")  # has a session now
    store.calls.clear()
    for path in ("/livez", "/nope"):
        await browser.get(path)
    assert store.calls == []


@pytest.mark.gen_test(timeout=20)
async def test_concurrent_increments_on_one_session_all_count(browser: Browser, app):
    await browser.get("/api")
    n = 50
    results = await asyncio.gather(*(browser.get("/api") for _ in range(n)))
    assert all(r.code == 200 for r in results)
    texts = {r.body.decode() for r in results}
    assert len(texts) == n  # each saw its own stored total: no two responses alike
    assert (await browser.get("/api")).body.decode() == f"You visited this page {n + 2} times"


class GatedStore(MemoryStore):
    """The memory store, but create waits until the test opens the gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        await self.gate.wait()
        return await super().create(session_id, record, ttl)


@pytest.fixture
def gated_app(config, users, clock) -> SessionApplication:
    return SessionApplication(config, GatedStore(100, clock=clock), users, clock=clock)


def gate_of(app: SessionApplication) -> asyncio.Event:
    assert isinstance(app.store, GatedStore)
    return app.store.gate


@pytest.mark.gen_test
async def test_response_waits_for_the_save(http_client, gated_app, browser: Browser, http_server):
    serve(http_server, gated_app)
    pending = asyncio.ensure_future(browser.get("/api"))
    await asyncio.sleep(0.2)
    assert not pending.done()  # the store has not confirmed: nothing is sent
    gate_of(gated_app).set()
    r = await pending
    assert r.code == 200
    assert isinstance(gated_app.store, MemoryStore) and len(gated_app.store) == 1


class VanishingStore(MemoryStore):
    """Deletes the record between the load and the update, as a concurrent logout would."""

    async def update(self, session_id: str, operations: Sequence[Operation], now: float, ttl: float, loaded=None):
        await self.delete(session_id)
        return await super().update(session_id, operations, now, ttl, loaded)


@pytest.mark.gen_test
async def test_a_session_destroyed_mid_request_is_not_resurrected(config, users, clock, browser, http_server):
    app = serve(http_server, SessionApplication(config, VanishingStore(100, clock=clock), users, clock=clock))
    await browser.login()
    old_id = cookie_id(browser, app)
    r = await browser.get("/api")
    assert r.code == 200
    new_id = cookie_id(browser, app)
    assert new_id != old_id
    assert body_json(await browser.get("/api/login")) == {"loggedIn": False}
    # The new session is anonymous all through: within the new-session budget and with the
    # anonymous idle timeout, never the logged-in one's.
    assert new_id is not None
    loaded = await app.store.load(new_id)
    assert loaded is not None and not is_privileged(loaded.record)


@pytest.mark.gen_test
async def test_log_lines_never_hold_a_session_id(browser: Browser, app, caplog):
    seen: set[str] = {"C" * 43}
    with caplog.at_level(logging.DEBUG):
        await browser.get("/api")
        seen.add(cookie_id(browser, app) or "")
        await browser.login()
        seen.add(cookie_id(browser, app) or "")
        await browser.post("/api/logout", {})
        browser.cookies["sid"] = forge(app, "C" * 43)
        await browser.get("/api")
        seen.add(cookie_id(browser, app) or "")
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "session created" in text and "session regenerated" in text and "session destroyed" in text
    seen.discard("")
    assert len(seen) == 4
    for session_id in seen:
        assert session_id not in text


def test_key_versions_are_stable_and_distinct():
    a, b = test_secret(), test_secret()
    assert key_version(a) == key_version(a)
    assert key_version(a) != key_version(b)
    assert 0 <= key_version(a) < 2**31
    expected = int.from_bytes(hmac.new(a.encode(), b"key-version", hashlib.sha256).digest()[:4], "big") & 0x7FFFFFFF
    assert key_version(a) == expected


# The bounded caches behind verification (speed only: they must never widen what is accepted).


def test_a_remembered_cookie_still_expires_with_its_age(app: SessionApplication, clock: FakeClock):
    cookie = forge(app, "D" * 43)
    assert app.sessions.verify(cookie) == ("D" * 43, False)
    assert app.sessions.verify(cookie) == ("D" * 43, False)  # now answered from the cache
    clock.advance(app.config.absolute_timeout + 1)
    assert app.sessions.verify(cookie) == (None, False)


def test_failed_verifications_are_not_remembered(app: SessionApplication):
    for i in range(50):
        assert app.sessions.verify(tamper(forge(app, f"{i:043d}"))) == (None, False)
    assert len(app.sessions.signer._verified) == 0


def test_a_remembered_xsrf_token_is_valid_for_its_own_session_only(app: SessionApplication):
    token = app.sessions.xsrf_token("A" * 43)
    assert app.sessions.xsrf_valid(token, "A" * 43)
    assert app.sessions.xsrf_valid(token, "A" * 43)  # cached
    assert not app.sessions.xsrf_valid(token, "B" * 43)
    assert not app.sessions.xsrf_valid(token, None)


def test_remembered_maps_stay_bounded_and_keep_the_newest():
    from stores.remembered import Remembered

    remembered = Remembered(10)
    for i in range(100):
        remembered.remember(str(i), i)
    assert len(remembered) <= 10
    assert remembered["99"] == 99 and "0" not in remembered


@pytest.mark.parametrize("amount", [1.5, True, "1", None])
def test_increments_are_integers_only(amount):
    session = Session(None, None)
    with pytest.raises(TypeError):
        session.increment("n", amount)
    assert session.increment("n", 2) == 2 and len(session.operations) == 1


def test_cookie_headers_are_parsed_once_and_remembered_within_bounds():
    from handlers import cookies as base

    header = 'sid="2|1:0|10:1|3:sid|4:YWJj|ff"; XSRF-TOKEN=abc.def'
    first = base.parse_cookie_header(header)
    assert first == {"sid": "2|1:0|10:1|3:sid|4:YWJj|ff", "XSRF-TOKEN": "abc.def"}
    # The same header again (a new string, as each request brings) is not parsed again.
    assert base.parse_cookie_header("".join(list(header))) is first
    long_header = "a=" + "x" * base.REMEMBERED_COOKIE_HEADER_LENGTH
    assert base.parse_cookie_header(long_header) == {"a": "x" * base.REMEMBERED_COOKIE_HEADER_LENGTH}
    assert long_header not in base._parsed_cookie_headers
    # Many tiny cookies in a short header would cost many times the header's size to keep.
    many = "; ".join(f"c{i}=1" for i in range(base.REMEMBERED_COOKIES_PER_HEADER + 1))
    assert len(base.parse_cookie_header(many)) == base.REMEMBERED_COOKIES_PER_HEADER + 1
    assert many not in base._parsed_cookie_headers
    for i in range(base.COOKIE_HEADERS_REMEMBERED + 10):
        base.parse_cookie_header(f"n={i}")
    assert len(base._parsed_cookie_headers) <= base.COOKIE_HEADERS_REMEMBERED


@pytest.mark.gen_test
async def test_a_remembered_cookie_header_serves_each_request_its_own_session(make_browser):
    # Two browsers, each sending its own unchanged Cookie header many times: no answer crosses.
    first, second = make_browser(), make_browser()
    await first.login()
    await second.get("/api")
    for _ in range(3):
        assert body_json(await first.get("/api/login")) == {"loggedIn": True}
        assert body_json(await second.get("/api/login")) == {"loggedIn": False}
    assert (await second.get("/api")).body.decode() == "You visited this page 2 times"


@pytest.mark.gen_test
async def test_writes_leave_the_loaded_record_as_it_was(app: SessionApplication, browser: Browser):
    await browser.get("/api")
    cookie = browser.cookies["sid"].strip('"')
    session = await app.sessions.load(cookie)
    assert session.loaded is not None
    loaded_data = dict(session.loaded.record["data"])
    session["page_views"] = 10
    session["other"] = [1]
    del session["page_views"]
    assert session.loaded.record["data"] == loaded_data == {"page_views": 1}
    assert "other" in session and "page_views" not in session


@pytest.mark.gen_test
async def test_a_stale_cookie_is_cleared_on_a_401_too(app: SessionApplication, browser):
    await browser.login()
    await browser.get("/api/balance")
    stale = dict(browser.cookies)
    await browser.post("/api/logout", {})
    browser.cookies.update(stale)  # a client that kept the old cookie
    r = await browser.get("/api/balance")
    assert r.code == 401
    cleared = browser.last_set_cookies["sid"]
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == "/"
    assert "sid" not in browser.cookies


class TakenIdStore(MemoryStore):
    """The memory store, but the first id each new session is created under is already taken."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: list[str] = []

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        if not self.taken:
            # Someone else's record is already under the first id drawn.
            self.taken.append(session_id)
            await super().create(session_id, {"data": {"owner": "someone else"}, "created_at": 0, "last_seen": 0}, ttl)
        return await super().create(session_id, record, ttl)


@pytest.mark.gen_test
async def test_a_new_session_never_joins_a_record_whose_id_is_taken(config, users, clock, browser, http_server):
    store = TakenIdStore(100, clock=clock)
    app = serve(http_server, SessionApplication(config, store, users, clock=clock))
    assert (await browser.login()).code == 200
    session_id = cookie_id(browser, app)
    assert session_id is not None and session_id != store.taken[0]
    assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
    other = await store.load(store.taken[0])
    assert other is not None and other.record["data"] == {"owner": "someone else"}


class EndedOnTouchStore(MemoryStore):
    """Deletes the record just before a touch lands, as a logout in another tab would."""

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Any = None) -> bool:
        await self.delete(session_id)
        return await super().touch(session_id, now, ttl, loaded)


@pytest.mark.gen_test
async def test_a_touch_that_finds_the_session_gone_clears_the_cookie(
    config, users, clock, browser, http_server, caplog
):
    app = serve(http_server, SessionApplication(config, EndedOnTouchStore(100, clock=clock), users, clock=clock))
    await browser.login()
    clock.advance(config.touch_interval + 1)
    with caplog.at_level(logging.INFO, logger="sessions"):
        r = await browser.get("/api/login")
    assert r.code == 200 and "sid" in browser.last_set_cookies  # the cookie is cleared with the answer
    # Its line carries the event server.py holds to one a second (a client can race its own logout).
    vanished = [record for record in caplog.records if "vanished" in record.getMessage()]
    assert [getattr(record, "event", None) for record in vanished] == ["session.vanished"]
    assert "session.vanished" in CLIENT_CAUSED_EVENTS
    assert "sid" not in browser.cookies and cookie_id(browser, app) is None
    assert body_json(await browser.get("/api/login")) == {"loggedIn": False}
