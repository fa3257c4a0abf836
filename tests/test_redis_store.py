"""The Redis store beyond the contract: its keys and values, ACL users, durability across a
restart with the append-only file, and a Sentinel failover, against real redis-server processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from handlers.app import SessionApplication
from server import session_store
from settings import Settings, load_settings
from stores import build_store
from stores.base import Loaded, Operation, StaleCopy, StoreContext, StoreUnavailable
from stores.redis import RedisStore
from stores.sealing import RecordSeal, record_keys
from tests.conftest import MAX, Browser, body_json, serve, test_secret
from tests.services import Redis, RedisSentinel, TestPKI, free_port, wait_for_port

log = logging.getLogger(__name__)
# The failover bound docs/STORES.md states: Sentinel's down-after (1 s here), its election and
# the promotion, and the store's next connection finding the new primary.
FAILOVER_BOUND = 15.0

pytestmark = pytest.mark.slow


def redis_settings(**options: Any) -> Settings:
    return load_settings(
        "test",
        environ={},
        session_secrets=(test_secret(),),
        store="redis",
        store_options={"redis": {"timeout": 0.3, "connect_timeout": 0.3, **options}},
    )


def redis_app(http_server: Any, users: Any, clock: Any, **options: Any) -> SessionApplication:
    config = redis_settings(**options)
    return serve(http_server, SessionApplication(config, session_store(config, clock), users, clock=clock))


def session_id_of(browser: Browser, app: SessionApplication) -> str:
    session_id, _ = app.sessions.verify(browser.cookies.get("sid"))
    assert session_id is not None
    return session_id


async def until(condition: Any, seconds: float) -> float:
    """Poll ``condition`` until it holds; how long that took (fails past ``seconds``)."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < seconds, "not within the stated time"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def redis() -> Iterator[Redis]:
    with Redis() as server:
        yield server


@pytest.mark.gen_test(timeout=30)
async def test_a_session_is_one_hash_under_a_hashed_key_with_a_sealed_json_record(
    http_server, users, clock, browser, redis: Redis
):
    app = redis_app(http_server, users, clock, url=redis.url)
    await browser.get("/api")
    await browser.login()
    session_id = session_id_of(browser, app)
    key = "session:" + hashlib.sha256(session_id.encode()).hexdigest()
    assert [k for k in redis.stored_keys() if not k.startswith("session:count:")] == [key]
    assert redis.command("TYPE", key) == "hash"
    version, sealed = redis.command("HMGET", key, "v", "r")
    assert version.isdigit() and session_id.encode() not in sealed
    opened = RecordSeal(record_keys(app.config.session_secrets)).open(key, sealed)
    assert opened is not None  # JSON behind the MAC: never a pickle
    assert json.loads(opened.payload)["data"] == {"page_views": 1, "user": MAX["email"]}
    assert 1795 <= redis.command("TTL", key) <= 1800


@pytest.mark.gen_test(timeout=30)
async def test_an_acl_user_and_password_from_the_url(http_server, users, clock, browser):
    password = test_secret()
    # The user docs/STORES.md sets up: its keys and the commands the store (and its scripts) run.
    commands = "+hmget +evalsha +script|load +unlink +ping +exists +hset +hget +hincrby +expire +incr +ttl +set"
    acl = ["--user", "default", "off", "--user", "sessions", "on", f">{password}", "~session:*", "-@all"]
    acl += commands.split()
    with Redis(*acl) as server:
        app = redis_app(http_server, users, clock, url=f"redis://sessions:{password}@127.0.0.1:{server.port}/0")
        assert (await browser.login()).code == 200
        await browser.get("/api")
        assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
        assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
        assert (await browser.post("/api/logout", {})).code == 200
        assert (await browser.get("/readyz")).code == 200  # its probe is a write the user may make
        wrong = RedisStore.from_options(
            {"url": f"redis://sessions:not-{password[:8]}@127.0.0.1:{server.port}/0"}, _context(app)
        )
        try:
            assert not await wrong.ready()  # a refused password is an outage (503), not a crash
        finally:
            await wrong.close()


