"""The shared stores' own cost, outside HTTP: this process's CPU per store call, in µs.

    .venv/bin/python bench/store_calls.py                 # memcached and Redis, 50 calls at once
    .venv/bin/python bench/store_calls.py --at-once 1     # one call at a time

Starts memcached and redis-server (append-only file, fsync every second) on loopback, pinned to
the other core where there are two, and runs each store's calls the way a loaded server does:
``--at-once`` sessions read (``load``) or written (``update`` against this process's copy, the
page counter's write) in one loop iteration, so they go in one batch. What is timed is this
process's CPU (``time.process_time``) per call, busy polling off: the store client's work (the
key, the batch, the answer parsed, the record sealed and opened), not the wait, and not the
server's. Figures are the median of ``--rounds`` rounds over ``--sessions`` sessions, repeated
``--repeats`` times per store, alternating stores; they move far less from run to run than
requests per second do, so they show what a change to a store's client path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import free_port, memcached_command, pin, process, redis_command, split_cpus, wait_for_port
from server import run
from stores import build_store
from stores.base import Operation, SessionStore, StoreContext

STORES = ("memcached", "redis")
VISIT = (Operation("incr", "page_views", 1),)


async def per_call(store: SessionStore, args: argparse.Namespace, figures: dict[str, float]) -> None:
    """Median µs of CPU per write and per read on ``store``, ``args.at_once`` calls at a time,
    into ``figures``."""
    await store.start()
    try:
        ids = [secrets.token_urlsafe(32) for _ in range(args.sessions)]
        now = time.time()
        record = {"data": {"page_views": 1}, "created_at": now, "last_seen": now}
        for session_id in ids:
            if not await store.create(session_id, record, 3600):
                raise RuntimeError("a session id was taken")
            await store.update(session_id, VISIT, now, 3600, await store.load(session_id))  # keeps a copy

        async def write(session_id: str) -> None:
            copy = store.copy(session_id)
            if copy is None:  # else the write would load first: another path than the one timed
                raise RuntimeError("no copy of a session this process wrote")
            if await store.update(session_id, VISIT, time.time(), 3600, copy) is None:
                raise RuntimeError("a session went missing")

        async def read(session_id: str) -> None:
            if await store.load(session_id) is None:
                raise RuntimeError("a session went missing")

        for name, call in (("write", write), ("read", read)):
            rounds = []
            for _ in range(args.rounds + 2):  # the first two warm up
                started = time.process_time()
                for first in range(0, len(ids), args.at_once):
                    await asyncio.gather(*(call(i) for i in ids[first : first + args.at_once]))
                rounds.append((time.process_time() - started) / len(ids) * 1e6)
            figures[name] = statistics.median(rounds[2:])
    finally:
        await store.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    split = split_cpus()
    work = Path(tempfile.mkdtemp(prefix="bench-store-calls-"))
    memcached_port, redis_port = free_port(), free_port()
    redis = redis_command(redis_port, work)
    options = {
        "memcached": {"servers": f"127.0.0.1:{memcached_port}", "busy_poll": 0},
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "busy_poll": 0},
    }
    context = StoreContext([secrets.token_bytes(32)])
    runs: dict[str, dict[str, list[float]]] = {store: {"write": [], "read": []} for store in STORES}
    memcached = memcached_command(memcached_port)
    with process(memcached, work / "memcached.log") as m, process(redis, work / "redis.log") as r:
        if split:
            os.sched_setaffinity(0, split[0])
            pin(m.pid, split[1])
            pin(r.pid, split[1])
        wait_for_port(memcached_port)
        wait_for_port(redis_port)
        for _ in range(args.repeats):
            for store in STORES:
                figures: dict[str, float] = {}
                run(per_call(build_store(store, options[store], context), args, figures))  # on uvloop, as served
                for name, value in figures.items():
                    runs[store][name].append(value)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "at_once": args.at_once,
        "pinned": bool(split),
        "us_per_call": {
            store: {name: round(statistics.median(values), 2) for name, values in calls.items()}
            for store, calls in runs.items()
        },
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at-once", type=int, default=50, help="calls in one loop iteration (one batch)")
    parser.add_argument("--sessions", type=int, default=500, help="sessions each round goes through")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per figure (the median is kept)")
    parser.add_argument("--repeats", type=int, default=3, help="figures per store, stores alternating")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
