"""The load benchmark: our server on both stores against its own ceiling and the reference app.

    .venv/bin/python bench/run.py            # full run, a few minutes; updates docs/BENCHMARKS.md
    .venv/bin/python bench/run.py --smoke    # seconds: checks the machinery only

Starts memcached, the server (memory store, memcached store, memcached behind a 20 ms delaying
proxy) and, when Node.js is present, the reference Express app (memory store and
connect-memcached). Prepares 1,000 real browsers' cookies per server (anonymous ones for the page
counter, logged-in ones for the balance), then drives each scenario with wrk and a Lua script
that rotates through them. Every figure is the median of several runs, with the spread kept.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from harness import cpu_seconds as cpu_seconds  # noqa: E402  (shared with the tests)
from harness import free_port as free_port  # noqa: E402
from stores.users import hash_password  # noqa: E402

SCENARIOS = {
    "ceiling": ("/livez", "anonymous"),  # sessionless route on the same server
    "counter": ("/api", "anonymous"),  # a read and a write per request
    "balance": ("/api/balance", "logged_in"),  # logged-in, read-only
}
LOGIN = {"email": "max@gmail.com", "password": "1234"}
# Every browser the benchmark prepares is one account on one address: the budgets a real client
# gets would stop it after a few logins and 600 new sessions (they are measured in login_abuse.py).
UNLIMITED_CLIENT = {
    "LOGIN_PAIR_BUDGET": "1000000",
    "LOGIN_ADDRESS_BUDGET": "1000000",
    "LOGIN_ACCOUNT_BUDGET": "1000000",
    "NEW_SESSIONS_PER_ADDRESS": "1000000",
}

T = TypeVar("T")


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the servers' CPU, everything else's), or None with fewer than two CPUs to split.

    Each server under test gets one core to itself; wrk, memcached and this script share the
    others. Left to the scheduler, wrk sometimes lands on the server's core, and a run measures
    that instead of the server.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> None:
    """Move a process to ``cpus``: every thread it has now (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.1)


@dataclass
class Server:
    """One server under test: a name, how to start it, and the browsers prepared for it."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    cookies: dict[str, Path] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    cpus: set[int] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(self.base_url + "/livez")
        if self.cpus:
            pin(self.process.pid, self.cpus)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def browser_cookie(server: Server, logged_in: bool) -> str:
    """One new browser's cookies after its first visit (GET /api) or a login, as a Cookie header."""
    if logged_in:
        request = urllib.request.Request(
            server.base_url + "/api/login",
            data=json.dumps(LOGIN).encode(),
            headers={"Content-Type": "application/json", "Origin": server.base_url},
            method="POST",
        )
    else:
        request = urllib.request.Request(server.base_url + "/api")
    with urllib.request.urlopen(request, timeout=10) as response:
        cookies = [c.split(";")[0] for c in response.headers.get_all("Set-Cookie") or []]
    if not cookies:
        raise RuntimeError(f"{server.name}: no cookie from {request.full_url}")
    return "; ".join(cookies)


