"""The store contract (stores/base.py), held against every store: one suite, parametrised.

Each store runs against its real service, started by its launcher in tests/services.py; the
shared stores (the ones with a service) also against two server processes at once, and through
an outage. A new store runs all of it by adding one line to `STORES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from handlers.app import SessionApplication
from settings import load_settings
from stores import build_store
from stores.base import (
    Loaded,
    Operation,
    SessionStore,
    StaleCopy,
    StoreContext,
    StoreUnavailable,
    StoreValueError,
    apply_operations,
    dump_record,
    new_record,
)
from stores.options import env_name
from stores.sealing import RecordSeal, record_keys
from tests.conftest import FakeClock, body_json, serve, test_secret
from tests.services import Memcached, Redis, app_processes

# Every store, and the launcher of the service it keeps records in (None: in the process).
STORES: dict[str, Any] = {
    "memory": None,
    "memcached": Memcached,
    "redis": Redis,
}
SHARED = [name for name, service in STORES.items() if service is not None]
# The stores that keep copies of what they read and wrote (`SessionStore.copy`).
KEEPS_COPIES = {"memcached", "redis"}
RECORD_KEYS = record_keys([test_secret()])
MAX_RECORD_SIZE = 4096
# How long a shared store may take to answer 503 once its server is gone: its timeout (0.3 s in
# the launchers' options) and one retry, with room for a busy machine.
OUTAGE_BOUND = 2.0
NOW = 1_800_000_000.0


@dataclass
class Harness:
    """A store under test, its service (None for the memory store) and the memory store's clock."""

    name: str
    store: SessionStore
    service: Any
    clock: FakeClock

    def build(self, keys: list[bytes]) -> SessionStore:
        """Another store on the same service, with other record keys."""
        options = self.service.store_options() if self.service is not None else {}
        return build_store(self.name, options, StoreContext(keys, MAX_RECORD_SIZE, self.clock))

    async def until(self, condition: Callable[[], Awaitable[bool]], seconds: float) -> None:
        """Let ``seconds`` pass (the fake clock's, or the server's own), then wait for ``condition``.

        A shared store's server counts time itself: its expiry is waited for, not assumed.
        """
        if self.service is None:
            self.clock.advance(seconds)
            assert await condition()
            return
        deadline = time.monotonic() + seconds + 5
        while not await condition():
            assert time.monotonic() < deadline, "the store did not forget in time"
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def running(name: str, io_loop: Any) -> Iterator[Harness]:
    """The store ``name`` on its own service, closed afterwards."""
    launcher = STORES[name]
    clock = FakeClock(NOW)
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(launcher()) if launcher is not None else None
        options = service.store_options() if service is not None else {}
        store = build_store(name, options, StoreContext(RECORD_KEYS, MAX_RECORD_SIZE, clock))
        yield Harness(name, store, service, clock)
        io_loop.run_sync(store.close)


# A store with a server of its own starts a process: those cases are in the slow tier.
@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.slow] if STORES[name] else []) for name in STORES])
def harness(request: pytest.FixtureRequest, io_loop: Any) -> Iterator[Harness]:
    with running(request.param, io_loop) as running_store:
        yield running_store


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) for name in SHARED])
def shared(request: pytest.FixtureRequest, io_loop: Any) -> Iterator[Harness]:
    """A store others can reach too: its server can be written to directly, stopped and paused."""
    with running(request.param, io_loop) as running_store:
        yield running_store


SID = "A" * 43
OTHER = "B" * 43


def record(**data: Any) -> dict[str, Any]:
    return apply_operations(new_record(NOW), [Operation("set", k, v) for k, v in data.items()], NOW)


