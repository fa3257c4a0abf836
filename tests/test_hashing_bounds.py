"""Password hashing has bounds: a fixed queue, no hash for a client that has gone, no delay for
other requests. Through HTTP, deciding by counters (hashes actually run) and events, not timing.

Where the order matters, the hashing threads are first kept busy with other work (a job waiting
on an event), so which checks run, wait or are refused is fixed, not a race.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from handlers.app import SessionApplication
from settings import Settings
from stores.memory import MemoryStore
from stores.users import DEMO_USERS_FILE, UserDirectory
from tests.conftest import MAX, FakeClock, body_json, serve

# The throttle is not the subject here: every request comes from 127.0.0.1 for one account.
UNTHROTTLED = {"login_pair_budget": 10_000, "login_address_budget": 10_000, "login_account_budget": 10_000}


class Gate:
    """Keeps a directory's hashing threads busy until opened."""

    def __init__(self, threads: int) -> None:
        self.event = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="password-test")
        for _ in range(threads):
            self.executor.submit(self.event.wait)

    def open(self) -> None:
        self.event.set()


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate(2)
    yield gate
    gate.open()
    gate.executor.shutdown(wait=True)


def directory(max_waiting: int, executor: ThreadPoolExecutor | None = None) -> UserDirectory:
    entries = json.loads(DEMO_USERS_FILE.read_text())
    return UserDirectory(entries, executor=executor, max_waiting=max_waiting, threads=2)


def app_with(http_server: Any, config: Settings, store: MemoryStore, users: UserDirectory, clock: FakeClock):
    return serve(http_server, SessionApplication(config.replace(**UNTHROTTLED), store, users, clock=clock))


async def until(condition: Any) -> None:
    """Wait for ``condition()`` to hold (the test's own timeout bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.01)


async def abandoned_login(port: int) -> None:
    """A whole login request, written and then the connection closed without reading the answer."""
    body = json.dumps(MAX).encode()
    request = (
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, port, len(body), body)
    )
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def gone_answers(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if getattr(r, "event", None) == "access" and getattr(r, "status", 0) == 499)


@pytest.mark.gen_test(timeout=60)
async def test_past_the_queue_bound_a_login_is_503_at_once_and_other_requests_do_not_wait(
    http_server, config, store, clock, make_browser, gate: Gate
):
    users = directory(max_waiting=2, executor=gate.executor)
    app_with(http_server, config, store, users, clock)
    logins = [asyncio.ensure_future(make_browser().login()) for _ in range(7)]
    # Two checks hold the threads, two wait: the other three are refused without waiting.
    refused: list[asyncio.Future[Any]] = []
    while len(refused) < 3:
        done, _ = await asyncio.wait([t for t in logins if t not in refused], return_when=asyncio.FIRST_COMPLETED)
        refused.extend(done)
    for task in refused:
        r = task.result()
        assert r.code == 503
        assert r.headers["Retry-After"] == "1"
        assert body_json(r) == {"errorMessage": "Too many logins at once, please retry shortly."}
    assert users.waiting == 2
    # Hashing is saturated; everything else is answered meanwhile.
    browser = make_browser()
    assert (await browser.get("/livez")).code == 200
    assert (await browser.get("/api")).code == 200
    assert (await browser.get("/api/login")).code == 200
    assert not any(task.done() for task in logins if task not in refused)
    gate.open()
    answered = await asyncio.gather(*(t for t in logins if t not in refused))
    assert [r.code for r in answered] == [200] * 4
    assert users.hashes_run == 4
    assert users.waiting == 0
    assert (await make_browser().login()).code == 200  # every thread was handed back


@pytest.mark.gen_test(timeout=60)
async def test_abandoned_logins_are_not_hashed_and_a_real_login_does_not_wait_for_them(
    http_server, http_port, config, store, clock, make_browser, gate: Gate, caplog
):
    users = directory(max_waiting=64, executor=gate.executor)
    app_with(http_server, config, store, users, clock)
    held = [asyncio.ensure_future(make_browser().login()) for _ in range(2)]
    await until(lambda: users.hashes_run == 2)  # both threads are theirs
    flood = 40
    await asyncio.gather(*(abandoned_login(http_port) for _ in range(flood)))
    await until(lambda: gone_answers(caplog) == flood)
    assert users.waiting == 0  # the abandoned checks left the queue
    real = asyncio.ensure_future(make_browser().login())
    await until(lambda: users.waiting == 1)
    gate.open()
    r = await real
    assert r.code == 200
    assert body_json(r)["user"]["email"] == "max@gmail.com"
    assert users.hashes_run == 3  # the two held logins and the real one: none of the 40
    assert [x.code for x in await asyncio.gather(*held)] == [200, 200]


@pytest.mark.gen_test(timeout=120)
async def test_a_flood_of_abandoned_logins_is_mostly_not_hashed(
    http_server, http_port, config, store, clock, make_browser, caplog
):
    # No gate: real threads, real hashes. A check that finds a free thread first looks whether its
    # client is still there (its end of stream may be waiting unread), so at most one per thread
    # could slip through; in practice none does.
    users = directory(max_waiting=64)
    try:
        app_with(http_server, config, store, users, clock)
        flood = 30
        await asyncio.gather(*(abandoned_login(http_port) for _ in range(flood)))
        r = await make_browser().login()
        assert r.code == 200
        await until(lambda: gone_answers(caplog) == flood)
        assert users.hashes_run <= users.threads + 1
        assert users.dropped >= flood - users.threads
    finally:
        users.close()
