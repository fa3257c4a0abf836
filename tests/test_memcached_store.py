"""The memcached store against real memcached processes started on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheServerError
from tornado.httpclient import AsyncHTTPClient
from tornado.web import create_signed_value

from handlers.app import SessionApplication
from server import session_store
from settings import Settings, key_version, load_settings
from stores.base import Operation, StoreUnavailable, new_record
from stores.memcached import MemcachedStore
from stores.memcached_client import THIRTY_DAYS, memcached_exptime, tls_context
from stores.sealing import RecordSeal, record_keys
from stores.users import hash_password
from tests.conftest import MAX, Browser, FakeClock, body_json, serve, test_secret
from tests.services import AppProcess, Memcached, TestPKI

pytestmark = pytest.mark.memcached
DAY = 86400


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    with Memcached() as server:
        yield server


# The record MAC keys of this module's stores: random for each run, like every test secret.
RECORD_KEYS = record_keys([test_secret()])
SEAL = RecordSeal(RECORD_KEYS)


def make_store(*servers: Memcached, **kwargs) -> MemcachedStore:
    options = {
        "timeout": 0.3,
        "connect_timeout": 0.3,
        "dead_after": 1.0,
        "probe_interval": 0.2,
        "record_keys": RECORD_KEYS,
        **kwargs,
    }
    return MemcachedStore([s.address for s in servers], **options)


def stored_json(client: Client, key: str) -> Any:
    """The record JSON stored under ``key``, its MAC checked."""
    opened = SEAL.open(key, client.get(key))
    assert opened is not None
    return json.loads(opened.payload)


@pytest.fixture
def store(memcached: Memcached) -> Iterator[MemcachedStore]:  # replaces the memory store in this module
    store = make_store(memcached)
    yield store
    store.shutdown()


@pytest.fixture
def config() -> Settings:
    return load_settings("test", environ={}, session_secrets=(test_secret(),), store="memcached")


def app_with(config: Settings, store: MemcachedStore, users, clock) -> SessionApplication:
    return SessionApplication(config, store, users, clock=clock)


def session_id_of(browser: Browser, app: SessionApplication) -> str:
    session_id, _ = app.sessions.verify(browser.cookies.get("sid"))
    assert session_id is not None
    return session_id


def memcached_store(app: SessionApplication) -> MemcachedStore:
    assert isinstance(app.store, MemcachedStore)
    return app.store


def raw_client(server: Memcached) -> Client:
    return Client(("127.0.0.1", server.port), default_noreply=False)


def signed_cookie(app: SessionApplication, session_id: str) -> str:
    secret = app.config.session_secrets[0]
    keys = {key_version(secret): secret}
    return create_signed_value(
        keys, "sid", session_id, version=2, key_version=key_version(secret), clock=app.clock
    ).decode()


# Keys, values, TTLs -----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_keys_are_a_prefix_and_sha256_and_values_are_json(browser, app, memcached: Memcached):
    await browser.get("/api")
    await browser.login()
    session_id = session_id_of(browser, app)
    key = "session:" + hashlib.sha256(session_id.encode()).hexdigest()
    keys = memcached.stored_keys()
    assert key in keys
    assert all(k.startswith("session:") and session_id not in k for k in keys)
    value = raw_client(memcached).get(key)
    assert session_id.encode() not in value
    record = stored_json(raw_client(memcached), key)
    assert record["data"] == {"page_views": 1, "user": "max@gmail.com"}
    assert isinstance(record["created_at"], float) and isinstance(record["last_seen"], float)


@pytest.mark.gen_test
async def test_ttl_is_the_sooner_of_idle_and_absolute_end(http_server, browser, memcached, users, clock: FakeClock):
    config = load_settings(
        "test",
        environ={
            "SESSION_IDLE_TIMEOUT": "1000",
            "SESSION_ANONYMOUS_IDLE_TIMEOUT": "1000",
            "SESSION_ABSOLUTE_TIMEOUT": "1500",
        },
        session_secrets=(test_secret(),),
    )
    app = serve(http_server, app_with(config, make_store(memcached), users, clock))
    await browser.get("/api")
    key = memcached_store(app).key(session_id_of(browser, app))
    ttl = memcached.ttl(key)
    assert ttl is not None and 995 <= ttl <= 1000  # idle end comes first
    clock.advance(900)
    await browser.get("/api")
    ttl = memcached.ttl(key)
    assert ttl is not None and 595 <= ttl <= 600  # now the absolute end (1500 - 900) does


def test_exptime_is_never_a_raw_offset_over_30_days():
    assert memcached_exptime(10) == 10
    assert memcached_exptime(0.2) == 1
    assert memcached_exptime(THIRTY_DAYS) == THIRTY_DAYS
    assert memcached_exptime(THIRTY_DAYS + 1, wall_clock=lambda: 1_000_000_000.0) == 1_000_000_000 + THIRTY_DAYS + 1


@pytest.mark.gen_test
async def test_lifetimes_over_30_days_work(http_server, browser, memcached: Memcached, users, clock):
    config = load_settings(
        "test",
        environ={
            "SESSION_IDLE_TIMEOUT": str(40 * DAY),
            "SESSION_ANONYMOUS_IDLE_TIMEOUT": str(40 * DAY),
            "SESSION_ABSOLUTE_TIMEOUT": str(90 * DAY),
        },
        session_secrets=(test_secret(),),
    )
    app = serve(http_server, app_with(config, make_store(memcached), users, clock))
    await browser.get("/api")
    assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
    ttl = memcached.ttl(memcached_store(app).key(session_id_of(browser, app)))
    # Sent as an absolute time; memcached reads the time left against its own clock, which it
    # updates once a second, so the answer can be one second over.
    assert ttl is not None and 40 * DAY - 10 <= ttl <= 40 * DAY + 1


@pytest.mark.gen_test
async def test_touch_refreshes_last_seen_and_ttl_and_keeps_the_data(browser, app, memcached, clock: FakeClock):
    await browser.login()
    key = memcached_store(app).key(session_id_of(browser, app))
    client = raw_client(memcached)
    before = stored_json(client, key)
    clock.advance(app.config.touch_interval + 1)
    assert (await browser.get("/api/balance")).code == 200
    after = stored_json(client, key)
    assert after == {**before, "last_seen": clock()}  # same data and creation time, new last_seen
    sessions = [k for k in memcached.stored_keys() if not k.startswith("session:count:")]  # not the login's counters
    assert sessions == [key]  # one key a session: a load fetches one value
    ttl = memcached.ttl(key)
    assert ttl is not None and app.config.idle_timeout - 5 <= ttl <= app.config.idle_timeout
    # The refreshed last_seen counts: idle timeout measured from the touch, not the login.
    clock.advance(app.config.idle_timeout - 10)
    assert (await browser.get("/api/balance")).code == 200


@pytest.mark.gen_test
async def test_a_due_touch_alongside_another_tabs_writes_loses_none_of_them(browser, app, memcached, clock):
    await browser.login()
    assert (await browser.get("/api")).body.decode() == "Welcome to this page for the first time!"
    key = memcached_store(app).key(session_id_of(browser, app))
    for _ in range(3):
        clock.advance(app.config.touch_interval + 1)
        # Read-only requests (each with a touch due) and counter hits of one browser, together.
        answers = await asyncio.gather(*(browser.get(p) for p in ["/api/balance", "/api", "/api/balance", "/api"]))
        assert [a.code for a in answers] == [200] * 4
    # Six increments and every read's touch: no write was overwritten by a touch.
    assert (await browser.get("/api")).body.decode() == "You visited this page 8 times"
    record = stored_json(raw_client(memcached), key)
    assert record["last_seen"] == clock() and record["data"]["user"] == MAX["email"]


# Confirmed writes and concurrency -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_created_updated_and_deleted_records_are_there_when_the_response_arrives(browser, app, memcached):
    client = raw_client(memcached)
    await browser.get("/api")
    key = memcached_store(app).key(session_id_of(browser, app))
    assert stored_json(client, key)["data"] == {"page_views": 1}
    await browser.get("/api")
    assert stored_json(client, key)["data"] == {"page_views": 2}
    await browser.login()
    assert client.get(key) is None  # regenerated: the pre-login record is gone
    login_key = memcached_store(app).key(session_id_of(browser, app))
    await browser.post("/api/logout", {})
    assert client.get(login_key) is None


def fill_until_full(server: Memcached) -> None:
    """Fill every small slab class of a memcached started with -M until it refuses writes."""
    client = raw_client(server)
    for size in range(16, 2048, 16):
        n = 0
        while True:
            try:
                client.set(f"fill:{size}:{n:040d}", b"x" * size, 0)
            except MemcacheServerError:
                break
            n += 1


@pytest.mark.gen_test(timeout=60)
async def test_a_write_memcached_refuses_fails_the_login_with_503_and_no_cookie(http_server, browser, users, clock):
    config = load_settings("test", environ={}, session_secrets=(test_secret(),), store="memcached")
    with Memcached("-M", "-m", "2", "-I", "512k") as full:
        fill_until_full(full)
        app = serve(http_server, app_with(config, make_store(full), users, clock))
        r = await browser.login()
        assert r.code == 503
        assert r.headers["Retry-After"]
        assert "errorMessage" in body_json(r)
        assert "sid" not in browser.cookies
        assert not [k for k in full.stored_keys() if k.startswith("session:")]
        assert app.in_flight == 0


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_increments_in_one_process_all_count(browser):
    await browser.get("/api")
    results = await asyncio.gather(*(browser.get("/api") for _ in range(50)))
    assert all(r.code == 200 for r in results)
    assert (await browser.get("/api")).body.decode() == "You visited this page 52 times"


# Outages ----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_restarted_memcached_costs_no_request_an_error(make_browser, memcached):
    # The old process's end closes every pooled connection to it. memcached comes back empty, so
    # sessions are lost (a cache), but no request should fail on a connection known to be closed.
    browsers = [make_browser() for _ in range(12)]
    for _ in range(3):  # bursts from many browsers put several pooled connections to use
        assert {r.code for r in await asyncio.gather(*(b.get("/api") for b in browsers))} == {200}
    memcached.stop()
    memcached.start()  # same port
    await asyncio.sleep(0.2)  # the closed connections' ends have arrived
    answers = [await b.get("/api") for b in browsers]
    assert [r.code for r in answers] == [200] * len(browsers)
    assert {r.body.decode() for r in answers} == {"Welcome to this page for the first time!"}
    answers = await asyncio.gather(*(b.get("/api") for b in browsers))
    assert {r.body.decode() for r in answers} == {"You visited this page 2 times"}


@pytest.mark.gen_test(timeout=60)
async def test_an_open_pooled_connection_is_kept(browser, memcached):
    # The check for a closed connection must not reopen healthy ones: no new connection per batch.
    # The first request creates the session (a pooled connection), the second loads and writes it
    # (the pipelined one): both are open before counting.
    stats = raw_client(memcached)
    await browser.get("/api")
    await browser.get("/api")
    opened = int(stats.stats()[b"total_connections"])
    for _ in range(20):
        assert (await browser.get("/api")).code == 200
    assert int(stats.stats()[b"total_connections"]) == opened
    stats.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_memcached_does_not_block_other_requests(browser, base_url, memcached):
    await browser.get("/api")
    # Its own client: the shared one queues past 10 requests, which would measure the client.
    probe_client = AsyncHTTPClient(force_instance=True)
    memcached.pause()
    try:
        stalled = [asyncio.ensure_future(browser.get("/api")) for _ in range(20)]
        await asyncio.sleep(0.05)
        for path in ("/livez", "/api/login"):  # sessionless, and a session read with no cookie
            started = time.monotonic()
            r = await Browser(probe_client, base_url).get(path)
            assert r.code == 200
            assert time.monotonic() - started < 0.2, path
        started = time.monotonic()
        results = await asyncio.gather(*stalled)
        assert {r.code for r in results} == {503}
        assert time.monotonic() - started < 2
    finally:
        memcached.resume()
        probe_client.close()
    deadline = time.monotonic() + 5
    while (r := await browser.get("/api")).code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert r.body.decode().startswith("You visited this page")


@pytest.mark.gen_test(timeout=60)
async def test_three_nodes_one_killed(http_server, make_browser, users, clock, config):
    with Memcached() as a, Memcached() as b, Memcached() as c:
        store = make_store(a, b, c)
        await store.start()  # as server.py does: the prober retires and restores nodes
        app = serve(http_server, app_with(config, store, users, clock))
        browsers = [make_browser() for _ in range(30)]
        for br in browsers:
            await br.get("/api")
        homes = {id(br): store.node_name(session_id_of(br, app)) for br in browsers}
        assert len(set(homes.values())) == 3  # spread over all three
        b.stop()
        lost = [br for br in browsers if homes[id(br)] == b.address]
        kept = [br for br in browsers if homes[id(br)] != b.address]
        for br in kept:
            r = await br.get("/api")
            assert r.body.decode() == "You visited this page 2 times"
        # While b is being detected as dead: 503 (never a silent new session, never a 500).
        codes = {(await br.get("/api")).code for br in lost}
        assert codes <= {503, 200} and 500 not in codes
        await asyncio.sleep(store.dead_after + 0.5)
        for br in lost:
            r = await br.get("/api")
            assert r.code == 200
            assert r.body.decode() == "Welcome to this page for the first time!"  # lost with its node
        for br in kept:
            assert (await br.get("/api")).body.decode() == "You visited this page 3 times"
        assert (await make_browser().get("/readyz")).code == 200
        await store.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "value",
    [
        b"\x80\x81\xff",
        b"[]",
        b'{"data": 5, "created_at": 1, "last_seen": 1}',
        b'{"data": {}, "created_at": "soon", "last_seen": 1}',
        b"[" * 50_000,
        b'{"data": {"user": "max@gmail.com"}, "created_at": 1, "last_seen": 1, "pad": "' + b"x" * 70_000 + b'"}',
    ],
)
async def test_hostile_values_in_memcached_are_no_session(browser, app, memcached: Memcached, value):
    # Sealed as if by a server with the secrets (a bug, a corrupted write): the parse still holds.
    session_id = "H" * 43
    key = memcached_store(app).key(session_id)
    memcached.set_raw(key, SEAL.seal(key, value))
    browser.cookies["sid"] = signed_cookie(app, session_id)
    r = await browser.get("/api/login")
    assert (r.code, body_json(r)) == (200, {"loggedIn": False})
    r = await browser.get("/api")
    assert r.code == 200 and r.body.decode() == "Welcome to this page for the first time!"


@pytest.mark.gen_test
async def test_readiness_follows_memcached(browser, memcached: Memcached):
    assert (await browser.get("/readyz")).code == 200
    memcached.stop()
    r = await browser.get("/readyz")
    assert r.code == 503 and r.headers["Retry-After"]


@pytest.mark.gen_test
async def test_records_over_the_size_limit_are_refused_with_413(http_server, browser, memcached, users, clock, config):
    # Room for the anonymous counter record, not for the login record that adds the user.
    anonymous = len(json.dumps({"data": {"page_views": 1}, "created_at": clock(), "last_seen": clock()}))
    app = serve(http_server, app_with(config, make_store(memcached, max_record_size=anonymous + 5), users, clock))
    await browser.get("/api")
    r = await browser.login(MAX)
    assert r.code == 413
    assert "errorMessage" in body_json(r)
    assert "sid" in browser.cookies  # the anonymous session is untouched
    assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
    assert app.in_flight == 0


# TLS --------------------------------------------------------------------------------------------


@pytest.fixture
def tls_memcached(tmp_path) -> Iterator[tuple[Memcached, TestPKI]]:
    pki = TestPKI(tmp_path)
    options = f"ssl_chain_cert={pki.server_cert},ssl_key={pki.server_key},ssl_ca_cert={pki.ca_cert},ssl_verify_mode=2"
    with Memcached("-Z", "-o", options) as server:
        yield server, pki


@pytest.mark.gen_test(timeout=30)
async def test_sessions_over_tls_with_a_client_certificate(http_server, browser, users, clock, tls_memcached):
    server, pki = tls_memcached
    config = load_settings(
        "test",
        environ={
            "SESSION_STORE": "memcached",
            "MEMCACHED_SERVERS": server.address,
            "MEMCACHED_TLS_CA": pki.ca_cert,
            "MEMCACHED_TLS_CERT": pki.client_cert,
            "MEMCACHED_TLS_KEY": pki.client_key,
        },
        session_secrets=(test_secret(),),
    )
    serve(http_server, SessionApplication(config, session_store(config), users, clock=clock))
    assert (await browser.get("/readyz")).code == 200
    await browser.get("/api")
    assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
    assert (await browser.login()).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_tls_refuses_an_unverified_server_or_a_missing_client_certificate(tls_memcached, tmp_path):
    server, pki = tls_memcached
    (tmp_path / "other").mkdir()
    other_ca = TestPKI(tmp_path / "other")
    untrusted = make_store(server, tls=tls_context(other_ca.ca_cert, pki.client_cert, pki.client_key))
    no_client_cert = make_store(server, tls=tls_context(pki.ca_cert))
    plaintext = make_store(server)
    for store in (untrusted, no_client_cert, plaintext):
        with pytest.raises(StoreUnavailable):
            await store.create("T" * 43, new_record(0), 60)
        assert not await store.ready()


def test_prod_starts_on_memcached_with_the_hardened_cookie(memcached: Memcached, tmp_path):
    users = tmp_path / "users.json"
    users.write_text(
        json.dumps(
            [
                {
                    "email": "ann@example.com",
                    "name": "Ann",
                    "balance": 1,
                    "password_hash": hash_password("pw", cost=(10, 8, 1)),
                }
            ]
        )
    )
    env = {"SESSION_SECRETS": test_secret(), "USERS_FILE": str(users), "MEMCACHED_SERVERS": memcached.address}
    with AppProcess(env, args=("--env=prod",)) as app:
        with urllib.request.urlopen(app.base_url + "/api", timeout=5) as response:
            assert response.read() == b"Welcome to this page for the first time!"
            cookie = response.headers["Set-Cookie"]
        assert urllib.request.urlopen(app.base_url + "/readyz", timeout=5).status == 200
    assert cookie.startswith("__Host-sid=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path"} <= attributes
    assert "domain" not in attributes
    assert "samesite=lax" in cookie.lower() and "path=/" in cookie.lower()
    assert [k for k in memcached.stored_keys() if k.startswith("session:")]


@pytest.mark.gen_test(timeout=30)
async def test_writes_of_one_iteration_share_a_send_and_a_refused_one_fails_alone():
    # Items over 1 KiB are refused with SERVER_ERROR (the slab chunk may not exceed the item size).
    with Memcached("-I", "1k", "-o", "slab_chunk_max=1024") as server:
        store = make_store(server)
        try:
            now = 1_800_000_000.0
            ids = [letter * 43 for letter in "ABCD"]
            for session_id in ids:
                await store.create(session_id, {"data": {"n": 1}, "created_at": now, "last_seen": now}, 60)
            loaded = await asyncio.gather(*(store.load(session_id) for session_id in ids))
            operations = [[Operation("incr", "n", 1)]] * 4
            operations[1] = [Operation("set", "blob", "x" * 4000)]
            # Started in one loop iteration, the four writes travel in one pipelined batch.
            updates = zip(ids, operations, loaded, strict=True)
            results = await asyncio.gather(
                *(store.update(i, ops, now, 60, record) for i, ops, record in updates), return_exceptions=True
            )
            assert isinstance(results[1], StoreUnavailable)
            stored = [r for r in (results[0], results[2], results[3]) if isinstance(r, dict)]
            assert [r["data"]["n"] for r in stored] == [2, 2, 2]
            # The connection stayed in step: every answer went to its own write.
            after = await asyncio.gather(*(store.load(session_id) for session_id in ids))
            assert [record and record.record["data"] for record in after] == [{"n": 2}, {"n": 1}, {"n": 2}, {"n": 2}]
        finally:
            store.shutdown()


@pytest.mark.gen_test
async def test_touches_of_one_iteration_ride_one_batch(store: MemcachedStore, memcached: Memcached):
    now = 1_800_000_000.0
    ids = [letter * 43 for letter in "ABC"]
    for session_id in ids[:2]:
        await store.create(session_id, {"data": {}, "created_at": now, "last_seen": now}, 60)
    loaded = [await store.load(session_id) for session_id in ids]
    # Two sessions that exist (as loaded) and one that does not, with loads in the same iteration.
    touched = asyncio.gather(*(store.touch(i, now + 100, 600, record) for i, record in zip(ids, loaded, strict=True)))
    found, missing = await asyncio.gather(store.load(ids[0]), store.load(ids[2]))
    assert await touched == [True, True, False] and missing is None
    # Same batch, touches before the gets: the load already sees the new last_seen.
    assert found is not None and found.record["last_seen"] == now + 100
    for session_id in ids[:2]:
        assert 590 <= (memcached.ttl(store.key(session_id)) or 0) <= 600
        record = await store.load(session_id)
        assert record is not None and record.record["last_seen"] == now + 100


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("copies", [10_000, 0])
async def test_a_write_that_lost_alone_in_its_batch_tries_again_from_the_read_back(
    memcached: Memcached, monkeypatch: pytest.MonkeyPatch, copies: int
):
    now = 1_800_000_000.0
    store, other = make_store(memcached, copies=copies), make_store(memcached)
    worker_rounds: list[str] = []
    update_blocking = store._update_blocking

    def counted(*args: Any) -> Any:
        worker_rounds.append("gets and cas")
        return update_blocking(*args)

    monkeypatch.setattr(store, "_update_blocking", counted)
    try:
        await store.create("A" * 43, new_record(now), 60)
        loaded = await store.load("A" * 43)
        assert loaded is not None
        # Another process writes after this one loaded: this one's cas loses.
        assert await other.update("A" * 43, [Operation("incr", "n", 10)], now, 60) is not None
        merged = await store.update("A" * 43, [Operation("incr", "n", 1)], now, 60, loaded)
        assert merged is not None and merged["data"]["n"] == 11
        found = await other.load("A" * 43)
        assert found is not None and found.record["data"]["n"] == 11
        # The lost cas's batch read the key back (it does when copies are kept): the second try
        # starts from that, on the IOLoop, two round trips in all. Without it, a worker reads
        # again first (three).
        assert worker_rounds == ([] if copies else ["gets and cas"])
        # Two writers of this process lose in one batch: retried from the read-back, they would
        # race each other again for the same version; each goes to a worker, as with no read-back.
        loaded = await store.load("A" * 43)
        assert loaded is not None
        assert await other.update("A" * 43, [Operation("incr", "n", 10)], now, 60) is not None
        worker_rounds.clear()
        both = await asyncio.gather(
            *(store.update("A" * 43, [Operation("incr", "n", 1)], now, 60, loaded) for _ in range(2))
        )
        assert sorted(merged["data"]["n"] for merged in both if merged is not None) == [22, 23]
        assert worker_rounds == ["gets and cas"] * 2
    finally:
        store.shutdown()
        other.shutdown()


# Answers altered on their way back: (sender, data) -> the bytes to pass on.
Alter = Callable[[socket.socket, bytes], bytes]


@contextlib.contextmanager
def relayed(real: Memcached, alter: Alter) -> Iterator[MemcachedStore]:
    """A store whose one connection reaches ``real`` through a relay that may alter answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def relay() -> None:
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                upstream = socket.create_connection(("127.0.0.1", real.port))
                threading.Thread(target=_pipe, args=(client, upstream, None), daemon=True).start()
                threading.Thread(target=_pipe, args=(upstream, client, alter), daemon=True).start()

        threading.Thread(target=relay, daemon=True).start()
        store = MemcachedStore(
            [f"127.0.0.1:{listener.getsockname()[1]}"], record_keys=RECORD_KEYS, timeout=2, threads=1
        )
        try:
            yield store
        finally:
            store.shutdown()


