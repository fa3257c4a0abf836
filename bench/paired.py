"""Paired rounds: this checkout's server against another git revision's, route by route.

    .venv/bin/python bench/paired.py --baseline HEAD~3             # memory and memcached, c=1 and 50
    .venv/bin/python bench/paired.py --baseline main --rounds 9 --stores memcached

What a change costs or gains is smaller than this machine's run-to-run noise (10-30%), so a
before/after pair is only meaningful when the two runs are seconds apart. The baseline revision is
checked out into a temporary git worktree; both servers run side by side on the same memcached,
pinned to the same core (one is under load at a time), with browsers prepared for each. Each
round runs every (store, route, concurrency) on both servers back to back in a shuffled order;
the figure kept is the median of the rounds' own ratios (this checkout / baseline), with their
spread. Results go to bench/results/paired-*.json and standard output; nothing else is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    BENCH,
    ROOT,
    SCENARIOS,
    UNLIMITED_CLIENT,
    Server,
    free_port,
    memcached_command,
    prepare_browsers,
    process,
    split_cpus,
    users_file,
    wait_for_port,
    wrk,
)

ROUTES = ("counter", "balance")


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """``revision`` of this repository in a temporary worktree, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(directory), revision], cwd=ROOT, check=True)
    try:
        yield directory
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(directory)], cwd=ROOT, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def server(name: str, cwd: Path, env: dict[str, str]) -> Server:
    port = free_port()
    return Server(name, [sys.executable, "server.py", "--env=dev", f"--port={port}"], env, cwd, port)


def ratios(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    pairs = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    return {"median": round(statistics.median(pairs), 3), "min": round(min(pairs), 3), "max": round(max(pairs), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Paired benchmark rounds against another git revision.")
    parser.add_argument("--baseline", required=True, help="the git revision to compare against (e.g. main, HEAD~2)")
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (the median ratio is kept)")
    parser.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run")
    parser.add_argument("--concurrency", default="1,50", help="comma-separated connection counts")
    parser.add_argument("--stores", default="memory,memcached", help="comma-separated stores")
    parser.add_argument(
        "--routes", default=",".join(ROUTES), help="comma-separated routes: counter, balance, ceiling (no session)"
    )
    parser.add_argument("--sessions", type=int, default=500, help="browsers prepared per server and kind")
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    stores = args.stores.split(",")
    routes = args.routes.split(",")
    if unknown := set(routes) - set(SCENARIOS):
        parser.error(f"unknown routes: {', '.join(sorted(unknown))}")
    revision = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()

    split = split_cpus()
    if split:
        os.sched_setaffinity(0, split[1])
    work = Path(tempfile.mkdtemp(prefix="bench-paired-"))
    users = users_file(work)
    memcached_port = free_port()
    memcached = memcached_command(memcached_port)
    base_env = {
        "SESSION_SECRETS": os.urandom(32).hex(),
        "USERS_FILE": str(users),
        "LOG_FORMAT": "text",
        **UNLIMITED_CLIENT,
    }
    store_env = {
        "memory": base_env,
        "memcached": {**base_env, "SESSION_STORE": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{memcached_port}"},
    }

    with checkout(args.baseline) as baseline_dir, process(memcached, work / "memcached.log"):
        wait_for_port(memcached_port)
        pairs = {
            store: (
                server(f"ours-{store}", ROOT, store_env[store]),
                server(f"base-{store}", baseline_dir, store_env[store]),
            )
            for store in stores
        }
        everything = [s for pair in pairs.values() for s in pair]
        try:
            for s in everything:
                s.cpus = split[0] if split else None
                s.start(work)
                prepare_browsers(s, args.sessions, work)
                wrk(s.base_url, "/api", s.cookies["anonymous"], 10, 1)  # warm-up
            errors = {"ours": 0, "base": 0}
            rps: dict[tuple[str, str, int, str], list[float]] = {}
            p50: dict[tuple[str, str, int, str], list[float]] = {}
            combos = [(store, route, c) for store in stores for route in routes for c in concurrencies]
            for round_number in range(args.rounds):
                print(f"round {round_number + 1} of {args.rounds}", flush=True)
                order = list(combos)
                random.Random(round_number).shuffle(order)
                for store, route, concurrency in order:
                    sides = list(zip(("ours", "base"), pairs[store], strict=True))
                    random.Random(f"{round_number}{store}{route}{concurrency}").shuffle(sides)
                    for side, s in sides:
                        path, kind = SCENARIOS[route]
                        run = wrk(s.base_url, path, s.cookies[kind], concurrency, args.duration)
                        # Kept, not fatal: a stall of the loaded machine (a store timeout) is noise
                        # that lands on either side; the report shows how many there were.
                        errors[side] += int(run["errors"])
                        rps.setdefault((store, route, concurrency, side), []).append(run["rps"])
                        p50.setdefault((store, route, concurrency, side), []).append(run["p50_ms"])
        finally:
            for s in everything:
                s.stop()

    rows = []
    for store, route, concurrency in combos:
        ours, theirs = rps[store, route, concurrency, "ours"], rps[store, route, concurrency, "base"]
        rows.append(
            {
                "store": store,
                "route": route,
                "concurrency": concurrency,
                "ours_rps": round(statistics.median(ours), 1),
                "baseline_rps": round(statistics.median(theirs), 1),
                "ours_p50_ms": round(statistics.median(p50[store, route, concurrency, "ours"]), 3),
                "baseline_p50_ms": round(statistics.median(p50[store, route, concurrency, "base"]), 3),
                "ratio": ratios(ours, theirs),
            }
        )
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "baseline": revision,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "pinned": bool(split),
        "errors": errors,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"paired-{revision}-{int(time.time())}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nthis checkout / {revision}, median of {args.rounds} paired rounds (spread); errors {errors}:")
    for row in rows:
        r = row["ratio"]
        print(
            f"  {row['store']:9} {row['route']:7} c={row['concurrency']:<3} {row['ours_rps']:>8} / "
            f"{row['baseline_rps']:>8} req/s  ratio {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})  "
            f"p50 {row['ours_p50_ms']:.3f} / {row['baseline_p50_ms']:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
