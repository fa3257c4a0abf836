"""The worker-thread hand-off behind the memcached store."""

from __future__ import annotations

import asyncio
import threading

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
    # Four calls meet at a barrier: run one after another, the first would wait there alone
    # and the barrier break (BrokenBarrierError in the caller).
    together = threading.Barrier(4, timeout=10)
    try:

        def meet_and_tell() -> int:
            together.wait()
            return threading.get_ident()

        threads = await asyncio.gather(*(workers.run(meet_and_tell) for _ in range(4)))
        assert loop_thread not in threads
        assert len(set(threads)) == 4
        # The loop stays free while a call blocks: it runs on, and the call is still waiting.
        gate = threading.Event()
        blocked = workers.run(gate.wait, 10)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not blocked.done()
        gate.set()
        assert await blocked is True
    finally:
        workers.shutdown()