def _context(app: SessionApplication) -> Any:
    from stores.base import StoreContext

    return StoreContext(record_keys(app.config.session_secrets))


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
async def test_with_the_append_only_file_a_session_survives_a_redis_restart(
    http_server, users, clock, browser, appendfsync
):
    with Redis(appendfsync=appendfsync) as server:
        redis_app(http_server, users, clock, url=server.url)
        assert (await browser.login()).code == 200
        await browser.get("/api")
        # "always": even a crash loses nothing acknowledged. "everysec" (Redis's default) loses up
        # to a second on a crash, nothing on a clean shutdown.
        server.stop(signal_for(appendfsync))
        server.start()

        async def ready() -> bool:
            code: int = (await browser.get("/readyz")).code
            return code == 200

        await until(ready, 10)
        assert body_json(await browser.get("/api/login")) == {"loggedIn": True}
        assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"


@pytest.mark.gen_test(timeout=60)
async def test_a_restarted_redis_costs_no_request_an_error(http_server, users, clock, make_browser):
    # The old process's end closes every connection the store keeps; none may fail a request.
    with Redis(appendfsync="always") as server:
        redis_app(http_server, users, clock, url=server.url)
        browsers = [make_browser() for _ in range(12)]
        for _ in range(3):  # bursts from many browsers put several connections to use
            assert {r.code for r in await asyncio.gather(*(b.get("/api") for b in browsers))} == {200}
        server.stop(signal_for("everysec"))
        server.start()  # same port, same sessions (append-only file)
        await asyncio.sleep(0.2)  # the closed connections' ends have arrived
        answers = [await b.get("/api") for b in browsers]
        assert [r.code for r in answers] == [200] * len(browsers)
        assert {r.body.decode() for r in answers} == {"You visited this page 4 times"}


def signal_for(appendfsync: str) -> int:

    return signal.SIGKILL if appendfsync == "always" else signal.SIGTERM


@pytest.mark.gen_test(timeout=90)
async def test_sessions_keep_working_through_a_sentinel_failover(http_server, users, clock, make_browser):
    with Redis() as primary, Redis("--replicaof", "127.0.0.1", str(primary.port)) as replica:
        sentinel = RedisSentinel(primary, down_after_ms=1000)
        try:
            sentinel.start()
            app = redis_app(http_server, users, clock, sentinels=sentinel.address, sentinel_service=sentinel.service)

            async def replica_known() -> bool:
                waited: int = primary.command("WAIT", 1, 1000)
                return bool(sentinel.replicas()) and waited == 1

            await until(replica_known, 20)  # the sentinel learns of the replica from the primary
            browsers = [make_browser() for _ in range(5)]
            for b in browsers:
                assert (await b.login()).code == 200
                assert (await b.get("/api")).code == 200
            assert primary.command("WAIT", 1, 2000) == 1  # replicated before the primary dies
            primary.stop()
            codes: set[int] = set()

            async def serving() -> bool:
                code: int = (await browsers[0].get("/api/balance")).code
                codes.add(code)
                return code == 200

            took = await until(serving, FAILOVER_BOUND)
            log.warning("sessions served again %.1f s after the primary died", took)
            assert codes <= {200, 503}  # 503 while there is no primary, never a 500
            assert sentinel.primary_port() == replica.port
            for b in browsers:
                assert body_json(await b.get("/api/balance")) == {"balance": 53762}
                assert (await b.get("/api")).body.decode() == "You visited this page 2 times"
            assert (await make_browser().login()).code == 200
            await app.store.close()
        finally:
            sentinel.stop()