def _pipe(source: socket.socket, target: socket.socket, alter: Alter | None) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(alter(target, data) if alter is not None else data)
    for end in (source, target):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@pytest.mark.gen_test(timeout=30)
async def test_a_garbled_answer_is_a_503_and_the_next_batch_starts_clean(http_server, browser, users, clock, config):
    # A server that speaks the protocol wrongly (a VALUE line without its size) for one answer.
    garble = threading.Event()

    def garbled(client: socket.socket, data: bytes) -> bytes:
        if garble.is_set() and data.startswith(b"VALUE "):
            # A bad line, then (read separately) the real answer: out of step unless closed.
            client.sendall(b"VALUE garbled\r\n")
            time.sleep(0.1)
        return data

    with Memcached() as real, relayed(real, garbled) as store:
        serve(http_server, app_with(config, store, users, clock))
        assert (await browser.get("/api")).code == 200
        garble.set()
        r = await browser.get("/api")
        assert r.code == 503 and body_json(r)["errorMessage"]
        garble.clear()
        r = await browser.get("/api")
        assert (r.code, r.body.decode()) == (200, "You visited this page 2 times")


@pytest.mark.gen_test(timeout=30)
async def test_a_counter_answer_that_is_not_a_number_is_a_503(http_server, browser, users, clock, config):
    # A login counts its attempts with incr; an answer pymemcache cannot read as a number is the
    # node out of step: 503 with Retry-After, never a 500, and the next login goes through.
    garble = threading.Event()

    def garbled(client: socket.socket, data: bytes) -> bytes:
        return b"garbage\r\n" if garble.is_set() and data.rstrip(b"\r\n").isdigit() else data

    with Memcached() as real, relayed(real, garbled) as store:
        serve(http_server, app_with(config, store, users, clock))
        assert (await browser.login()).code == 200  # the counters exist: the next login incrs them
        garble.set()
        r = await browser.login()
        assert (r.code, r.headers.get("Retry-After")) == (503, "2") and body_json(r)["errorMessage"]
        garble.clear()
        assert (await browser.login()).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_touch_memcached_refuses_is_a_503_and_the_session_stays(http_server, browser, users, clock, config):
    refuse = threading.Event()

    def refusing(client: socket.socket, data: bytes) -> bytes:
        # memcached out of memory for the touch's write: SERVER_ERROR in place of STORED (the
        # gets that reads the written key back follows it in the same answer).
        if refuse.is_set() and data.startswith(b"STORED\r\n"):
            return b"SERVER_ERROR out of memory\r\n" + data[len(b"STORED\r\n") :]
        return data

    with Memcached() as real, relayed(real, refusing) as store:
        serve(http_server, app_with(config, store, users, clock))
        await browser.login()
        clock.advance(config.touch_interval + 1)
        refuse.set()
        r = await browser.get("/api/balance")
        assert r.code == 503 and body_json(r)["errorMessage"] and r.headers["Retry-After"]
        refuse.clear()
        # Nothing was lost: the session is still logged in, and this request's touch goes through.
        r = await browser.get("/api/balance")
        user = users.get(MAX["email"])
        assert r.code == 200 and user is not None and body_json(r) == {"balance": user.balance}


