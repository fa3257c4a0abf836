"""The stores' counters (`SessionStore.count`): windows, bounds, keys, sharing, and outages.

The memory store with the fake clock; memcached for real, on a free port.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from handlers.app import SessionApplication
from settings import Settings, load_settings
from stores.base import StoreUnavailable
from stores.memcached import MemcachedStore
from stores.memory import MemoryStore
from stores.sealing import record_keys
from stores.users import UserDirectory
from tests.conftest import FakeClock, body_json, serve, test_secret
from tests.services import Memcached


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    with Memcached() as server:
        yield server


def memcached_store(server: Memcached) -> MemcachedStore:
    return MemcachedStore(
        [server.address], record_keys=record_keys([test_secret()]), timeout=0.3, connect_timeout=0.3, threads=2
    )


@pytest.mark.gen_test
async def test_memory_counter_counts_in_a_fixed_window_from_its_first_hit(clock: FakeClock):
    store = MemoryStore(10, clock=clock)
    assert [await store.count("k", 60) for _ in range(3)] == [1, 2, 3]
    clock.advance(59)
    assert await store.count("k", 60) == 4  # hits do not extend the window
    clock.advance(1)
    assert await store.count("k", 60) == 1
    assert await store.count("other", 60) == 1


@pytest.mark.gen_test
async def test_memory_counters_have_a_bound_of_their_own(clock: FakeClock):
    store = MemoryStore(10, clock=clock, max_counters=3)
    for key in ("a", "b", "c"):
        await store.count(key, 60)
    await store.count("a", 60)  # "b" is now the least recently used
    await store.count("d", 60)
    assert await store.count("a", 60) == 3
    assert await store.count("b", 60) == 1  # forgotten: starts again
    assert len(store) == 0  # counters are not sessions


@pytest.mark.gen_test
async def test_memcached_counter_is_incr_and_add_under_a_hashed_key(memcached: Memcached):
    store = memcached_store(memcached)
    try:
        key = "login\0pair\0127.0.0.1\0max@gmail.com"
        assert [await store.count(key, 900) for _ in range(3)] == [1, 2, 3]
        stored = "session:count:" + hashlib.sha256(key.encode()).hexdigest()
        assert memcached.stored_keys() == [stored]  # no email, no address, no session key
        assert store.counter_key(key) == stored
        ttl = memcached.ttl(stored)
        assert ttl is not None and 895 <= ttl <= 900
        # The window is fixed: counting does not extend it.
        await store.count(key, 900)
        ttl_after = memcached.ttl(stored)
        assert ttl_after is not None and ttl_after <= ttl
    finally:
        store.shutdown()


@pytest.mark.gen_test
async def test_a_counter_memcached_has_forgotten_starts_again_at_one(memcached: Memcached):
    store = memcached_store(memcached)
    try:
        assert await store.count("k", 1) == 1
        memcached.command(b"delete " + store.counter_key("k").encode())  # expired or evicted
        assert await store.count("k", 1) == 1
    finally:
        store.shutdown()


@pytest.mark.gen_test
async def test_memcached_counter_outage_raises_store_unavailable(memcached: Memcached):
    store = memcached_store(memcached)
    try:
        memcached.stop()
        with pytest.raises(StoreUnavailable):
            await store.count("k", 60)
    finally:
        store.shutdown()


def memcached_app(
    server: Memcached, users: UserDirectory, clock: FakeClock, secret: str | None = None, **changes: object
) -> SessionApplication:
    secrets = (secret or test_secret(),)
    config: Settings = load_settings("test", environ={}, session_secrets=secrets, store="memcached", **changes)
    return SessionApplication(config, memcached_store(server), users, clock=clock)


@pytest.mark.gen_test(timeout=60)
async def test_processes_on_one_memcached_share_the_login_budget(
    http_server, http_client, base_url, memcached: Memcached, users: UserDirectory, clock: FakeClock
):
    # Two applications (two processes' worth of state, one deployment's secrets) on one memcached:
    # attempts on either count.
    secret = test_secret()
    apps = [memcached_app(memcached, users, clock, secret, login_pair_budget=4) for _ in range(2)]
    codes = []
    try:
        for i in range(6):
            serve(http_server, apps[i % 2])
            r = await http_client.fetch(
                base_url + "/api/login",
                method="POST",
                body=json.dumps({"email": "max@gmail.com", "password": "wrong"}),
                headers={"Content-Type": "application/json", "Origin": base_url},
                raise_error=False,
            )
            codes.append(r.code)
    finally:
        for app in apps:
            await app.store.close()
    assert codes == [401, 401, 401, 401, 429, 429]


@pytest.mark.gen_test(timeout=60)
async def test_a_login_that_cannot_be_counted_is_refused_with_503_and_not_hashed(
    http_server, http_client, base_url, memcached: Memcached, users: UserDirectory, clock: FakeClock
):
    app = serve(http_server, memcached_app(memcached, users, clock))
    memcached.stop()
    hashed = users.hashes_run
    try:
        r = await http_client.fetch(
            base_url + "/api/login",
            method="POST",
            body=json.dumps({"email": "max@gmail.com", "password": "1234"}),
            headers={"Content-Type": "application/json", "Origin": base_url},
            raise_error=False,
        )
    finally:
        await app.store.close()
    assert r.code == 503
    assert r.headers["Retry-After"]
    assert body_json(r)["errorMessage"]
    assert users.hashes_run == hashed  # fails closed: no count, no password check


@pytest.mark.gen_test
async def test_a_flood_of_one_off_counters_cannot_evict_a_spent_budget(clock: FakeClock):
    store = MemoryStore(100, clock=clock, max_counters=50)
    for _ in range(11):  # a pair's budget spent by repeated attempts
        spent = await store.count("login-pair-victim", 900)
    for n in range(5_000):  # junk: a new name every attempt, a hundred times the bound
        await store.count(f"junk-{n}", 900)
    assert await store.count("login-pair-victim", 900) == spent + 1


@pytest.mark.gen_test
async def test_a_non_number_written_into_a_memcached_counter_restarts_it(memcached: Memcached, caplog):
    store = memcached_store(memcached)
    try:
        assert await store.count("login-account-max", 60) == 1
        memcached.set_raw(store.counter_key("login-account-max"), b"abc", exptime=0)
        assert await store.count("login-account-max", 60) == 1  # no StoreUnavailable
        assert await store.count("login-account-max", 60) == 2
        assert await store.ready()
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        assert 0 < (memcached.ttl(store.counter_key("login-account-max")) or 0) <= 60
    finally:
        await store.close()
