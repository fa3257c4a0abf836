"""The memory store at scale: resident memory per session, and IOLoop stalls while expiring.

    python bench/memory_sessions.py [--sessions 1000000] [--expire 100000] [--waves 3]

Fills a MemoryStore with sessions of the reference app's shape (a page counter and a logged-in
user) through its public API, measures the process's resident memory before and after (so
allocator overhead counts), then lets ``--expire`` of them expire, ``--waves`` times over, and
measures the longest time the event loop went without running other work while the store swept
each wave. The stall reported is the median wave's, with the spread: one wave's figure is a
maximum, which a single pause of this shared machine can set. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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


async def measure(sessions: int, expire: int, sweep_batch: int, waves: int = 3) -> dict[str, Any]:
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
        # Wave w (of the first waves * expire sessions) expires after 10 * (w + 1) s; the rest live on.
        wave = i // expire if expire else waves
        await store.create(secrets.token_urlsafe(32), record, 10 * (wave + 1) if wave < waves else 3600)
    fill_seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()

    filled_at = clock.now
    sweeps = []
    for wave in range(waves):
        clock.now = filled_at + 10 * (wave + 1) + 1
        sweeps.append(await sweep_watched(store))
    stalls = sorted(sweep["longest_stall_ms"] for sweep in sweeps)
    return {
        "sessions": sessions,
        "rss_bytes_per_session": round((after - before) / sessions, 1),
        "rss_mib_total": round((after - before) / 2**20, 1),
        "fill_seconds": round(fill_seconds, 2),
        "expired": statistics.median(sweep["expired"] for sweep in sweeps),
        "waves": sweeps,
        "sweep_seconds": statistics.median(sweep["sweep_seconds"] for sweep in sweeps),
        "loop_turns_during_sweep": statistics.median(sweep["loop_turns"] for sweep in sweeps),
        "longest_stall_ms": statistics.median(stalls),
        "longest_stall_spread_ms": [stalls[0], stalls[-1]],
        "remaining": len(store),
    }


async def sweep_watched(store: MemoryStore) -> dict[str, Any]:
    """One sweep, with a task that notes how long the event loop went between its turns."""
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
        "expired": freed,
        "sweep_seconds": round(sweep_seconds, 3),
        "longest_stall_ms": round(longest * 1000, 2),
        "loop_turns": ticks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--expire", type=int, default=100_000)
    parser.add_argument("--sweep-batch", type=int, default=2_000)
    parser.add_argument("--waves", type=int, default=3, help="expiries of --expire sessions each, measured apart")
    args = parser.parse_args()
    if args.waves < 1 or args.expire < 1 or args.waves * args.expire > args.sessions:
        parser.error("--waves and --expire must be positive and waves * expire at most --sessions")
    result = asyncio.run(measure(args.sessions, args.expire, args.sweep_batch, args.waves))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