def test_a_key_prefix_memcached_cannot_take_is_refused():
    for prefix in ("two words:", "tab\t", "naïve:", "x" * 101):
        with pytest.raises(ValueError, match="key prefix"):
            MemcachedStore(["127.0.0.1:11211"], record_keys=RECORD_KEYS, prefix=prefix)


def memcached_has_unread_bytes(server: Memcached) -> bool:
    """Whether a connection to ``server`` holds bytes it has not read (it is paused, say)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                unread = int(fields[4].split(":")[1], 16)
                if local_port == server.port and unread > 0:
                    return True
    return False


def test_a_request_whose_client_left_still_saves_before_the_process_exits(memcached: Memcached):
    env = {
        "SESSION_STORE": "memcached",
        "MEMCACHED_SERVERS": memcached.address,
        "MEMCACHED_TIMEOUT": "10",
        "SESSION_SECRETS": test_secret(),
    }
    with AppProcess(env) as app:
        with urllib.request.urlopen(app.base_url + "/api", timeout=5) as first:
            cookie = first.headers["Set-Cookie"].split(";")[0]
        memcached.pause()
        try:
            with socket.create_connection(("127.0.0.1", app.port), timeout=5) as client:
                client.sendall(f"GET /api HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode())
                # The request's load has reached memcached (waiting there, unread): the method runs.
                deadline = time.monotonic() + 10
                while not memcached_has_unread_bytes(memcached):
                    assert time.monotonic() < deadline, "the request's load never reached memcached"
                    time.sleep(0.01)
            # Its client is gone; the process is told to stop while the request waits on memcached.
            app.send_signal(signal.SIGTERM)
            app.wait_for_output("stopping")
        finally:
            memcached.resume()
        assert app.wait() == 0
        log = app.output
    # The shutdown waited for it: nothing was answered with a 500, and the visit was saved.
    assert " 500 " not in log and "Traceback" not in log
    with AppProcess(env) as again:
        request = urllib.request.Request(again.base_url + "/api", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=5) as third:
            assert third.read().decode() == "You visited this page 3 times"


def test_the_store_reserves_a_descriptor_per_pooled_and_pipelined_connection(memcached: Memcached):
    other = Memcached().start()
    try:
        store = make_store(memcached, other, threads=3)
        try:
            # Per node: three pooled connections (one per worker thread) and the pipelined one.
            assert store.connections == 2 * (3 + 1)
        finally:
            store.shutdown()
    finally:
        other.stop()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("refuses_flush", [False, True], ids=["flush_all", "memcached -F"])
async def test_a_node_that_left_the_ring_rejoins_empty(
    http_server, make_browser, users, clock, config, caplog, refuses_flush
):
    # Cut off (stopped, not killed), a node keeps its records. Its sessions were lost when it left;
    # were it to rejoin as it was, each would come back to whoever kept its cookie, sessions
    # logged out meanwhile included (the logout found nothing to delete). A node that will not be
    # emptied (memcached -F) stays out.
    with Memcached() as a, Memcached(*(["-F"] if refuses_flush else [])) as b:
        store = make_store(a, b)
        await store.start()
        app = serve(http_server, app_with(config, store, users, clock))
        browsers = [make_browser() for _ in range(12)]
        for br in browsers:
            await br.get("/api")
            await br.get("/api")
        on_b = [br for br in browsers if store.node_name(session_id_of(br, app)) == b.address]
        assert on_b
        kept = [br.cookies["sid"] for br in on_b]  # as by whoever copied them
        b.pause()
        deadline = time.monotonic() + 10
        while (r := await on_b[0].get("/api")).body != b"Welcome to this page for the first time!":
            assert r.code in (200, 503) and time.monotonic() < deadline  # 503 until b leaves the ring
            await asyncio.sleep(0.1)
        b.resume()
        old_id, _ = app.sessions.verify(kept[0])
        assert old_id is not None
        deadline = time.monotonic() + 10
        if refuses_flush:
            while "refuses flush_all: left out of the ring" not in caplog.text:
                assert time.monotonic() < deadline, "the refusal was never logged"
                await asyncio.sleep(0.1)
            assert store.node_name(old_id) == a.address
        else:
            while store.node_name(old_id) != b.address:  # back in the ring
                assert time.monotonic() < deadline, "b never rejoined"
                await asyncio.sleep(0.1)
        for cookie in kept:
            old = make_browser()
            old.cookies["sid"] = cookie
            r = await old.get("/api")
            assert (r.code, r.body) == (200, b"Welcome to this page for the first time!")
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_session_written_elsewhere_while_its_node_was_out_stays_ended_when_it_leaves_again(
    http_server, make_browser, users, clock, config
):
    # b leaves; a user homed on b logs in, so the record is written to a. b rejoins emptied: the
    # session is lost there, and the user logs out. Were the record left on a, b leaving again
    # would bring the logged-in session back to whoever kept the cookie.
    with Memcached() as a, Memcached() as b:
        store = make_store(a, b)
        await store.start()
        app = serve(http_server, app_with(config, store, users, clock))

        async def until_home(session_id: str, home: str | None) -> None:
            deadline = time.monotonic() + 10
            while store.node_name(session_id) != home:
                assert time.monotonic() < deadline, f"the ring never placed it on {home}"
                await asyncio.sleep(0.05)

        full_ring = RendezvousHash(nodes=[a.address, b.address])
        b.pause()
        deadline = time.monotonic() + 10
        while store._ring.nodes[b.address].in_ring:  # new sessions find b failing, then out
            assert time.monotonic() < deadline, "b never left the ring"
            await make_browser().get("/api")
            await asyncio.sleep(0.05)
        for _ in range(20):  # a logged-in session whose home, with every node in, is b
            user = make_browser()
            assert (await user.login()).code == 200
            session_id = session_id_of(user, app)
            if full_ring.get_node(store.key(session_id)) == b.address:
                break
        else:
            raise AssertionError("no session homed on b in 20 logins")
        kept = user.cookies["sid"]
        assert raw_client(a).get(store.key(session_id)) is not None
        b.resume()
        await until_home(session_id, b.address)
        assert (await user.get("/api/balance")).code == 401  # lost with b's emptying
        assert raw_client(a).get(store.key(session_id)) is None  # and nowhere else either
        await user.post("/api/logout", {})
        b.pause()
        old = make_browser()
        old.cookies["sid"] = kept
        deadline = time.monotonic() + 10
        while (r := await old.get("/api/balance")).code == 503:  # b failing, then out of the ring
            assert time.monotonic() < deadline, "b never left the ring"
        assert r.code == 401 and store.node_name(session_id) == a.address
        b.resume()
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_strays_of_a_key_are_deleted_once_until_a_node_rejoins(memcached: Memcached):
    with Memcached() as other:
        store = make_store(memcached, other)
        deleted: list[str] = []
        for node in store._ring.nodes.values():
            real = node.client.delete

            def counted(key: str, noreply: bool, real: Any = real, name: str = node.name) -> bool:
                deleted.append(name)
                return bool(real(key, noreply))

            node.client.delete = counted
        try:
            for _ in range(3):  # a dead cookie replayed: its strays deleted at the first miss only
                assert await store.load("a-dead-session") is None
            home = store.node_name("a-dead-session")
            elsewhere = other if home == memcached.address else memcached
            assert deleted == [elsewhere.address]
            key = store.key("a-dead-session")
            raw_client(elsewhere).set(key, b"a stray")
            assert await store.load("a-dead-session") is None
            assert raw_client(elsewhere).get(key) == b"a stray" and len(deleted) == 1  # remembered
            store._strays_cleared.clear()  # as a node's rejoining does
            assert await store.load("a-dead-session") is None
            assert raw_client(elsewhere).get(key) is None and len(deleted) == 2
        finally:
            store.shutdown()