@pytest.mark.gen_test(timeout=30)
async def test_a_read_only_replica_is_not_ready(http_server, users, clock, make_browser):
    # It answers PING and reads, but every login, counter and logout on it is a 503.
    with Redis() as primary, Redis("--replicaof", "127.0.0.1", str(primary.port)) as replica:
        redis_app(http_server, users, clock, url=replica.url)
        browser = make_browser()
        r = await browser.get("/readyz")
        assert r.code == 503 and body_json(r)["errorMessage"]
        assert (await browser.login()).code == 503
        replica.command("REPLICAOF", "NO", "ONE")  # promoted: writable, so ready
        assert (await browser.get("/readyz")).code == 200
        assert (await browser.login()).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_redis_that_refuses_writes_for_memory_is_still_ready(http_server, users, clock, make_browser):
    # Out of memory under noeviction, Redis refuses writes but still serves reads: logged-in
    # users browse on. Not a reason to take every instance out of the load balancer.
    with Redis("--maxmemory", "1", "--maxmemory-policy", "noeviction") as server:
        redis_app(http_server, users, clock, url=server.url)
        browser = make_browser()
        assert (await browser.login()).code == 503  # the write refused
        assert (await browser.get("/readyz")).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_sentinel_that_does_not_answer_is_a_503_within_the_timeouts(http_server, users, clock, make_browser):
    with Redis() as primary:
        sentinel = RedisSentinel(primary, down_after_ms=1000)
        try:
            sentinel.start()
            sentinel.pause()  # up, but answering nothing
            app = redis_app(http_server, users, clock, sentinels=sentinel.address, sentinel_service=sentinel.service)
            browser = make_browser()
            # Bounded by the store's timeouts (0.3 s each) rather than redis-py's retries with
            # backoff (13-15 s before): the client gives up at 5 s, which fails the test.
            r = await browser.client.fetch(browser.base_url + "/api", request_timeout=5, raise_error=False)
            assert (r.code, r.headers.get("Retry-After")) == (503, "2")
            sentinel.resume()
            await app.store.close()
        finally:
            sentinel.stop()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("username", [None, "watcher"])
async def test_sentinels_that_ask_for_a_password(http_server, users, clock, make_browser, username):
    password = test_secret()
    # requirepass, or an ACL user (the default user off, so the password alone is not enough).
    with Redis() as primary:
        sentinel = RedisSentinel(primary, password=password, username=username)
        try:
            sentinel.start()
            assert sentinel.primary_port() == primary.port
            options = {"sentinels": sentinel.address, "sentinel_service": sentinel.service}
            credentials = {"sentinel_password": password, **({"sentinel_username": username} if username else {})}
            app = redis_app(http_server, users, clock, **options, **credentials)
            browser = make_browser()
            assert (await browser.get("/readyz")).code == 200
            assert (await browser.login()).code == 200
            assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
            await app.store.close()
            wrong: list[dict[str, str]] = [{}, {**credentials, "sentinel_password": "not-" + password[:8]}]
            if username:
                wrong.append({"sentinel_password": password})  # the user's password, for the default user
            for credentials in wrong:
                store = RedisStore.from_options({**options, **credentials, "timeout": "0.3"}, _context(app))
                try:  # the primary is never found: an outage (503), not a crash
                    assert not await store.ready()
                    with pytest.raises(StoreUnavailable):
                        await store.load("a-session")
                finally:
                    await store.close()
        finally:
            sentinel.stop()


@pytest.mark.gen_test
async def test_busy_polling_ends_once_the_answers_are_in(redis: Redis):
    context = StoreContext(record_keys([test_secret()]), 4096, time.time)
    store = RedisStore.from_options({"url": redis.url, "busy_poll": "1000"}, context)
    try:
        assert store._busy_poll.bound == 0.001
        assert await store.load("no-such-session") is None  # connected
        waiting = asyncio.ensure_future(store.load("no-such-session"))
        polled_while_waiting = False
        while not waiting.done():
            polled_while_waiting |= store._busy_poll.polling
            await asyncio.sleep(0)
        assert waiting.result() is None
        for _ in range(3):
            await asyncio.sleep(0)
        assert polled_while_waiting and not store._busy_poll.polling
    finally:
        await store.close()


def test_busy_poll_is_read_in_microseconds_and_bounded():
    assert RedisStore.check_options({}).busy_poll == 200
    assert RedisStore.check_options({"busy_poll": "0"}).busy_poll == 0
    with pytest.raises(ValueError, match="busy_poll"):
        RedisStore.check_options({"busy_poll": "1001"})