# Records ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_create_load_update_delete(harness: Harness):
    store = harness.store
    assert await store.create(SID, record(), ttl=60)
    loaded = await store.load(SID)
    assert loaded is not None and loaded.record == {"data": {}, "created_at": NOW, "last_seen": NOW}
    merged = await store.update(SID, [Operation("set", "x", 1), Operation("incr", "n", 2)], NOW + 5, 60, loaded)
    assert merged == {"data": {"x": 1, "n": 2}, "created_at": NOW, "last_seen": NOW + 5}
    reloaded = await store.load(SID)
    assert reloaded is not None and reloaded.record == merged
    await store.delete(SID)
    assert await store.load(SID) is None
    # A missing record is never brought back, with or without a loaded version.
    assert await store.update(SID, [Operation("set", "x", 1)], NOW, 60) is None
    assert await store.update(SID, [Operation("set", "x", 1)], NOW, 60, reloaded) is None
    assert await store.load(SID) is None
    await store.delete(SID)  # deleting a missing record is fine
    assert await store.ready()


@pytest.mark.gen_test(timeout=30)
async def test_create_on_an_existing_id_stores_nothing_and_says_so(harness: Harness):
    assert await harness.store.create(SID, record(owner="first"), ttl=60)
    assert not await harness.store.create(SID, record(owner="second"), ttl=60)
    loaded = await harness.store.load(SID)
    assert loaded is not None and loaded.record["data"] == {"owner": "first"}


@pytest.mark.gen_test(timeout=30)
async def test_the_version_token_rides_beside_the_record(harness: Harness):
    await harness.store.create(SID, record(n=1), ttl=60)
    loaded = await harness.store.load(SID)
    assert isinstance(loaded, Loaded) and set(loaded.record) == {"data", "created_at", "last_seen"}
    assert not loaded.stale_seal
    await harness.store.update(SID, [Operation("incr", "n", 1)], NOW, 60, loaded)
    after = await harness.store.load(SID)
    assert after is not None and after.version != loaded.version


@pytest.mark.gen_test(timeout=30)
async def test_the_privileged_mark_is_kept_through_updates_and_touches(harness: Harness):
    await harness.store.create(SID, new_record(NOW, privileged=True), ttl=60)
    await harness.store.update(SID, [Operation("set", "user", "max")], NOW + 1, 60)
    await harness.store.touch(SID, NOW + 2, 60, await harness.store.load(SID))
    loaded = await harness.store.load(SID)
    assert loaded is not None and loaded.record == {
        "data": {"user": "max"},
        "created_at": NOW,
        "last_seen": NOW + 2,
        "privileged": True,
    }


@pytest.mark.gen_test(timeout=30)
async def test_stored_data_does_not_alias_the_callers_objects(harness: Harness):
    data = record(items=[1])
    await harness.store.create(SID, data, ttl=60)
    data["data"]["items"].append(2)
    loaded = await harness.store.load(SID)
    assert loaded is not None and loaded.record["data"]["items"] == [1]


# Concurrent writers ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_updates_from_one_stale_load_lose_nothing(harness: Harness):
    await harness.store.create(SID, record(n=0), ttl=60)
    loaded = await harness.store.load(SID)
    # Every writer read the same version; all but one find it changed and apply to the newer one.
    writers = 25
    results = await asyncio.gather(
        *(
            harness.store.update(SID, [Operation("incr", "n", 1), Operation("set", f"w{i}", i)], NOW, 60, loaded)
            for i in range(writers)
        )
    )
    assert all(result is not None for result in results)
    final = await harness.store.load(SID)
    assert final is not None and final.record["data"]["n"] == writers
    assert all(final.record["data"][f"w{i}"] == i for i in range(writers))