def prepare_browsers(server: Server, count: int, directory: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for kind, logged_in in (("anonymous", False), ("logged_in", True)):
            lines = list(pool.map(browser_cookie, [server] * count, [logged_in] * count))
            path = directory / f"{server.name}-{kind}.cookies"
            path.write_text("\n".join(lines) + "\n")
            server.cookies[kind] = path


def wrk(url: str, path: str, cookies: Path, concurrency: int, duration: int) -> dict[str, float]:
    """One wrk run; returns requests per second and latency percentiles in milliseconds."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s", "-s", str(BENCH / "rotate.lua"), url],
        env={**os.environ, "COOKIES": str(cookies), "BENCH_PATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH "))
    raw = json.loads(line[6:])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["non_2xx"] + raw["socket_errors"],
    }


def cpu_per_request(before: tuple[float, float], after: tuple[float, float], run: dict[str, float]) -> dict[str, float]:
    """What one wrk run cost the server: CPU µs per request in all and on its main thread, and how
    busy it kept its core (CPU seconds per second of the run; 1.0 is a whole core)."""
    main, others = after[0] - before[0], max(0.0, after[1] - before[1])
    requests = run["requests"] or 1
    return {
        "cpu_us": (main + others) / requests * 1e6,
        "loop_us": main / requests * 1e6,
        "busy": (main + others) / run["seconds"],
    }


CPU_FIGURES = ("cpu_us", "loop_us", "busy")


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    summary: dict[str, Any] = {
        "rps": round(statistics.median(rps), 1),
        "rps_min": round(min(rps), 1),
        "rps_max": round(max(rps), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "errors": int(sum(r["errors"] for r in runs)),
    }
    for figure in CPU_FIGURES:
        if all(figure in r for r in runs):
            summary[figure] = round(statistics.median(r[figure] for r in runs), 3)
    summary["runs"] = [{k: round(v, 3) for k, v in r.items()} for r in runs]
    return summary


# Latency the delaying proxy adds in front of memcached, each way a request goes.
DELAY_MS = 20


def delayed_figure(concurrency: int, runs: list[dict[str, float]]) -> dict[str, Any]:
    """The counter behind the delaying proxy; refused if it was not delayed (the proxy not in the path)."""
    entry = {"server": "ours-delayed", "scenario": "counter", "concurrency": concurrency, **summarise(runs)}
    if entry["p50_ms"] < DELAY_MS:
        raise RuntimeError(f"memcached answered in under {DELAY_MS} ms through the delaying proxy: {entry}")
    return entry


@contextlib.contextmanager
def process(command: list[str], log: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing on port {port}")
        time.sleep(0.05)


def users_file(directory: Path) -> Path:
    """The benchmark's users file: the login user, with a cheap hash (the benchmark logs in
    thousands of browsers; login cost is not what it measures)."""
    path = directory / "users.json"
    password_hash = hash_password(LOGIN["password"], cost=(10, 8, 1))
    user = {"email": LOGIN["email"], "name": "Max Miller", "balance": 53762, "password_hash": password_hash}
    path.write_text(json.dumps([user]))
    return path


def memcached_command(port: int) -> list[str]:
    """memcached on loopback ``port``: 512 MB, one thread, no UDP."""
    command = [shutil.which("memcached") or "/usr/bin/memcached", "-l", "127.0.0.1", "-p", str(port)]
    command += ["-U", "0", "-m", "512", "-t", "1"]
    return command + (["-u", "root"] if os.geteuid() == 0 else [])


def our_server(name: str, env: dict[str, str]) -> Server:
    port = free_port()
    return Server(name, [sys.executable, "server.py", "--env=dev", f"--port={port}"], env, ROOT, port)


def express_server(name: str, env: dict[str, str]) -> Server:
    port = free_port()
    return Server(name, ["node", "app.js"], {**env, "PORT": str(port)}, BENCH / "express", port)


def measure(servers: list[Server], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every scenario on every server, in rounds. Each round takes the servers in a shuffled order
    and runs one server's combinations back to back, also shuffled: drift and carry-over land on
    every figure alike, and a ratio within one server compares runs made seconds apart."""
    for server in servers:
        # A warm-up, so the first measured run does not pay for imports, caches and JIT.
        wrk(server.base_url, "/api", server.cookies["anonymous"], 10, 1)
    combos = [(scenario, concurrency) for scenario in SCENARIOS for concurrency in args.concurrency]
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    top = max(args.concurrency)
    # The targets are read at the highest concurrency: it gets more rounds than the others.
    target_runs = max(args.runs, getattr(args, "target_runs", args.runs))
    for round_number in range(target_runs):
        print(f"round {round_number + 1} of {target_runs}", flush=True)
        in_round = args.concurrency if round_number < args.runs else [top]
        # A new order each round (seeded: reproducible): one concurrency at a time, each server's
        # scenarios back to back, so the runs a ratio pairs are seconds apart.
        shuffle = random.Random(round_number).shuffle
        for concurrency in shuffled(in_round, shuffle):
            for server in shuffled(servers, shuffle):
                for scenario in shuffled(SCENARIOS, shuffle):
                    path, kind = SCENARIOS[scenario]
                    pid = server.process.pid if server.process else None
                    before = cpu_seconds(pid) if pid else None
                    result = wrk(server.base_url, path, server.cookies[kind], concurrency, args.duration)
                    if pid and before is not None:
                        result.update(cpu_per_request(before, cpu_seconds(pid), result))
                    runs.setdefault((server.name, scenario, concurrency), []).append(result)
    results = []
    for server in servers:  # reported in a fixed order, whatever the run order
        for scenario, concurrency in combos:
            measured = runs[(server.name, scenario, concurrency)]
            entry = {"server": server.name, "scenario": scenario, "concurrency": concurrency, **summarise(measured)}
            results.append(entry)
            print(
                f"  {server.name:18} {scenario:8} c={concurrency:<3} {entry['rps']:8.0f} rps "
                f"(spread {entry['rps_min']:.0f}-{entry['rps_max']:.0f})  p50 {entry['p50_ms']:6.2f} ms  "
                f"p99 {entry['p99_ms']:6.2f} ms  errors {entry['errors']}",
                flush=True,
            )
    return results