class NotRedis:
    """A loopback server that speaks the Redis protocol and answers every command with what
    ``replies`` holds for its name (``+OK`` otherwise): replies of shapes Redis never sends."""

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.replies = replies
        self.server: asyncio.Server | None = None
        self.serving: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            while True:
                header = await reader.readline()
                if not header:
                    return
                parts = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(size + 2))[:-2])
                writer.write(self.replies.get(parts[0].upper(), b"+OK\r\n"))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"HMGET", b":7\r\n"),  # an integer where two values belong
        (b"HMGET", b"*3\r\n$1\r\n1\r\n$1\r\nx\r\n$1\r\ny\r\n"),  # three values
        (b"HMGET", b"$5\r\nhello\r\n"),  # one string
    ],
)
async def test_a_load_answered_in_a_shape_redis_never_sends_is_an_outage(command: bytes, reply: bytes):
    async with NotRedis({command: reply}) as url:
        store = not_redis_store(url)
        try:
            with pytest.raises(StoreUnavailable):
                await store.load("a-session")
        finally:
            await store.close()


PAIR = b"*2\r\n$1\r\n1\r\n$1\r\nx\r\n"  # a version and a record that does not open
UNAVAILABLE = "unavailable"


async def outcome(call: Any) -> Any:
    """What a store call returned, or UNAVAILABLE for StoreUnavailable."""
    try:
        return await call
    except StoreUnavailable:
        return UNAVAILABLE


def not_redis_store(url: str) -> RedisStore:
    return RedisStore.from_options({"url": url}, StoreContext(record_keys([test_secret()]), 4096, time.time))


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("reply", "update", "touch", "create"),
    [
        (b"$3\r\nabc\r\n", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE),  # a string
        (b"*1\r\n$1\r\n1\r\n", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE),  # one value
        (b"+\xff\xfe\r\n", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE),  # a status, not ASCII
        (b"*2\r\n:1\r\n:2\r\n", None, True, UNAVAILABLE),  # a pair whose record does not open
        (b":2\r\n", {"created_at": 1.0, "last_seen": 2.0, "data": {}}, True, UNAVAILABLE),  # stored
        (b"-NOSCRIPT No matching script\r\n", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE),  # never loaded
    ],
)
async def test_scripts_answered_in_a_shape_redis_never_sends_are_an_outage(
    reply: bytes, update: Any, touch: Any, create: Any
):
    record = {"created_at": 1.0, "last_seen": 1.0, "data": {}}
    async with NotRedis({b"EVALSHA": reply, b"HMGET": PAIR}) as url:
        store = not_redis_store(url)
        try:
            assert await outcome(store.count("login:someone", 60)) == (2 if reply == b":2\r\n" else UNAVAILABLE)
            assert await outcome(store.update("a-session", [], 2.0, 60, Loaded(record, b"1"))) == update
            assert await outcome(store.touch("a-session", 2.0, 60, Loaded(record, b"1"))) == touch
            assert await outcome(store.create("a-session", record, 60)) == create
        finally:
            await store.close()


