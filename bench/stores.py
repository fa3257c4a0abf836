"""The shared stores side by side: this server on memcached and on Redis, paired round by round.

    .venv/bin/python bench/stores.py                     # counter and balance at 1, 10 and 50
    .venv/bin/python bench/stores.py --docs              # and rewrites its section of docs/BENCHMARKS.md

Both servers run from this checkout, pinned to the same core (one is under load at a time), with
memcached and redis-server on the other core, Redis configured as docs/STORES.md says a durable
store is (append-only file, fsync every second). The servers are started again for every round
(a process keeps a speed of its own, about 2% either way, that rounds on it would not average
out); the sessions stay in the stores. Each round takes one concurrency and route at a
time and runs both stores back to back in a shuffled order; a ratio is the median of the rounds'
own ratios (Redis / memcached), with their spread. What bench/run.py measures for the other
stores is not repeated here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import STORES_SECTION, replace_section
from bench.run import (
    BENCH,
    ROOT,
    SCENARIOS,
    UNLIMITED_CLIENT,
    Server,
    free_port,
    memcached_command,
    pin,
    prepare_browsers,
    process,
    redis_command,
    split_cpus,
    users_file,
    wait_for_port,
    wrk,
)

ROUTES = ("counter", "balance")
STORES = ("memcached", "redis")
AOF = {
    "everysec": "append-only file, fsync every second",
    "always": "append-only file, fsync after every write",
    "off": "no append-only file",
}
LABELS = {"counter": "page counter (GET /api)", "balance": "logged in, read-only (GET /api/balance)"}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    split = split_cpus()
    if split:
        os.sched_setaffinity(0, split[1])
    work = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    users = users_file(work)
    memcached_port, redis_port = free_port(), free_port()
    memcached = memcached_command(memcached_port)
    redis = redis_command(redis_port, work, args.appendfsync)
    secret = os.urandom(32).hex()
    base_env = {"SESSION_SECRETS": secret, "USERS_FILE": str(users), "LOG_FORMAT": "text", **UNLIMITED_CLIENT}
    env = {
        "memcached": {**base_env, "SESSION_STORE": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{memcached_port}"},
        "redis": {**base_env, "SESSION_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
    }
    combos = [(route, c) for c in args.concurrency for route in ROUTES]
    rps: dict[tuple[str, str, int], list[float]] = {}
    p50: dict[tuple[str, str, int], list[float]] = {}
    errors = dict.fromkeys(STORES, 0)
    started = time.monotonic()
    with process(memcached, work / "memcached.log") as m, process(redis, work / "redis.log") as r:
        for service in (m, r):
            if split:
                pin(service.pid, split[1])
        wait_for_port(memcached_port)
        wait_for_port(redis_port)
        servers = {}
        for store in STORES:
            port = free_port()
            servers[store] = Server(
                f"ours-{store}", [sys.executable, "server.py", "--env=dev", f"--port={port}"], env[store], ROOT, port
            )
        try:
            for s in servers.values():
                s.cpus = split[0] if split else None
                s.start(work)
                prepare_browsers(s, args.sessions, work)
            for round_number in range(args.rounds):
                print(f"round {round_number + 1} of {args.rounds}", flush=True)
                for s in servers.values():
                    # New server processes every round (the sessions stay in the stores): one
                    # process runs about 2% faster or slower than another of the same code, for
                    # as long as it lives, and rounds on the same two would not average that out.
                    if round_number:
                        s.stop()
                        s.start(work)
                        still_logged_in(s)
                    wrk(s.base_url, "/api", s.cookies["anonymous"], 10, 1)  # warm-up: copies, connections
                for route, concurrency in combos:
                    order = list(STORES)
                    random.Random(f"{round_number}{route}{concurrency}").shuffle(order)
                    for store in order:
                        s = servers[store]
                        path, kind = SCENARIOS[route]
                        run = wrk(s.base_url, path, s.cookies[kind], concurrency, args.duration)
                        errors[store] += int(run["errors"])
                        rps.setdefault((store, route, concurrency), []).append(run["rps"])
                        p50.setdefault((store, route, concurrency), []).append(run["p50_ms"])
        finally:
            for s in servers.values():
                s.stop()
    rows = []
    for route, concurrency in combos:
        ours, theirs = rps["redis", route, concurrency], rps["memcached", route, concurrency]
        pairs = [a / b for a, b in zip(ours, theirs, strict=True) if b]
        rows.append(
            {
                "route": route,
                "concurrency": concurrency,
                "redis_rps": round(statistics.median(ours)),
                "memcached_rps": round(statistics.median(theirs)),
                "redis_p50_ms": round(statistics.median(p50["redis", route, concurrency]), 2),
                "memcached_p50_ms": round(statistics.median(p50["memcached", route, concurrency]), 2),
                "ratio": round(statistics.median(pairs), 3),
                "ratio_min": round(min(pairs), 3),
                "ratio_max": round(max(pairs), 3),
            }
        )
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "pinned": bool(split),
        "seconds": round(time.monotonic() - started),
        "appendfsync": args.appendfsync,
        "errors": errors,
        "rows": rows,
    }


def still_logged_in(server: Server) -> None:
    """A server started again still knows the prepared browsers (their sessions are in the
    store): else its rounds would measure new sessions instead, with no error to show it."""
    cookie = server.cookies["logged_in"].read_text().splitlines()[0]
    request = urllib.request.Request(server.base_url + "/api/balance", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{server.name} started again no longer knows a logged-in browser: {e.code}") from None


def markdown(result: dict[str, Any]) -> str:
    lines = [
        STORES_SECTION,
        "",
        f"Written by `bench/stores.py` on {result['when']}: this server on memcached and on Redis "
        f"({AOF[result.get('appendfsync', 'everysec')]}), paired rounds of {result['duration_s']} s per store "
        f"({result['rounds']} rounds, new server processes for each; a ratio is the median of the rounds' own "
        "Redis / memcached ratios, spread in brackets). "
        f"Errors: {result['errors']['memcached']} on memcached, {result['errors']['redis']} on Redis. "
        f"Target: the Redis counter at 50 connections at least the memcached counter's throughput: {_verdict(result)}.",
        "",
        "| scenario | connections | memcached req/s | Redis req/s | Redis / memcached | p50 ms memcached "
        "| p50 ms Redis |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {LABELS[row['route']]} | {row['concurrency']} | {row['memcached_rps']} | {row['redis_rps']} | "
            f"{row['ratio']:.3f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | {row['memcached_p50_ms']:.2f} | "
            f"{row['redis_p50_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _verdict(result: dict[str, Any]) -> str:
    row = next((r for r in result["rows"] if r["route"] == "counter" and r["concurrency"] == 50), None)
    if row is None:
        return "not measured in this run"
    return f"{row['ratio']:.3f}, {'met' if row['ratio'] >= 1 else '**missed**'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="This server on memcached and on Redis, paired rounds.")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (the median ratio is kept)")
    parser.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run")
    parser.add_argument("--concurrency", default="1,10,50", help="comma-separated connection counts")
    parser.add_argument("--sessions", type=int, default=500, help="browsers prepared per server and kind")
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for the JSON results")
    parser.add_argument("--docs", action="store_true", help="rewrite the section of docs/BENCHMARKS.md")
    parser.add_argument(
        "--appendfsync",
        default="everysec",
        choices=("everysec", "always", "off"),
        help="Redis's append-only file: fsync every second (default, as docs/STORES.md sets it up), "
        "after every write, or no file at all",
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stores-{int(time.time())}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))
    if args.docs:
        path = ROOT / "docs" / "BENCHMARKS.md"
        path.write_text(replace_section(path.read_text(), STORES_SECTION, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
