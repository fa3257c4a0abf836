"""Worker threads for a blocking client, with cheap hand-offs to and from the IOLoop.

``loop.run_in_executor`` costs one thread wake-up per call and one self-pipe write per result.
Where system calls are dear that dominates a memcached round trip on loopback, so here the
calls made in one loop iteration go to the threads in small chunks (one wake-up per chunk),
and results that finish close together come back with one wake-up of the loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("stores.workers")
T = TypeVar("T")
# What a finished call reports to, on the IOLoop thread: (result, None) or (None, error).
Done = Callable[[Any, BaseException | None], None]
_Job = tuple[Callable[..., Any], tuple[Any, ...], Done]


class Workers:
    """``threads`` threads running blocking calls; ``await workers.run(function, *args)``.

    Calls submitted in the same loop iteration run in chunks of at most ``chunk``, one after the
    other on one thread: small enough that a slow server delays few calls, large enough to save
    wake-ups when many requests arrive at once.
    """

    def __init__(self, threads: int, chunk: int = 4, name: str = "worker") -> None:
        self.chunk = chunk
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._outbox: list[_Job] = []
        self._done: collections.deque[tuple[Done, Any, BaseException | None]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``function(*args)`` on a worker thread; the future resolves on the IOLoop."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[T] = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._dispatch)
        self._outbox.append((function, args, functools.partial(_settle, future)))
        return future

    def _dispatch(self) -> None:
        outbox, self._outbox = self._outbox, []
        for start in range(0, len(outbox), self.chunk):
            self._jobs.put(outbox[start : start + self.chunk])

    def _work(self) -> None:
        while (jobs := self._jobs.get()) is not None:
            for function, args, done in jobs:
                try:
                    self._done.append((done, function(*args), None))
                except BaseException as error:  # handed to the caller, on the IOLoop
                    self._done.append((done, None, error))
            with self._lock:
                if self._wake_pending or self._loop is None:
                    continue
                self._wake_pending = True
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Clear the flag before draining: a result added after this point wakes the loop again.
        with self._lock:
            self._wake_pending = False
        while self._done:
            done, result, error = self._done.popleft()
            try:
                done(result, error)
            except Exception:  # one caller's bug must not strand the results behind it
                log.exception("a worker result's callback failed")

    def shutdown(self) -> None:
        """Stop the threads once the calls already queued are done."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