def shuffled(items: Iterable[T], shuffle: Callable[[list[T]], None]) -> list[T]:
    """A new list of ``items`` in the order ``shuffle`` gives."""
    order = list(items)
    shuffle(order)
    return order


def find(results: list[dict[str, Any]], server: str, scenario: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (r for r in results if (r["server"], r["scenario"], r["concurrency"]) == (server, scenario, concurrency)), None
    )


def paired(
    results: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str], concurrency: int, figure: str = "rps"
) -> tuple[float, list[float]] | None:
    """``figure`` of (server, scenario) ``a`` over that of ``b``: the median of the rounds' own ratios
    and their spread. Each pairs two runs of the same round, so a slow stretch of the machine
    touches both sides of a ratio rather than one of them."""
    first, second = find(results, *a, concurrency), find(results, *b, concurrency)
    if not first or not second:
        return None
    pairs = [
        x[figure] / y[figure]
        for x, y in zip(first["runs"], second["runs"], strict=False)
        if y.get(figure) and figure in x
    ]
    if not pairs:
        return None
    return round(statistics.median(pairs), 3), [round(min(pairs), 3), round(max(pairs), 3)]


def cpu_figures(results: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Our servers' CPU per request at ``top`` connections, beside their throughput.

    For each session route, paired per round: ceiling CPU / route CPU (how much of the ceiling's
    speed the route's CPU cost allows), the route's core busy over the ceiling's, and the throughput
    ratio. In each round the throughput ratio is the product of the other two: what a route loses
    to the ceiling is either CPU it spends or time its core sits idle (waiting)."""
    rows = []
    for server in ("ours-memory", "ours-memcached"):
        for scenario in SCENARIOS:
            r = find(results, server, scenario, top)
            if not r or "cpu_us" not in r:
                continue
            row = {"server": server, "scenario": scenario, **{k: r[k] for k in CPU_FIGURES}}
            row["others_us"] = round(r["cpu_us"] - r["loop_us"], 3)
            if scenario != "ceiling":
                row["cpu_ratio"] = paired(results, (server, "ceiling"), (server, scenario), top, "cpu_us")
                row["rps_ratio"] = paired(results, (server, scenario), (server, "ceiling"), top)
                row["busy_ratio"] = paired(results, (server, scenario), (server, "ceiling"), top, "busy")
            rows.append(row)
    return rows


def evaluate(results: list[dict[str, Any]], memory: dict[str, Any] | None, top: int) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""

    def rps(server: str, scenario: str, c: int = top) -> float | None:
        r = find(results, server, scenario, c)
        return r["rps"] if r else None

    targets: list[dict[str, Any]] = []

    def ratio(name: str, a: tuple[str, str], b: tuple[str, str], minimum: float) -> None:
        found = paired(results, a, b, top)
        if found:
            value, spread = found
            targets.append(
                {"target": name, "value": value, "spread": spread, "goal": f">= {minimum}", "met": value >= minimum}
            )

    ratio("memory counter / ceiling", ("ours-memory", "counter"), ("ours-memory", "ceiling"), 0.90)
    ratio("memcached counter / memory counter", ("ours-memcached", "counter"), ("ours-memory", "counter"), 0.80)
    ratio("memory balance / ceiling", ("ours-memory", "balance"), ("ours-memory", "ceiling"), 0.90)
    ratio("memcached balance / ceiling", ("ours-memcached", "balance"), ("ours-memcached", "ceiling"), 0.90)
    for store in ("memory", "memcached"):
        for scenario in ("counter", "balance"):
            ratio(
                f"{store} {scenario} / express-session",
                (f"ours-{store}", scenario),
                (f"express-{store}", scenario),
                1.0,
            )
    for r in results:
        if r["concurrency"] == top and r["server"].startswith("ours-") and r["server"] != "ours-delayed":
            value = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else 0.0
            targets.append(
                {
                    "target": f"p99 / p50, {r['server']} {r['scenario']}",
                    "value": round(value, 2),
                    "goal": "<= 3",
                    "met": value <= 3,
                }
            )
    delayed_top, delayed_one = rps("ours-delayed", "counter", top), rps("ours-delayed", "counter", 1)
    if delayed_top is not None and delayed_one:
        value = delayed_top / delayed_one
        targets.append(
            {
                "target": f"20 ms memcached: counter c={top} / c=1",
                "value": round(value, 3),
                "goal": ">= 10.0",
                "met": value >= 10.0,
            }
        )
    if memory:
        per = memory["rss_bytes_per_session"]
        targets.append(
            {"target": "memory store bytes per session", "value": per, "goal": "<= 1024", "met": per <= 1024}
        )
        stall = memory["longest_stall_ms"]
        target = {"target": "longest stall expiring 100,000 (ms)", "value": stall, "goal": "<= 10", "met": stall <= 10}
        if "longest_stall_spread_ms" in memory:
            target["spread"] = memory["longest_stall_spread_ms"]
        targets.append(target)
    return targets


def explain(report: dict[str, Any], top: int) -> list[str]:
    """What stands in the way of each missed target, from this run's own figures."""
    results = report["results"]
    missed = {t["target"] for t in report["targets"] if not t["met"]}

    def rps(server: str, scenario: str) -> float:
        r = find(results, server, scenario, top)
        return float(r["rps"]) if r else float("nan")

    notes = []

    measured = {t["target"]: t["value"] for t in report["targets"]}

    def extra_us(store: str, scenario: str) -> float:
        # The server runs near one full core under load, so 1/rps is its time per request; the
        # paired ratio (not the two medians) says how much longer the session route takes.
        ratio = measured.get(f"{store} {scenario} / ceiling")
        ceiling_us = 1e6 / rps(f"ours-{store}", "ceiling")
        return ceiling_us * (1 / ratio - 1) if ratio else float("nan")

    if "memcached counter / memory counter" in missed:
        notes.append(
            "- **memcached page counter.** The loads and compare-and-swap writes of one loop iteration go "
            "to memcached as one batch: one hand-off to a worker thread, one send and one round trip "
            "(`BatchClient.exchange`), the answers back by callback on the loop. Instrumented under load, "
            "a batch's round trip took 0.75-1.1 ms of a cycle of about 20 ms, so the loop seldom waits; "
            "a run below the target is within this machine's spread (see the spread columns) or a sign "
            "that batches were small (few connections)."
        )
    counted = report.get("instructions", {}).get("memory")
    counted_text = (
        f"Counted in instructions (this run's table above), the counter keeps "
        f"{counted['ceiling'] / counted['counter']:.3f} of the ceiling and the balance "
        f"{counted['ceiling'] / counted['balance']:.3f}."
        if counted
        else "Counted in instructions (`bench/instructions.py`), the counter kept 0.926 of the ceiling and "
        "the balance 0.934 when last counted."
    )

    if missed & {"memory counter / ceiling", "memory balance / ceiling"}:
        alone = report.get("session_layer_us", {})
        json_us = alone.get("decode_record_json", 0) + alone.get("encode_record_json", 0)
        ceiling_us = 1e6 / rps("ours-memory", "ceiling")
        cpu = {r["scenario"]: r for r in report.get("cpu", []) if r["server"] == "ours-memory"}
        cpu_text = ""
        if all(cpu.get(k, {}).get("cpu_ratio") for k in ("counter", "balance")):
            cpu_text = (
                f'It is CPU, not waiting ("Server CPU per request"): ceiling CPU / route CPU '
                f"{cpu['counter']['cpu_ratio'][0]:.3f} on the counter and {cpu['balance']['cpu_ratio'][0]:.3f} on the "
                f"balance, beside throughput ratios of {cpu['counter']['rps_ratio'][0]:.3f} and "
                f"{cpu['balance']['rps_ratio'][0]:.3f}, with the core {cpu['counter']['busy']:.2f} and "
                f"{cpu['balance']['busy']:.2f} busy. "
            )
        notes.append(
            f"- **Session routes against the ceiling.** In this run the session layer adds "
            f"{extra_us('memory', 'counter'):.0f} µs to the memory-store counter and "
            f"{extra_us('memory', 'balance'):.0f} µs to the balance, against {ceiling_us:.0f} µs for a "
            f"whole sessionless request; a 0.90 ratio allows {ceiling_us / 9:.0f} µs. {cpu_text}Alone, in a tight loop "
            f'("The session layer alone"), loading, incrementing and saving a session costs '
            f"{alone.get('load_increment_save', float('nan')):.0f} µs, {json_us:.0f} µs of it the record's "
            "JSON (orjson); the rest is Python: the cookie and timeout checks, the Session object and its "
            "operations, the store's bookkeeping. Inside a loaded server the same work takes about twice "
            "as long, and the handler adds its own share (one more coroutine, the session's headers, the "
            "XSRF cookie check). The ratio also falls as the bare request gets cheaper: cutting Tornado's "
            "per-request costs (access lines, the Date header, TCP_NODELAY, 64 KiB zero-filled reads) sped "
            f"every route up by the same microseconds, which is a larger share of the ceiling's. {counted_text} Of "
            "the balance's extra instructions (56k when last taken apart), about 9k are Tornado writing the "
            "one header it adds, Cache-Control, and about 10k the handler's own coroutine and finish. "
            "The rest is cache misses: with "
            "callgrind's simulated caches (one connection, counted before the cookie-header cache and the "
            "other trims of 2026-11-27) the balance adds 3.3k level-1 instruction-cache "
            "and 1.8k data-cache misses per request to the ceiling's 21.7k and 10.9k, about 25 µs at "
            "level-2 latency, spread over the interpreter and the C functions the session path calls "
            "(HMAC, JSON, dicts, allocation), none adding a tenth of them. It is not the rotation over "
            "1,000 sessions (rotating over 10, the balance was no faster in paired runs). Compiling the "
            "session core with mypyc (tried, not kept) halved the tight loop but moved a whole request by "
            "about 2%: no single function stands out any more, and what would reach 0.90 is a shorter "
            "path per request (less Python run and less code touched between the socket and the store: "
            "fewer Tornado and coroutine layers), not a faster session core."
        )
    if "memcached balance / ceiling" in missed:
        notes.append(memcached_read_note(report, extra_us("memcached", "balance"), extra_us("memory", "balance")))
    if any(t.endswith("/ express-session") for t in missed):
        ours, theirs = rps("ours-memory", "ceiling"), rps("express-memory", "ceiling")
        notes.append(
            f"- **express-session.** Node's HTTP stack (llhttp in C, V8) serves a sessionless route at "
            f"{theirs:.0f} req/s here against Tornado's pure-Python HTTP/1.1 at {ours:.0f}. Relative to its "
            f"own ceiling our session layer is the cheaper one: the memory-store counter keeps "
            f"{rps('ours-memory', 'counter') / ours:.2f} of our ceiling, express-session's "
            f"{rps('express-memory', 'counter') / theirs:.2f} of Express's. Beyond that the gap is the HTTP "
            "layer, not sessions; in production several processes per host behind nginx scale with cores."
        )
    return notes


def _points(share: float) -> str:
    points = round(100 * share)
    return f"{points} point{'' if points == 1 else 's'}"


def memcached_read_note(report: dict[str, Any], extra_us: float, memory_extra_us: float) -> str:
    """What stands in the way of the memcached read's target, from this run's CPU and instruction figures."""
    cpu = {(r["server"], r["scenario"]): r for r in report.get("cpu", [])}
    read, ceiling = cpu.get(("ours-memcached", "balance")), cpu.get(("ours-memcached", "ceiling"))
    memory_read = cpu.get(("ours-memory", "balance"))
    where = ""
    if read and ceiling and memory_read and all(read.get(k) for k in ("cpu_ratio", "rps_ratio", "busy_ratio")):
        where = (
            f'Where it goes ("Server CPU per request" above): the server kept its core '
            f"{read['busy']:.2f} busy on the read ({ceiling['busy']:.2f} on its ceiling), and the read cost "
            f"{read['cpu_us']:.0f} µs of CPU a request against the ceiling's {ceiling['cpu_us']:.0f}: ceiling "
            f"CPU / read CPU {read['cpu_ratio'][0]:.3f}, beside a throughput ratio of {read['rps_ratio'][0]:.3f}. "
            f"In each round the throughput ratio is the CPU ratio times the core's busy share against the "
            f"ceiling's, and that busy ratio is {read['busy_ratio'][0]:.3f} (median): waiting on memcached costs "
            f"about {_points(1 - read['busy_ratio'][0])}, the CPU the read spends the rest (the two "
            "medians can differ by more, being taken over rounds this far apart). Against the memory "
            f"store's read ({memory_read['cpu_us']:.0f} µs) it spends {read['loop_us'] - memory_read['loop_us']:+.0f} "
            f"µs on the IOLoop thread and {read['others_us'] - memory_read['others_us']:+.0f} µs on the worker "
            "threads. "
        )
    counted = report.get("instructions", {})
    on_memcached, on_memory = counted.get("memcached"), counted.get("memory")
    count = ""
    if on_memcached and on_memory:
        extra = on_memcached["balance"] - on_memory["balance"]
        count = (
            f"Counted under callgrind at {report.get('instructions_connections', '?')} connections, the "
            f"memcached read executes {extra:+.0f}k instructions ({extra / on_memory['balance']:+.1%}) against "
            "the memory read: the same work, counted. The counts vary more than the work does (a memcached "
            "read 860-912k over seven counts, a memory read 856-871k), since valgrind runs one thread at a "
            "time and its batches are not always whole. "
        )
    return (
        f"- **memcached reads.** In this run a memcached read adds {extra_us:.0f} µs to a request against the "
        f"ceiling; the memory store's adds {memory_extra_us:.0f} µs. {where}{count}"
        "What that CPU is: on the IOLoop thread, 25 more Python calls a read than on the memory store "
        "(cProfile at 50 connections: 690 against 665): the key's SHA-256, a future per load, the batch's "
        "bookkeeping, the record parsed and checked, and the coroutine frames between the handler and the "
        "store resumed after the wait (none of them suspends on the memory store, though one made to wait "
        "on a future for every load was no slower in paired runs: each step is small); on the workers, one "
        "batch's send and receive (one receive a batch of about 47 answers, 9 KB, instrumented) and its "
        "answers parsed in Python (3.0 µs a key in a tight loop, about a third of the workers' time), and the thread "
        "hand-offs. The loop waits little because a batch holds 47-50 of the 50 requests in flight and its "
        "round trip is under 1 ms of a cycle of about 20 ms. Measured and removed: a second value per load "
        "(last_seen in a key of its own), the garbage collector walking the suspended requests, touches "
        "as round trips of their own. Measured and not kept: the batch's reads parsed in C (libmemcached "
        "through pylibmc: no fewer instructions per read), and the exchange on a non-blocking connection "
        "in the IOLoop itself (asyncio, no worker threads: 1.08 and 0.99 of the threaded read's "
        "throughput in paired runs of 12 and 19 rounds, this machine's noise). No step costs more than "
        "about 1 µs; what would get the read to 0.90 is fewer Python steps per read, not a faster one: the "
        "exchange, the parsing of a batch's answers and the resolution of its waiting requests in one "
        "native call per batch, beside a compiled session core (mypyc on the core alone moved a whole "
        "request by about 2%)."
    )


def profile(server_env: dict[str, str], cookies_for: Server, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Run the counter at the top concurrency against a profiled server; summarise where time goes."""
    port = free_port()
    stats_path = log_dir / f"profile-{cookies_for.name}.json"
    server = Server(
        f"profile-{cookies_for.name}",
        [sys.executable, str(BENCH / "profiled_server.py"), str(stats_path), "--env=dev", f"--port={port}"],
        server_env,
        ROOT,
        port,
        cpus=cookies_for.cpus,
    )
    server.start(log_dir)
    try:
        prepare_browsers(server, min(200, args.sessions), log_dir)
        assert server.process is not None
        server.process.send_signal(signal.SIGUSR1)
        wrk(server.base_url, "/api", server.cookies["anonymous"], max(args.concurrency), max(2, args.duration))
        server.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    result: dict[str, Any] = json.loads(stats_path.read_text())
    return result


def write_docs(report: dict[str, Any], docs: Path) -> None:
    from bench.report import write_chart, write_markdown

    docs.mkdir(exist_ok=True)
    write_chart(report, docs / "benchmarks.png")
    write_markdown(report, docs / "BENCHMARKS.md", "benchmarks.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load benchmark of the session server.")
    # Many short runs rather than few long ones: on a shared machine a median of many is steadier.
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is kept)")
    parser.add_argument(
        "--target-runs",
        type=int,
        default=9,
        help="runs per figure at the highest concurrency, where the targets are read",
    )
    parser.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run")
    parser.add_argument("--concurrency", default="1,10,50", help="comma-separated connection counts")
    parser.add_argument("--sessions", type=int, default=1000, help="browsers prepared per server and kind")
    parser.add_argument("--no-express", action="store_true", help="skip the reference Express app")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1,000,000-session memory test")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument(
        "--no-instructions", action="store_true", help="skip counting instructions per request (callgrind)"
    )
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for the JSON results")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="folder for BENCHMARKS.md and the chart")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: check the machinery only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.target_runs, args.duration, args.concurrency, args.sessions = 1, 1, 1, "1,4", 20
        args.no_express = args.no_memory = args.no_profile = args.no_instructions = args.no_docs = True
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    top = max(args.concurrency)

    for binary in ("wrk", "memcached"):
        if not shutil.which(binary) and not Path(f"/usr/bin/{binary}").exists():
            print(f"bench: {binary} is not installed (make bench installs it as root)", file=sys.stderr)
            return 2
    express = not args.no_express and shutil.which("node") and (BENCH / "express" / "node_modules").is_dir()
    if not args.no_express and not express:
        print("bench: Node.js or bench/express/node_modules missing: the reference app is skipped", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = split_cpus()
    if split:
        # This script, and so wrk, memcached and the proxy it starts, keep off the servers' core.
        os.sched_setaffinity(0, split[1])
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    users = users_file(work)
    secret = os.urandom(32).hex()
    memcached_port, proxy_port = free_port(), free_port()
    memcached_cmd = memcached_command(memcached_port)
    base_env = {"SESSION_SECRETS": secret, "USERS_FILE": str(users), "LOG_FORMAT": "text", **UNLIMITED_CLIENT}
    memcached_env = {**base_env, "SESSION_STORE": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{memcached_port}"}
    servers = [our_server("ours-memory", base_env), our_server("ours-memcached", memcached_env)]
    if express:
        servers += [
            express_server("express-memory", {"STORE": "memory", "SECRET": secret}),
            express_server(
                "express-memcached",
                {"STORE": "memcached", "MEMCACHED": f"127.0.0.1:{memcached_port}", "SECRET": secret},
            ),
        ]
    delayed = our_server("ours-delayed", {**memcached_env, "MEMCACHED_SERVERS": f"127.0.0.1:{proxy_port}"})
    for server in [*servers, delayed]:
        server.cpus = split[0] if split else None

    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "server_cpus": sorted(split[0]) if split else None,
            "load_cpus": sorted(split[1]) if split else None,
        },
        "settings": {
            "runs": args.runs,
            "target_runs": max(args.runs, args.target_runs),
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "browsers_per_kind": args.sessions,
            "wrk_threads": 1,
        },
    }
    started = time.monotonic()
    with (
        process(memcached_cmd, work / "memcached.log"),
        process(
            [sys.executable, str(BENCH / "delay_proxy.py"), str(proxy_port), str(memcached_port), str(DELAY_MS)],
            work / "proxy.log",
        ) as proxy,
    ):
        wait_for_port(memcached_port)
        wait_for_port(proxy_port)
        if proxy.poll() is not None:  # something else answers on its port: no delay in the path
            raise RuntimeError(f"the delaying proxy exited: {(work / 'proxy.log').read_text()[-500:]}")
        for server in [*servers, delayed]:
            server.start(work)
        try:
            for server in servers:
                print(
                    f"{server.name}: preparing {args.sessions} anonymous and {args.sessions} logged-in browsers",
                    flush=True,
                )
                prepare_browsers(server, args.sessions, work)
            results.extend(measure(servers, args))
            print(f"ours-delayed: memcached behind a {DELAY_MS} ms delaying proxy", flush=True)
            prepare_browsers(delayed, min(args.sessions, 200), work)
            for concurrency in sorted({1, top}):
                runs = [
                    wrk(delayed.base_url, "/api", delayed.cookies["anonymous"], concurrency, max(args.duration, 2))
                    for _ in range(args.runs)
                ]
                entry = delayed_figure(concurrency, runs)
                results.append(entry)
                print(
                    f"  ours-delayed       counter  c={concurrency:<3} {entry['rps']:8.0f} rps  "
                    f"p50 {entry['p50_ms']:6.2f} ms",
                    flush=True,
                )
        finally:
            for server in [*servers, delayed]:
                server.stop()
        if not args.no_profile:
            print("profiling the page counter on both stores", flush=True)
            report["profile"] = {
                "memory": profile(base_env, servers[0], args, work),
                "memcached": profile(memcached_env, servers[1], args, work),
            }
    memory = None
    if not args.no_memory:
        print("memory store: 1,000,000 sessions", flush=True)
        memory = json.loads(
            subprocess.run(
                [sys.executable, str(BENCH / "memory_sessions.py")], capture_output=True, text=True, check=True
            ).stdout
        )
        report["memory_store"] = memory
        print(f"  {memory}", flush=True)
    print("session layer alone (no HTTP)", flush=True)
    report["session_layer_us"] = json.loads(
        subprocess.run(
            [sys.executable, str(BENCH / "session_layer.py")], capture_output=True, text=True, check=True
        ).stdout
    )
    if not args.no_instructions:
        if shutil.which("valgrind") and shutil.which("callgrind_control"):
            # At the targets' concurrency, so the counts hold the same batches as the ratios.
            print(f"instructions per request (callgrind, {top} connections)", flush=True)
            from bench.instructions import measure as count_instructions

            report["instructions_connections"] = top
            report["instructions"] = {
                store: count_instructions(ROOT, store, 10 * top, work, top) for store in ("memory", "memcached")
            }
            print(f"  {report['instructions']}", flush=True)
        else:
            print("instructions per request: skipped, valgrind is not installed", flush=True)
    report["results"] = results
    report["targets"] = evaluate(results, memory, top)
    report["cpu"] = cpu_figures(results, top)
    report["notes"] = explain(report, top)
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\ntargets:")
    for t in report["targets"]:
        print(f"  {'met ' if t['met'] else 'MISS'}  {t['target']}: {t['value']} (goal {t['goal']})")
    if not args.no_docs:
        write_docs(report, Path(args.docs))
        print(f"\nwrote {args.docs}/BENCHMARKS.md and benchmarks.png")
    print(f"results: {out / 'latest.json'} ({report['seconds']} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