@pytest.mark.gen_test(timeout=30)
async def test_a_touch_never_overwrites_a_write_that_came_after_its_load(harness: Harness):
    store = harness.store
    await store.create(SID, record(n=1), ttl=60)
    loaded = await store.load(SID)
    # Another request writes after this one loaded, and before its touch lands.
    await store.update(SID, [Operation("set", "n", 2)], NOW + 50, 600)
    assert await store.touch(SID, NOW + 100, 600, loaded)  # that write already refreshed it
    current = await store.load(SID)
    assert current is not None and current.record["data"] == {"n": 2} and current.record["last_seen"] == NOW + 50
    # Without a loaded version the touch reads the record first, then sets last_seen on it.
    assert await store.touch(SID, NOW + 200, 600)
    current = await store.load(SID)
    assert current is not None and current.record["data"] == {"n": 2} and current.record["last_seen"] == NOW + 200
    # Deleted (a logout in another tab) after the load: the touch finds nothing, brings nothing back.
    await store.delete(SID)
    assert not await store.touch(SID, NOW + 300, 600, current)
    assert not await store.touch(SID, NOW + 300, 600)
    assert await store.load(SID) is None


@pytest.mark.gen_test(timeout=30)
async def test_a_copy_is_written_against_only_while_it_is_the_stored_version(harness: Harness):
    store = harness.store
    await store.create(SID, record(n=0), ttl=60)
    loaded = await store.load(SID)
    assert loaded is not None and store.copy(SID) is None  # a load starts no copy
    assert await store.update(SID, [Operation("incr", "n", 1)], NOW + 1, 60, loaded) is not None
    copy = store.copy(SID)
    if harness.name not in KEEPS_COPIES:
        assert copy is None
        return
    # What the write stored, kept unconfirmed; a write against it makes the next copy.
    current = await store.load(SID)
    assert copy is not None and current is not None and not copy.confirmed
    assert copy.record == current.record and copy.version == current.version and current.record["data"] == {"n": 1}
    assert await store.update(SID, [Operation("incr", "n", 1)], NOW + 1, 60, copy) is not None
    copy = store.copy(SID)
    current = await store.load(SID)
    assert copy is not None and current is not None
    assert copy.record == current.record and copy.version == current.version and current.record["data"] == {"n": 2}
    # Another process writes: the copy is stale, and neither an update nor a touch writes against it.
    other = harness.build(RECORD_KEYS)
    try:
        copy = store.copy(SID)
        assert copy is not None
        assert await other.update(SID, [Operation("set", "by", "other")], NOW + 2, 60) is not None
        with pytest.raises(StaleCopy) as lost:
            await store.update(SID, [Operation("incr", "n", 1)], NOW + 3, 60, copy)
        assert store.copy(SID) is None
        with pytest.raises(StaleCopy) as lost_touch:
            await store.touch(SID, NOW + 3, 60, copy)
        current = await store.load(SID)
        assert current is not None and current.record["data"] == {"n": 2, "by": "other"}
        assert store.copy(SID) is None  # dropped by the lost write; the load starts none
        # What the lost writes found stored, when they say they found it, is what a load gives.
        for stale in (lost.value, lost_touch.value):
            if stale.found:
                assert stale.current is not None and stale.current.confirmed
                assert (stale.current.record, stale.current.version) == (current.record, current.version)
        started_from = lost.value.current if lost.value.found else current
        assert started_from is not None
        assert await store.update(SID, [Operation("incr", "n", 1)], NOW + 3, 60, started_from) is not None
        # Deleted by another process (a logout there): a stale copy, never a session brought back.
        copy = store.copy(SID)
        assert copy is not None
        await other.delete(SID)
        with pytest.raises(StaleCopy) as lost:
            await store.update(SID, [Operation("incr", "n", 1)], NOW + 4, 60, copy)
        assert await store.load(SID) is None and store.copy(SID) is None
        assert lost.value.current is None  # found gone, or not found at all: never a record
    finally:
        await other.close()
    # Another process writes, and this one loads: the load refreshes the copy it had.
    await store.create(OTHER, record(), ttl=60)
    await store.touch(OTHER, NOW + 5, 60, await store.load(OTHER))
    other = harness.build(RECORD_KEYS)
    try:
        await other.update(OTHER, [Operation("set", "by", "other")], NOW + 6, 60)
    finally:
        await other.close()
    loaded = await store.load(OTHER)
    copy = store.copy(OTHER)
    assert loaded is not None and copy is not None and copy.version == loaded.version
    assert copy.record["data"] == {"by": "other"}
    # Deleted here: no copy stays behind.
    await store.delete(OTHER)
    assert store.copy(OTHER) is None


