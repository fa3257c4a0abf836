"""Handlers that run on this process's copy of a session (`SessionHandler.runs_on_copies`), on
each shared store's real server: one round trip for a counter, never an answer from a stale copy."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client

from handlers.app import SessionApplication
from handlers.base import ApiError, SessionHandler
from settings import Settings, load_settings
from stores import build_store
from stores.base import Operation, StoreContext
from stores.sealing import record_keys
from stores.users import UserDirectory
from tests.conftest import Browser, FakeClock, body_json, serve, test_secret
from tests.services import Memcached, Redis

pytestmark = pytest.mark.slow
SECRET = test_secret()
SERVICES: dict[str, Any] = {"memcached": Memcached, "redis": Redis}
# Reads a stored write brings with it: memcached's read back of the written key, for its version.
READS_PER_WRITE = {"memcached": 1, "redis": 0}
# Reads a write lost to another process's costs, with the write that follows it (no load between:
# the lost write's answer carries what won): memcached reads each written key back in the same
# send; Redis's script reads the stored record (HMGET) to answer a lost write.
READS_AFTER_A_LOST_WRITE = {"memcached": 2, "redis": 1}


class ShowHandler(SessionHandler):
    """Reads only: 404 without ``x``, else shows it. Runs on copies."""

    runs_on_copies = True

    async def get(self) -> None:
        session = await self.get_session()
        if "x" not in session:
            raise ApiError(404, "No x yet.")
        self.write_json({"x": session["x"]})


class GrowHandler(SessionHandler):
    """Adds 3,000 characters under the key the query names. Runs on copies."""

    runs_on_copies = True

    async def get(self) -> None:
        session = await self.get_session()
        session[self.get_query_argument("key")] = "x" * 3000


# Records larger than this are refused (413): two of GrowHandler's values do not fit.
MAX_RECORD_SIZE = 5000


class Setup:
    """This server's store and another process's store, on one server of the store ``name``."""

    def __init__(self, name: str, service: Any, clock: FakeClock, users: UserDirectory, **options: str) -> None:
        context = StoreContext(record_keys([SECRET]), MAX_RECORD_SIZE)
        self.name, self.service, self.clock = name, service, clock
        self.store = build_store(name, {**service.store_options(), **options}, context)
        self.other = build_store(name, service.store_options(), context)
        config: Settings = load_settings("test", environ={}, session_secrets=(SECRET,), store=name)
        routes = [("/show", ShowHandler), ("/grow", GrowHandler)]
        self.app = SessionApplication(config, self.store, users, clock=clock, extra_routes=routes)
        self.per_write = READS_PER_WRITE[name]
        self.after_a_lost_write = READS_AFTER_A_LOST_WRITE[name]

    def reads(self) -> int:
        """How many reads of a session the server has done so far (on Redis, scripts' reads too)."""
        if self.name == "memcached":
            client = Client(("127.0.0.1", self.service.port))
            try:
                return int(client.stats()[b"cmd_get"])
            finally:
                client.close()
        stats = self.service.command("INFO", "commandstats").decode()
        found = re.search(r"cmdstat_hmget:calls=(\d+)", stats)
        return int(found.group(1)) if found else 0

    def session_id(self, browser: Browser) -> str:
        session_id, _ = self.app.sessions.verify(browser.cookies.get("sid"))
        assert session_id is not None
        return session_id

    async def write_elsewhere(self, session_id: str, *operations: Operation) -> None:
        """Another process changes the session."""
        assert await self.other.update(session_id, operations, self.clock(), 60) is not None

    async def close(self) -> None:
        await self.store.close()
        await self.other.close()


@pytest.fixture(params=list(SERVICES))
def setup(
    request: pytest.FixtureRequest, http_server, io_loop, clock: FakeClock, users: UserDirectory
) -> Iterator[Setup]:
    with SERVICES[request.param]() as service:
        made = Setup(request.param, service, clock, users)
        serve(http_server, made.app)
        yield made
        io_loop.run_sync(made.close)


async def with_a_copy(setup: Setup, browser: Browser) -> str:
    """A session this process has written (so it keeps a copy of it): its id."""
    await visits(browser)
    assert await visits(browser) == "You visited this page 2 times"  # loaded, then written: a copy
    return setup.session_id(browser)


async def visits(browser: Browser) -> str:
    r = await browser.get("/api")
    assert r.code == 200
    return r.body.decode()


@pytest.mark.gen_test(timeout=30)
async def test_a_counter_on_this_processs_copy_reads_nothing(setup: Setup, browser: Browser):
    assert await visits(browser) == "Welcome to this page for the first time!"
    assert await visits(browser) == "You visited this page 2 times"  # loaded, then written: a copy
    for n in (3, 4, 5):
        before = setup.reads()
        assert await visits(browser) == f"You visited this page {n} times"
        # One round trip: the write against the copy's version (on memcached with the read of the
        # key that follows it in the same send, for the version it got), and no load before it.
        assert setup.reads() == before + setup.per_write


@pytest.mark.gen_test(timeout=30)
async def test_a_write_elsewhere_makes_the_counter_run_again_on_the_stored_session(setup: Setup, browser: Browser):
    session_id = await with_a_copy(setup, browser)
    # Another process counts ten visits: this process's copy is stale.
    await setup.write_elsewhere(session_id, Operation("incr", "page_views", 10))
    before = setup.reads()
    assert await visits(browser) == "You visited this page 13 times"
    assert setup.reads() == before + setup.after_a_lost_write  # the lost write and the write, no load
    loaded = await setup.other.load(session_id)
    assert loaded is not None and loaded.record["data"]["page_views"] == 13
    assert await visits(browser) == "You visited this page 14 times"


@pytest.mark.gen_test(timeout=30)
async def test_visits_at_once_on_one_copy_all_count(setup: Setup, browser: Browser):
    # Every request starts on the same copy; all but the first write lose to another request of
    # this process and run again from what won (Redis: the write its queue holds; memcached: what
    # the batch read back), never from a stale record: no visit is lost or counted twice. A request
    # that arrives while another runs again starts on the copy its sibling's stored write left.
    await with_a_copy(setup, browser)
    before = setup.reads()
    answers = await asyncio.gather(*(visits(browser) for _ in range(10)))
    assert sorted(answers) == sorted(f"You visited this page {n} times" for n in range(3, 13))
    if setup.name == "redis":
        assert setup.reads() == before  # no load: each run again started from its queue's write
    assert await visits(browser) == "You visited this page 13 times"


@pytest.mark.gen_test(timeout=30)
async def test_a_logout_elsewhere_is_never_answered_from_the_copy(setup: Setup, browser: Browser):
    assert (await browser.login()).code == 200
    assert await visits(browser) == "Welcome to this page for the first time!"
    assert await visits(browser) == "You visited this page 2 times"
    assert (await browser.get("/api/balance")).code == 200
    logged_in = browser.cookies["sid"]
    # Logged out through another process: the record is gone; this process still has its copy.
    await setup.other.delete(setup.session_id(browser))
    assert await visits(browser) == "Welcome to this page for the first time!"
    assert browser.cookies["sid"] != logged_in  # a new anonymous session, not the old one back
    assert (await browser.get("/api/balance")).code == 401


@pytest.mark.gen_test(timeout=30)
async def test_what_a_reading_handler_answers_from_a_copy_is_checked_first(setup: Setup, browser: Browser):
    session_id = await with_a_copy(setup, browser)
    # The copy has no x, the store has: the copy's 404 is checked, found stale, and run again.
    await setup.write_elsewhere(session_id, Operation("set", "x", 1))
    before = setup.reads()
    r = await browser.get("/show")
    assert (r.code, body_json(r)) == (200, {"x": 1})
    assert setup.reads() == before + 1  # the check's load, which the run again starts from
    # Now the copy has x = 1, the store 2: the 200 the copy would give is checked too.
    await setup.write_elsewhere(session_id, Operation("set", "x", 2))
    r = await browser.get("/show")
    assert (r.code, body_json(r)) == (200, {"x": 2})
    # Nothing changed elsewhere: the check is the request's one read, and the copy's answer stands.
    before = setup.reads()
    r = await browser.get("/show")
    assert (r.code, body_json(r)) == (200, {"x": 2}) and setup.reads() == before + 1


@pytest.mark.gen_test(timeout=30)
async def test_data_refused_on_a_copy_is_checked_against_the_store_first(setup: Setup, browser: Browser):
    await visits(browser)
    assert (await browser.get("/grow?key=a")).code == 200  # a write: this process's copy holds a
    # Another process drops a: on the copy, b would make the record too large; as stored, it fits.
    await setup.write_elsewhere(setup.session_id(browser), Operation("delete", "a"))
    assert (await browser.get("/grow?key=b")).code == 200
    loaded = await setup.other.load(setup.session_id(browser))
    assert loaded is not None and set(loaded.record["data"]) == {"page_views", "b"}
    # Both as stored: refused, and nothing stored is lost.
    r = await browser.get("/grow?key=c")
    assert r.code == 413 and body_json(r)["errorMessage"]
    loaded = await setup.other.load(setup.session_id(browser))
    assert loaded is not None and set(loaded.record["data"]) == {"page_views", "b"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("name", list(SERVICES))
async def test_with_copies_turned_off_every_counter_request_loads_first(
    name: str, http_server, clock: FakeClock, users: UserDirectory, browser: Browser
):
    with SERVICES[name]() as service:
        setup = Setup(name, service, clock, users, copies="0")  # MEMCACHED_COPIES=0, REDIS_COPIES=0
        serve(http_server, setup.app)
        try:
            await visits(browser)
            for n in (2, 3):
                before = setup.reads()
                assert await visits(browser) == f"You visited this page {n} times"
                assert setup.reads() == before + 1  # the load; no read back without copies
                assert setup.store.copy(setup.session_id(browser)) is None
        finally:
            await setup.close()