@pytest.mark.gen_test
async def test_other_commands_answered_as_redis_never_does():
    async with NotRedis({b"UNLINK": b"-WRONGTYPE not a key's type\r\n", b"SET": b":1\r\n"}) as url:
        store = not_redis_store(url)
        try:
            assert await outcome(store.delete("a-session")) == UNAVAILABLE
            assert await store.ready() is False
        finally:
            await store.close()
    async with NotRedis({b"SET": b"+OK\r\n", b"EVALSHA": b":1\r\n"}) as url:
        store = not_redis_store(url)
        try:  # the same harness, answered as Redis would
            assert await store.ready() is True
            assert await store.create("a-session", {"created_at": 1.0, "last_seen": 1.0, "data": {}}, 60) is True
        finally:
            await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_copies_are_forgotten_at_a_failure_a_failover_may_have_moved_the_versions(redis: Redis):
    # After a failover the new primary may hold other records under the same version numbers
    # (replication is asynchronous): a copy made before the failure is never written against.
    store = build_store("redis", {**redis.store_options()}, StoreContext(record_keys([test_secret()])))
    try:
        record = {"data": {}, "created_at": 1.0, "last_seen": 1.0}
        assert await store.create("a-session", record, 60) and await store.create("b-session", record, 60)
        for session_id in ("a-session", "b-session"):  # a write starts a copy
            assert await store.touch(session_id, 2.0, 60, await store.load(session_id))
            assert store.copy(session_id) is not None
        redis.stop()
        with pytest.raises(StoreUnavailable):
            await store.load("a-session")
        assert store.copy("a-session") is None and store.copy("b-session") is None
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_copy_never_passes_for_a_record_a_restore_brought_back_and_another_process_wrote(redis: Redis):
    # A restore (or a failover) that lost this process's last write brings back the version
    # before it; another process then writes. Were versions a count, that write would take the
    # copy's number again and the copy's stale record would overwrite it.
    context = StoreContext(record_keys([test_secret()]))
    store, other = (build_store("redis", redis.store_options(), context) for _ in range(2))
    try:
        record = {"data": {"n": 0}, "created_at": 1.0, "last_seen": 1.0}
        assert await store.create("a-session", record, 60)
        loaded = await store.load("a-session")
        assert loaded is not None
        key = store.key("a-session")  # type: ignore[attr-defined]
        before = redis.command("HMGET", key, "v", "r")
        assert await store.update("a-session", [Operation("set", "n", 1)], 2.0, 60, loaded) is not None
        copy = store.copy("a-session")
        assert copy is not None
        redis.command("HSET", key, "v", before[0], "r", before[1])  # the write is lost
        assert await other.update("a-session", [Operation("set", "by", "other")], 3.0, 60) is not None
        with pytest.raises(StaleCopy):
            await store.update("a-session", [Operation("set", "n", 2)], 4.0, 60, copy)
        current = await other.load("a-session")
        assert current is not None and current.record["data"] == {"n": 0, "by": "other"}
    finally:
        await store.close()
        await other.close()


@pytest.mark.gen_test(timeout=30)
async def test_writers_of_one_session_take_turns_and_a_cancelled_one_passes_its_turn_on(redis: Redis):
    # Writers of one session in one process queue behind each other. One cancelled while it
    # waits (its request gone), or just after its turn came, must not hold up those behind it.
    store = build_store("redis", redis.store_options(), StoreContext(record_keys([test_secret()])))
    try:
        record = {"data": {"n": 0}, "created_at": 1.0, "last_seen": 1.0}
        assert await store.create("a-session", record, 60)
        bump = [Operation("incr", "n", 1)]
        writers = [asyncio.ensure_future(store.update("a-session", bump, 2.0, 60)) for _ in range(6)]
        hand_on = store._next_turn  # type: ignore[attr-defined]

        def hand_on_then_cancel(key: str, queue: Any) -> None:
            hand_on(key, queue)
            if not writers[1].done():  # the first writer just gave it the turn
                writers[1].cancel()

        store._next_turn = hand_on_then_cancel  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # every writer has started: the first at work, five waiting
        writers[3].cancel()
        done = await asyncio.wait_for(asyncio.gather(*writers, return_exceptions=True), 5)
        assert [w.cancelled() for w in writers] == [False, True, False, True, False, False]
        assert all(isinstance(r, dict) for w, r in zip(writers, done, strict=True) if not w.cancelled())
        stored = await store.load("a-session")
        assert stored is not None and stored.record["data"]["n"] == 4
        assert store._queues == {}  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_waiting_writer_whose_coroutine_is_closed_holds_up_nobody(redis: Redis):
    # A coroutine closed rather than cancelled (GeneratorExit where it waits) leaves the queue too.
    store = build_store("redis", redis.store_options(), StoreContext(record_keys([test_secret()])))
    try:
        assert await store.create("a-session", {"data": {"n": 0}, "created_at": 1.0, "last_seen": 1.0}, 60)
        bump = [Operation("incr", "n", 1)]
        first = asyncio.ensure_future(store.update("a-session", bump, 2.0, 60))
        await asyncio.sleep(0)  # at work
        waiting = store.update("a-session", bump, 2.0, 60)
        waiting.send(None)  # driven by hand as far as its wait for the turn
        waiting.close()
        await first
        after = await asyncio.wait_for(store.update("a-session", bump, 3.0, 60), 5)
        assert after is not None and after["data"]["n"] == 2
        assert store._queues == {}  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_sessions_through_a_unix_socket(http_server, users, clock, browser):
    with Redis(unix_socket=True) as server:
        redis_app(http_server, users, clock, url=f"unix://{server.socket_path}?db=0")
        assert (await browser.get("/readyz")).code == 200
        await browser.get("/api")
        assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
        assert (await browser.login()).code == 200
        assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
        assert server.stored_keys()  # through the socket into this server
        server.stop()
        assert (await browser.get("/readyz")).code == 503
        assert (await browser.get("/api")).code == 503


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_redis_py_cannot_make_is_an_outage_not_a_hang(redis: Redis, caplog):
    # An option redis-py hands to its connections unchecked (start-up refuses it: test_settings)
    # fails when the first connection is made, with an error that is not redis-py's own.
    options = RedisStore.check_options(redis.store_options())._replace(url=f"{redis.url}?no_such_option=1")
    store = RedisStore(options, StoreContext(record_keys([test_secret()])))
    try:
        for _ in range(2):  # and again: nothing left waiting
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.load("a-session"), 5)
            assert not await asyncio.wait_for(store.ready(), 5)
    finally:
        await store.close()
    # Not an outage like the others: logged with its traceback, once an outage like the others.
    logged = [r for r in caplog.records if r.name == "stores.redis" and r.getMessage() == "redis: no connection"]
    assert len(logged) == 1 and logged[0].exc_info and logged[0].exc_info[0] is TypeError