@pytest.mark.gen_test(timeout=30)
async def test_writes_at_once_on_one_copy_leave_the_winners_write_as_the_copy(harness: Harness):
    store = harness.store
    await store.create(SID, record(n=0), ttl=60)
    loaded = await store.load(SID)
    assert loaded is not None and await store.update(SID, [Operation("incr", "n", 1)], NOW + 1, 60, loaded)
    copy = store.copy(SID)
    if harness.name not in KEEPS_COPIES:
        assert copy is None
        return
    assert copy is not None
    # Two requests of this process start on the same copy: one write is stored, the other loses
    # to it. The copy kept is the stored write's, not dropped with the loser's, so a request
    # arriving next starts on it with no load.
    results = await asyncio.gather(
        *(store.update(SID, [Operation("incr", "n", 1)], NOW + 2, 60, copy) for _ in range(2)),
        return_exceptions=True,
    )
    assert sorted(type(result).__name__ for result in results) == ["StaleCopy", "dict"]
    kept, current = store.copy(SID), await store.load(SID)
    assert kept is not None and current is not None and current.record["data"] == {"n": 2}
    assert (kept.record, kept.version) == (current.record, current.version)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("name", SHARED)
async def test_two_processes_sharing_the_store_lose_no_increment(name: str):
    with STORES[name]() as service:
        env = {"SESSION_STORE": name, "SESSION_SECRETS": test_secret()}
        env.update({env_name(name, option): value for option, value in service.store_options().items()})
        with app_processes(env, 2) as (first, second):
            client = AsyncHTTPClient(force_instance=True, max_clients=100)
            try:
                r = await client.fetch(first.base_url + "/api")
                headers = {"Cookie": r.headers["Set-Cookie"].split(";")[0]}
                n = 200
                results = await asyncio.gather(
                    *(
                        client.fetch((first if i % 2 else second).base_url + "/api", headers=headers, raise_error=False)
                        for i in range(n)
                    )
                )
                assert [r.code for r in results] == [200] * n
                final = await client.fetch(second.base_url + "/api", headers=headers)
                assert final.body.decode() == f"You visited this page {n + 2} times"
            finally:
                client.close()


# Expiry ---------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_records_expire_after_their_ttl_and_writes_extend_it(harness: Harness):
    store = harness.store
    await store.create(SID, record(), ttl=1)
    # memcached's clock ticks once a second: a 1 s lifetime may end at the next tick, a few
    # milliseconds on. OTHER must outlive the update that follows.
    await store.create(OTHER, record(), ttl=2)
    assert await store.update(OTHER, [Operation("set", "k", 1)], NOW, 600) is not None

    async def forgotten() -> bool:
        return await store.load(SID) is None

    await harness.until(forgotten, 1)
    assert await store.load(OTHER) is not None  # its update kept it 600 s more


@pytest.mark.gen_test(timeout=30)
async def test_the_server_keeps_a_record_for_its_ttl_in_whole_seconds(shared: Harness):
    store: Any = shared.store
    await store.create(SID, record(), ttl=99.2)
    assert 95 <= shared.service.ttl(store.key(SID)) <= 100
    loaded = await store.load(SID)
    await store.touch(SID, NOW + 1, 500, loaded)
    assert 495 <= shared.service.ttl(store.key(SID)) <= 500
    await store.update(SID, [Operation("set", "k", 1)], NOW + 2, 0.2)
    # Rounded up to 1 s, never to 0 (memcached: never expires; -1 here). memcached's clock ticks
    # once a second, so it may have ended already at the next tick.
    ttl = shared.service.ttl(store.key(SID))
    assert ttl is None or 0 < ttl <= 1
    if shared.name == "redis":
        assert ttl == 1  # Redis counts time in milliseconds


