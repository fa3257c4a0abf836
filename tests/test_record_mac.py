"""Records in memcached carry a MAC: write access to memcached is not a way into an account.

The attacker here can write any memcached key directly (memcached has no authentication; SSRF
into it is a classic) and knows their own session id, which their own cookie carries.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client

from handlers.app import SessionApplication
from server import session_store
from settings import Settings, load_settings
from stores.memcached import MemcachedStore
from stores.sealing import Opened, RecordSeal, SealedRecords, record_keys
from tests.conftest import LILY, Browser, body_json, serve, test_secret
from tests.services import Memcached

pytestmark = pytest.mark.memcached


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    with Memcached() as server:
        yield server


def memcached_settings(memcached: Memcached, *secrets: str) -> Settings:
    return load_settings(
        "test",
        environ={},
        session_secrets=secrets,
        store="memcached",
        store_options={"memcached": {"servers": memcached.address}},
    )


def app_for(http_server, config: Settings, users, clock) -> SessionApplication:
    return serve(http_server, SessionApplication(config, session_store(config, clock=clock), users, clock=clock))


def session_key(app: SessionApplication, browser: Browser) -> str:
    session_id, _ = app.sessions.verify(browser.cookies["sid"])
    assert session_id is not None
    assert isinstance(app.store, MemcachedStore)
    return app.store.key(session_id)


def id_in_cookie(cookie: str) -> str:
    """What an attacker reads off their own cookie: a Tornado v2 signed value carries the id in base64."""
    value_field = cookie.split("|")[4]
    return base64.b64decode(value_field.split(":", 1)[1]).decode()


@pytest.mark.gen_test
async def test_a_record_written_into_memcached_by_someone_else_is_no_session(
    http_server, make_browser, memcached: Memcached, users, clock, caplog
):
    app = app_for(http_server, memcached_settings(memcached, test_secret()), users, clock)
    attacker = make_browser()
    assert (await attacker.get("/api")).code == 200
    own_id = id_in_cookie(attacker.cookies["sid"])
    key = session_key(app, attacker)
    assert app.store.key(own_id) == key  # type: ignore[attr-defined]
    forged = {"data": {"user": "max@gmail.com"}, "created_at": clock(), "last_seen": clock()}
    memcached.set_raw(key, json.dumps(forged).encode())
    with caplog.at_level(logging.INFO):
        r = await attacker.get("/api/balance")
    assert (r.code, body_json(r)) == (401, {"errorMessage": "You must be logged in."})
    forged_lines = [rec for rec in caplog.records if getattr(rec, "event", None) == "store.forged"]
    assert len(forged_lines) == 1 and forged_lines[0].levelno == logging.WARNING
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert own_id not in caplog.text


@pytest.mark.gen_test
async def test_a_victims_record_copied_under_the_attackers_key_is_no_session(
    http_server, make_browser, memcached: Memcached, users, clock
):
    app = app_for(http_server, memcached_settings(memcached, test_secret()), users, clock)
    victim, attacker = make_browser(), make_browser()
    assert (await victim.login()).code == 200
    assert (await attacker.get("/api")).code == 200
    raw = Client(("127.0.0.1", memcached.port))
    sealed_for_victim = raw.get(session_key(app, victim))
    assert sealed_for_victim is not None and b"max@gmail.com" in sealed_for_victim
    memcached.set_raw(session_key(app, attacker), sealed_for_victim)
    r = await attacker.get("/api/balance")
    assert r.code == 401
    # The victim's own session is untouched.
    assert body_json(await victim.get("/api/balance")) == {"balance": 53762}


@pytest.mark.gen_test
async def test_records_sealed_under_an_older_secret_still_count_and_are_sealed_again_under_the_newest(
    http_server, make_browser, memcached: Memcached, users, clock
):
    old, new = test_secret(), test_secret()
    before = app_for(http_server, memcached_settings(memcached, old), users, clock)
    browser = make_browser()
    assert (await browser.login(LILY)).code == 200
    key = session_key(before, browser)
    raw = Client(("127.0.0.1", memcached.port))
    newest_only = RecordSeal(record_keys([new]))
    assert newest_only.open(key, raw.get(key)) is None

    # Rotation: the new secret signs and seals; the old one still verifies and opens.
    app_for(http_server, memcached_settings(memcached, new, old), users, clock)
    r = await browser.get("/api/balance")
    assert (r.code, body_json(r)) == (200, {"balance": 4826})
    opened = newest_only.open(key, raw.get(key))
    assert opened is not None and json.loads(opened.payload)["data"]["user"] == "lily@gmail.com"

    # Once the old secret is dropped, the session lives on.
    app_for(http_server, memcached_settings(memcached, new), users, clock)
    r = await browser.get("/api/login")
    assert body_json(r) == {"loggedIn": True}


def test_a_seal_opens_only_its_own_key_and_value():
    seal = RecordSeal(record_keys([test_secret()]))
    value = seal.seal("session:a", b'{"data":{}}')
    assert seal.open("session:a", value) == (b'{"data":{}}', False)
    assert seal.open("session:b", value) is None
    assert seal.open("session:a", value[:-1] + b" ") is None
    assert seal.open("session:a", b'{"data":{}}') is None
    assert seal.open("session:a", b"") is None
    other = RecordSeal(record_keys([test_secret()]))
    assert other.open("session:a", value) is None


def test_a_value_longer_than_any_sealed_record_is_refused_before_its_mac_is_computed():
    # Someone with write access to the store puts megabytes under their own session's key: each
    # load would otherwise hash all of it, on the IOLoop, for every request that cookie sends.
    records = SealedRecords(record_keys([test_secret()]), 100, "memcached")
    opened: list[int] = []
    real_open = records.seal.open

    def counted_open(storage_key: str, value: bytes) -> Opened | None:
        opened.append(len(value))
        return real_open(storage_key, value)

    records.seal.open = counted_open  # type: ignore[method-assign]
    sealed = records.encode("session:a", {"created_at": 1.0, "last_seen": 1.0, "data": {"x": "y" * 40}})
    assert records.decode("session:a", sealed) is not None
    assert records.decode("session:a", sealed + b" " * (records.max_value_size - len(sealed) + 1)) is None
    assert records.decode("session:a", b"x" * 10_000_000) is None
    assert opened == [len(sealed)]
