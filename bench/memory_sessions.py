"""The memory store at scale: resident memory per session, and IOLoop stalls while expiring.

    python bench/memory_sessions.py [--sessions 1000000] [--expire 100000]

Fills a MemoryStore with sessions of the reference app's shape (a page counter and a logged-in
user) through its public API, measures the process's resident memory before and after (so
allocator overhead counts), then lets ``--expire`` of them expire and measures the longest time
the event loop went without running other work while the store swept them. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stores.memory import MemoryStore

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def measure(sessions: int, expire: int, sweep_batch: int) -> dict[str, float]:
    clock = Clock()
    store = MemoryStore(sessions + 1, clock=clock, sweep_batch=sweep_batch)
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    for i in range(sessions):
        now = clock()
        record = {
            "data": {"page_views": i % 97 + 1, "user": "max@gmail.com"},
            "created_at": now,
            "last_seen": now,
        }
        # The first `expire` sessions expire soon; the rest live on.
        await store.create(secrets.token_urlsafe(32), record, 10 if i < expire else 3600)
    fill_seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()

    clock.now += 11
    longest = 0.0
    ticks = 0
    sweeping = True

    async def ticker() -> None:
        nonlocal longest, ticks
        last = time.perf_counter()
        while sweeping:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
            ticks += 1

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    sweep_started = time.perf_counter()
    freed = await store.sweep()
    sweep_seconds = time.perf_counter() - sweep_started
    sweeping = False
    await task
    return {
        "sessions": sessions,
        "rss_bytes_per_session": round((after - before) / sessions, 1),
        "rss_mib_total": round((after - before) / 2**20, 1),
        "fill_seconds": round(fill_seconds, 2),
        "expired": freed,
        "sweep_seconds": round(sweep_seconds, 3),
        "longest_stall_ms": round(longest * 1000, 2),
        "loop_turns_during_sweep": ticks,
        "remaining": len(store),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--expire", type=int, default=100_000)
    parser.add_argument("--sweep-batch", type=int, default=2_000)
    args = parser.parse_args()
    result = asyncio.run(measure(args.sessions, args.expire, args.sweep_batch))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