# Values the store refuses, and values it must not trust ---------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_oversize_and_non_json_values_are_refused_and_nothing_is_stored(harness: Harness):
    store = harness.store
    with pytest.raises(StoreValueError):
        await store.create(SID, record(x=object()), ttl=60)
    with pytest.raises(StoreValueError):
        await store.create(SID, record(x="y" * MAX_RECORD_SIZE), ttl=60)
    assert await store.load(SID) is None
    await store.create(SID, record(n=1), ttl=60)
    loaded = await store.load(SID)
    with pytest.raises(StoreValueError):
        await store.update(SID, [Operation("set", "x", "y" * MAX_RECORD_SIZE)], NOW, 60, loaded)
    with pytest.raises(StoreValueError):
        await store.update(SID, [Operation("set", "x", {1, 2})], NOW, 60)
    after = await store.load(SID)
    assert after is not None and after.record["data"] == {"n": 1}


def hostile_values(key: str) -> list[bytes]:
    """What someone with write access to the store might leave under ``key``."""
    other_seal = RecordSeal(record_keys([test_secret()]))
    ours = RecordSeal(RECORD_KEYS)
    a_record = json.dumps({"data": {"user": "max@gmail.com"}, "created_at": NOW, "last_seen": NOW}).encode()
    return [
        b"",
        b"\x80\x81",
        a_record,  # no MAC
        other_seal.seal(key, a_record),  # a MAC under a key we do not hold
        ours.seal("session:" + "0" * 64, a_record),  # our MAC, for another session's key
        ours.seal(key, b"[" * 10_000),  # ours, but not a record
        ours.seal(key, b'{"data": [], "created_at": 1, "last_seen": 1}'),
        ours.seal(key, dump_record(record(x="y" * MAX_RECORD_SIZE))),  # ours, larger than the limit
    ]


@pytest.mark.gen_test(timeout=30)
async def test_hostile_stored_values_read_as_no_session(shared: Harness):
    store: Any = shared.store
    key = store.key(SID)
    for value in hostile_values(key):
        shared.service.write_raw(key, value)
        assert await store.load(SID) is None, value[:40]
        assert await store.update(SID, [Operation("set", "user", "eve")], NOW, 60) is None
        assert not await store.touch(SID, NOW, 60)
        assert not await store.create(SID, record(), 60)  # an id someone else holds is never taken over


@pytest.mark.gen_test(timeout=30)
async def test_a_record_sealed_with_an_older_key_is_read_and_marked_stale(shared: Harness):
    old = shared.store
    await old.create(SID, record(n=1), ttl=60)
    rotated = shared.build([*record_keys([test_secret()]), *RECORD_KEYS])
    try:
        loaded = await rotated.load(SID)
        assert loaded is not None and loaded.stale_seal and loaded.record["data"] == {"n": 1}
        assert await rotated.touch(SID, NOW + 1, 60, loaded)
        again = await rotated.load(SID)
        assert again is not None and not again.stale_seal
        assert await old.load(SID) is None  # sealed under the newest key, which the old store lacks
    finally:
        await rotated.close()


# Counters -------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_counter_someone_else_overwrote_counts_again_from_one(shared: Harness):
    store: Any = shared.store
    key = "login-account\0max@gmail.com"
    # Someone with write access left something that is not a count under the counter's key.
    shared.service.write_raw(store.counter_key(key), b"not a number")
    assert [await store.count(key, 60) for _ in range(3)] == [1, 2, 3]  # no StoreUnavailable
    assert await store.ready()


