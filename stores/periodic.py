"""Background work a store runs every so often (the memory store's sweep, memcached's probe)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("stores")


class Periodic:
    """Calls ``work`` every ``interval`` seconds between `start` and `stop`; a failed round is
    logged and the next one runs as planned."""

    def __init__(self, interval: float, work: Callable[[], Awaitable[object]], name: str) -> None:
        self.interval = interval
        self.work = work
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin (once; with the IOLoop running)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except Exception:  # a failed round must not end the next ones
                log.exception("%s failed", self.name)
