"""The floor under a memcached request: the memory store's latency plus memcached's raw round trips.

The benchmark times many ``version`` exchanges with its memcached on one raw socket (no client
library, no batching, one request in flight) and keeps the median: the least a round trip to
that memcached costs from where the servers run in the mode being measured (in pinned runs,
from the servers' core, memcached being on the other: the cross-core wake-ups count). A memcached scenario at one
connection cannot answer faster than the same scenario on the memory store plus the round trips
it needs times that figure; what it takes beyond is the store client's own cost.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

from bench.figures import find, in_mode

# Round trips to memcached a request needs: the counter writes its session against the copy this
# process kept when it last wrote it (``cas``, with the key read back in the same send; see
# `SessionHandler.runs_on_copies`); the logged-in read reads it (``gets``; its touch goes out at
# most once per touch interval, not per request).
ROUND_TRIPS = {"counter": 1, "balance": 1}


def raw_round_trip(port: int, exchanges: int = 3000, warm_up: int = 200) -> dict[str, float]:
    """Median and 90th percentile, in ms, of ``version`` exchanges with memcached on ``port``."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warm_up + exchanges):
            start = time.perf_counter_ns()
            sock.sendall(b"version\r\n")
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    raise RuntimeError("memcached closed the connection")
                answer += chunk
            if i >= warm_up:
                times.append(time.perf_counter_ns() - start)
    if not answer.startswith(b"VERSION "):
        raise RuntimeError(f"memcached answered {answer!r} to version")
    cuts = statistics.quantiles(times, n=10)
    return {"median_ms": round(statistics.median(times) / 1e6, 5), "p90_ms": round(cuts[-1] / 1e6, 5)}


def floor_rows(results: list[dict[str, Any]], round_trip: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """For each mode and memcached scenario at one connection: its p50 beside its floor."""
    rows = []
    for mode, rtt in round_trip.items():
        measured = in_mode(results, mode)
        for scenario, trips in ROUND_TRIPS.items():
            on_memcached = find(measured, "ours-memcached", scenario, 1)
            on_memory = find(measured, "ours-memory", scenario, 1)
            if not on_memcached or not on_memory:
                continue
            floor = on_memory["p50_ms"] + trips * rtt["median_ms"]
            rows.append(
                {
                    "mode": mode,
                    "scenario": scenario,
                    "round_trips": trips,
                    "memory_p50_ms": on_memory["p50_ms"],
                    "rtt_ms": rtt["median_ms"],
                    "floor_ms": round(floor, 3),
                    "p50_ms": on_memcached["p50_ms"],
                    "above_floor_ms": round(on_memcached["p50_ms"] - floor, 3),
                }
            )
    return rows