@pytest.mark.gen_test(timeout=30)
async def test_a_counter_counts_in_a_fixed_window_from_its_first_hit(harness: Harness):
    store = harness.store
    key = "login\0address\0192.0.2.1"
    # A 2 s window: memcached's clock ticks once a second, so a 1 s one may end at the next tick.
    assert [await store.count(key, 2) for _ in range(3)] == [1, 2, 3]
    assert await store.count("another", 60) == 1

    async def started_again() -> bool:
        return await store.count(key, 2) == 1

    await harness.until(started_again, 2)
    if harness.service is not None:
        # Kept under a digest: no client input (an address, an email) reaches the server.
        assert not [k for k in harness.service.stored_keys() if "192.0.2.1" in k or "another" in k]


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_counts_all_count(harness: Harness):
    counts = await asyncio.gather(*(harness.store.count("k", 60) for _ in range(40)))
    assert sorted(counts) == list(range(1, 41))


# Outages --------------------------------------------------------------------------------------------


async def refused_in_time(call: Awaitable[Any]) -> None:
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(call, OUTAGE_BOUND)


@pytest.mark.gen_test(timeout=60)
async def test_an_outage_raises_store_unavailable_within_the_timeout_and_passes(shared: Harness):
    store = shared.store
    await store.create(SID, record(n=1), ttl=60)
    loaded = await store.load(SID)
    shared.service.stop()
    await refused_in_time(store.load(SID))
    await refused_in_time(store.create(OTHER, record(), 60))
    await refused_in_time(store.update(SID, [Operation("incr", "n", 1)], NOW, 60, loaded))
    await refused_in_time(store.touch(SID, NOW, 60, loaded))
    await refused_in_time(store.delete(SID))
    await refused_in_time(store.count("k", 60))
    assert not await asyncio.wait_for(store.ready(), OUTAGE_BOUND)
    shared.service.start()  # same port: the store finds it again by itself

    async def recovered() -> bool:
        return await store.ready()

    await shared.until(recovered, 0)
    assert await store.create(OTHER, record(n=5), 60)
    back = await store.load(OTHER)
    assert back is not None and back.record["data"] == {"n": 5}


@pytest.mark.gen_test(timeout=60)
async def test_a_paused_server_is_an_outage_within_the_timeout(shared: Harness):
    await shared.store.create(SID, record(n=1), ttl=60)
    shared.service.pause()
    try:
        await refused_in_time(shared.store.load(SID))
        await refused_in_time(shared.store.update(SID, [Operation("incr", "n", 1)], NOW, 60))
    finally:
        shared.service.resume()

    async def recovered() -> bool:
        with contextlib.suppress(StoreUnavailable):
            return await shared.store.load(SID) is not None
        return False

    await shared.until(recovered, 0)


@pytest.mark.gen_test(timeout=60)
async def test_through_http_an_outage_is_a_503_and_readyz_fails_then_recovers(
    shared: Harness, http_server, make_browser, users
):
    config = load_settings("test", environ={}, session_secrets=(test_secret(),), store=shared.name)
    app = SessionApplication(config, shared.store, users, clock=shared.clock)
    serve(http_server, app)
    browser = make_browser()
    assert (await browser.get("/api")).code == 200
    assert (await browser.login()).code == 200
    shared.service.stop()
    for method, path in (("GET", "/api/login"), ("GET", "/api/balance"), ("GET", "/api"), ("POST", "/api/logout")):
        r = await asyncio.wait_for(
            browser.fetch(method, path, json_body={} if method == "POST" else None), OUTAGE_BOUND
        )
        assert r.code == 503, path
        assert r.headers["Retry-After"] and body_json(r)["errorMessage"]
    assert (await browser.get("/readyz")).code == 503
    assert (await browser.get("/livez")).code == 200
    r = await make_browser().login()  # a login with nowhere to store its session
    assert r.code == 503 and "sid=" not in r.headers.get("Set-Cookie", "")
    assert "sid" in browser.cookies  # a 503 never clears the browser's cookie
    shared.service.start()

    async def ready() -> bool:
        code: int = (await browser.get("/readyz")).code
        return code == 200

    await shared.until(ready, 0)
    fresh = make_browser()
    assert (await fresh.login()).code == 200
    assert body_json(await fresh.get("/api/balance")) == {"balance": 53762}
