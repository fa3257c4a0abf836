"""The worker-thread hand-off behind the memcached store."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stores.workers import Workers


@pytest.mark.gen_test
async def test_results_reach_their_own_callers_from_many_calls():
    workers = Workers(4, chunk=4)
    try:
        results = await asyncio.gather(*(workers.run(lambda i=i: i * i) for i in range(500)))
        assert results == [i * i for i in range(500)]
    finally:
        workers.shutdown()


@pytest.mark.gen_test
async def test_errors_are_raised_in_the_caller_and_others_still_succeed():
    workers = Workers(2)

    def fail() -> None:
        raise OSError("connection refused")

    try:
        outcomes = await asyncio.gather(workers.run(fail), workers.run(int, "7"), return_exceptions=True)
        assert isinstance(outcomes[0], OSError) and outcomes[1] == 7
    finally:
        workers.shutdown()


@pytest.mark.gen_test
async def test_calls_run_off_the_event_loop_thread_and_in_parallel():
    workers = Workers(4, chunk=1)
    loop_thread = threading.get_ident()
    try:
        started = time.monotonic()

        def nap_and_tell() -> int:
            time.sleep(0.2)
            return threading.get_ident()

        threads = await asyncio.gather(*(workers.run(nap_and_tell) for _ in range(4)))
        assert loop_thread not in threads
        assert len(set(threads)) == 4
        assert time.monotonic() - started < 0.6  # four 0.2 s calls at once, not one after another
        # The loop stays free meanwhile.
        slow = workers.run(time.sleep, 0.3)
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        assert time.monotonic() - t0 < 0.1
        await slow
    finally:
        workers.shutdown()
