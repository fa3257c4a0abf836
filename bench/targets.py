"""The benchmark's targets: each a measured figure, its spread, a goal, and whether it is met.

Throughput ratios are paired per round (``bench.figures.paired``). Every target but the memory
store's is evaluated once per mode (pinned, unpinned); those come from one measurement.
"""

from __future__ import annotations

from typing import Any

from bench.figures import find, in_mode, paired

# Ours at one connection: the memcached counter and read answer within this (ms, median).
LATENCY_GOAL_MS = 0.45
# Ours on memcached at one connection against express-session on connect-memcached.
LEAD_GOAL = 1.3
# Ours against express-session (same store, same scenario), at every concurrency.
NEVER_BEHIND_GOAL = 1.0
# A session route against the same server's sessionless ceiling, at the highest concurrency.
SESSION_LAYER_GOAL = 0.90
SESSION_SCENARIOS = ("counter", "balance")
STORES = ("memory", "memcached")


def target(name: str, value: float, goal: str, met: bool, spread: list[float] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"target": name, "value": value, "goal": goal, "met": met}
    if spread is not None:
        found["spread"] = spread
    return found


def ratio_target(
    results: list[dict[str, Any]], name: str, a: tuple[str, str], b: tuple[str, str], c: int, minimum: float
) -> list[dict[str, Any]]:
    found = paired(results, a, b, c)
    if not found:
        return []
    return [target(name, found[0], f">= {minimum}", found[0] >= minimum, found[1])]


def latency_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(a) Ours on memcached at one connection: p50 within LATENCY_GOAL_MS (spread: the runs' p50s)."""
    found = []
    for scenario in SESSION_SCENARIOS:
        r = find(results, "ours-memcached", scenario, 1)
        if r:
            p50s = [run["p50_ms"] for run in r.get("runs", [])] or [r["p50_ms"]]
            spread = [round(min(p50s), 3), round(max(p50s), 3)]  # as the median is rounded
            goal = LATENCY_GOAL_MS
            found.append(
                target(f"memcached {scenario} c=1 p50 ms", r["p50_ms"], f"<= {goal}", r["p50_ms"] <= goal, spread)
            )
    return found


def express_targets(results: list[dict[str, Any]], concurrencies: list[int]) -> list[dict[str, Any]]:
    """(b) a lead over express-session on memcached at one connection; (c) never behind it."""
    found = []
    for scenario in SESSION_SCENARIOS:
        pair = ("ours-memcached", scenario), ("express-memcached", scenario)
        found += ratio_target(results, f"lead: memcached {scenario} c=1 / express-session", *pair, 1, LEAD_GOAL)
    for store in STORES:
        for scenario in SESSION_SCENARIOS:
            for c in concurrencies:
                pair = (f"ours-{store}", scenario), (f"express-{store}", scenario)
                name = f"{store} {scenario} c={c} / express-session"
                found += ratio_target(results, name, *pair, c, NEVER_BEHIND_GOAL)
    return found


def session_layer_targets(results: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """(d) Each session route against its server's ceiling, and memcached against memory, at ``top``."""
    found = []
    for store in STORES:
        for scenario in SESSION_SCENARIOS:
            pair = (f"ours-{store}", scenario), (f"ours-{store}", "ceiling")
            found += ratio_target(results, f"{store} {scenario} / ceiling", *pair, top, SESSION_LAYER_GOAL)
    pair = ("ours-memcached", "counter"), ("ours-memory", "counter")
    return found + ratio_target(results, "memcached counter / memory counter", *pair, top, 0.80)


def tail_targets(results: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """p99 within three times p50 on our servers at ``top``; 50 connections through a 20 ms memcached
    get ten times one connection's throughput."""
    found = []
    for r in results:
        if r["concurrency"] == top and r["server"] in ("ours-memory", "ours-memcached"):
            value = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else 0.0
            found.append(target(f"p99 / p50, {r['server']} {r['scenario']}", round(value, 2), "<= 3", value <= 3))
    delayed_top, delayed_one = (
        find(results, "ours-delayed", "counter", top),
        find(results, "ours-delayed", "counter", 1),
    )
    if delayed_top and delayed_one and delayed_one["rps"]:
        value = delayed_top["rps"] / delayed_one["rps"]
        name = f"20 ms memcached: counter c={top} / c=1"
        found.append(target(name, round(value, 3), ">= 10.0", value >= 10.0))
    return found


def memory_targets(memory: dict[str, Any]) -> list[dict[str, Any]]:
    """The memory store with 1,000,000 sessions: bytes per session, the longest stall expiring them."""
    per = memory["rss_bytes_per_session"]
    stall = memory["longest_stall_ms"]
    return [
        target("memory store bytes per session", per, "<= 1024", per <= 1024),
        target(
            "longest stall expiring 100,000 (ms)", stall, "<= 10", stall <= 10, memory.get("longest_stall_spread_ms")
        ),
    ]


def evaluate(results: list[dict[str, Any]], memory: dict[str, Any] | None, top: int) -> list[dict[str, Any]]:
    """The targets over ``results`` of one mode (and the memory store's, if measured)."""
    concurrencies = sorted({r["concurrency"] for r in results if r["server"].startswith("express-")})
    targets = session_layer_targets(results, top) + latency_targets(results)
    targets += express_targets(results, concurrencies) + tail_targets(results, top)
    return targets + (memory_targets(memory) if memory else [])


def evaluate_modes(
    results: list[dict[str, Any]], memory: dict[str, Any] | None, top: int, modes: list[str]
) -> list[dict[str, Any]]:
    """Every mode's targets, each marked with its mode, then the memory store's (measured once)."""
    targets = [{"mode": mode, **found} for mode in modes for found in evaluate(in_mode(results, mode), None, top)]
    return targets + [{"mode": None, **found} for found in (memory_targets(memory) if memory else [])]


def target_line(t: dict[str, Any]) -> str:
    """One target as the benchmark prints it."""
    spread = f", spread {t['spread'][0]}-{t['spread'][1]}" if t.get("spread") else ""
    mode = f"[{t['mode']}] " if t.get("mode") else ""
    return f"{'met ' if t['met'] else 'MISS'}  {mode}{t['target']}: {t['value']} (goal {t['goal']}{spread})"