def awaiting(coroutine: Any) -> list[str]:
    """The names of the coroutines ``coroutine`` is suspended in, outermost first."""
    names = []
    while coroutine is not None and hasattr(coroutine, "cr_code"):
        names.append(coroutine.cr_code.co_name)
        coroutine = coroutine.cr_await
    return names


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_cancelled_while_it_waits_for_its_connection_fails_its_requests(redis: Redis):
    # As at shutdown, when the loop cancels what is still running: the requests of a batch that was
    # waiting for a connection (here, to a Redis that answers nothing) get an outage, not a hang.
    store = build_store("redis", redis.store_options(), StoreContext(record_keys([test_secret()])))
    redis.pause()
    try:
        load = asyncio.ensure_future(store.load("a-session"))
        while not store._sending:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        (sending,) = store._sending  # type: ignore[attr-defined]
        while "_connection" not in awaiting(sending.get_coro()):  # under way, waiting for its connection
            await asyncio.sleep(0)
        assert not load.done()
        sending.cancel()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(load, 5)  # only a bound on a hang
    finally:
        redis.resume()
        await store.close()


# TLS --------------------------------------------------------------------------------------------


def tls_redis(pki: TestPKI, cert: str, key: str) -> tuple[Redis, int]:
    """A redis-server that serves TLS on a port of its own (certificate ``cert``, clients must show
    one ``pki``'s CA signed), its plain port kept for the test's own commands."""
    port = free_port()
    tls = ("--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", pki.ca_cert)
    return Redis(*tls, "--tls-auth-clients", "yes"), port


def tls_url(port: int, **query: str) -> str:
    """A rediss:// URL with redis-py's TLS options as its query (the CA, the client's certificate)."""
    return f"rediss://127.0.0.1:{port}/0?{urlencode(query)}"


@pytest.mark.gen_test(timeout=30)
async def test_sessions_over_tls_with_a_client_certificate(http_server, browser, users, clock, tmp_path):
    pki = TestPKI(tmp_path)
    server, port = tls_redis(pki, pki.server_cert, pki.server_key)
    with server:
        wait_for_port(port)
        url = tls_url(port, ssl_ca_certs=pki.ca_cert, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key)
        config = load_settings(
            "test", environ={"SESSION_STORE": "redis", "REDIS_URL": url}, session_secrets=(test_secret(),)
        )
        serve(http_server, SessionApplication(config, session_store(config, clock), users, clock=clock))
        assert (await browser.get("/readyz")).code == 200
        await browser.get("/api")
        assert (await browser.get("/api")).body.decode() == "You visited this page 2 times"
        assert (await browser.login()).code == 200
        assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
        assert server.stored_keys()  # through TLS into this server


@pytest.mark.gen_test(timeout=30)
async def test_tls_refuses_an_untrusted_server_a_wrong_name_a_missing_client_certificate_or_plaintext(tmp_path):
    pki = TestPKI(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca = TestPKI(tmp_path / "other")
    # Signed by the right CA, for another name than the one the URL connects to.
    misnamed = pki.issue("elsewhere", "subjectAltName=DNS:elsewhere.example")
    client = {"ssl_certfile": pki.client_cert, "ssl_keyfile": pki.client_key}
    server, port = tls_redis(pki, pki.server_cert, pki.server_key)
    other, other_port = tls_redis(pki, *misnamed)
    context = StoreContext(record_keys([test_secret()]))
    record = {"data": {}, "created_at": 1.0, "last_seen": 1.0}
    with server, other:
        wait_for_port(port)
        wait_for_port(other_port)
        refused = [
            tls_url(port, ssl_ca_certs=other_ca.ca_cert, **client),  # the server's certificate is not trusted
            tls_url(other_port, ssl_ca_certs=pki.ca_cert, **client),  # trusted, but not for 127.0.0.1
            tls_url(port, ssl_ca_certs=pki.ca_cert),  # no client certificate
            f"redis://127.0.0.1:{port}/0",  # plaintext to the TLS port
        ]
        for url in [*refused, tls_url(port, ssl_ca_certs=pki.ca_cert, **client)]:
            store = RedisStore.from_options({"url": url, "timeout": "0.5", "connect_timeout": "0.5"}, context)
            try:
                if url in refused:
                    with pytest.raises(StoreUnavailable):
                        await store.create("a-session", record, 60)
                    assert not await store.ready(), url
                else:  # the same harness, everything right
                    assert await store.create("a-session", record, 60)
                    assert await store.ready()
            finally:
                await store.close()
        sessions = [key for key in server.stored_keys() if key != "session:ready"]  # /readyz's probe
        assert not other.stored_keys() and sessions == [store.key("a-session")]


@pytest.mark.gen_test(timeout=60)
async def test_a_primary_found_through_sentinels_over_tls(http_server, users, clock, make_browser, tmp_path):
    pki = TestPKI(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca = TestPKI(tmp_path / "other")
    primary, port = tls_redis(pki, pki.server_cert, pki.server_key)
    with primary:
        wait_for_port(port)
        # The sentinel talks TLS to the primary too, and gives its clients the TLS port.
        files = f"tls-cert-file {pki.client_cert}\ntls-key-file {pki.client_key}\ntls-ca-cert-file {pki.ca_cert}\n"
        sentinel = RedisSentinel(primary, tls=f"tls-replication yes\n{files}", primary_port=port)
        try:
            sentinel.start()
            assert sentinel.primary_port() == port
            client = {"ssl_certfile": pki.client_cert, "ssl_keyfile": pki.client_key}
            options = {"sentinels": sentinel.address, "sentinel_service": sentinel.service}
            url = tls_url(port, ssl_ca_certs=pki.ca_cert, **client).replace(f"127.0.0.1:{port}", "ignored")
            app = redis_app(http_server, users, clock, **options, url=url)
            browser = make_browser()
            assert (await browser.get("/readyz")).code == 200
            assert (await browser.login()).code == 200
            assert body_json(await browser.get("/api/balance")) == {"balance": 53762}
            assert primary.stored_keys()
            await app.store.close()
            untrusted = tls_url(port, ssl_ca_certs=other_ca.ca_cert, **client).replace(f"127.0.0.1:{port}", "ignored")
            store = RedisStore.from_options({**options, "url": untrusted, "timeout": "0.3"}, _context(app))
            try:  # the primary's certificate is checked through Sentinel too
                assert not await store.ready()
            finally:
                await store.close()
        finally:
            sentinel.stop()
