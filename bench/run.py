"""The load benchmark: our server on both stores against its own ceiling and the reference app.

    .venv/bin/python bench/run.py            # full run, about 19 minutes on 2 cores; updates docs/BENCHMARKS.md
    .venv/bin/python bench/run.py --smoke    # under a minute: checks the machinery only

Starts memcached, the server (memory store, memcached store, memcached behind a 20 ms delaying
proxy) and, when Node.js is present, the reference Express app (memory store and
connect-memcached). Prepares 1,000 real browsers' cookies per server (anonymous ones for the page
counter, logged-in ones for the balance), then drives each scenario with wrk and a Lua script
that rotates through them. Every figure is the median of several runs, with the spread kept.

Everything is measured in two modes (``--pinning``): pinned, each server on a core of its own and
wrk, memcached and this script on the others; and unpinned, everything left to the scheduler, as
on a host nobody tuned. Each mode also times the raw round trip to memcached from this process,
the floor under a memcached request. The memory store at scale, the profile and the instruction
counts are measured once.

How long the defaults take on 2 cores, per mode: 5 rounds of every figure (4 servers, 3 scenarios,
3 concurrencies: 36 runs of 2 s, 72 s a round) and 2 more rounds at 1 and 50 connections (24 runs,
48 s), then the delayed counter (5 runs of 2 s at 1 and 50 connections): about 480 s. Both modes
about 16 minutes; with the browsers' preparation, the profile, the memory store at scale and the
instruction counts (about 2.5 minutes, once), about 19 minutes in all.
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

from bench.figures import MODES, in_mode  # noqa: E402
from bench.figures import find as find  # noqa: E402  (re-exported)
from bench.figures import paired as paired  # noqa: E402
from bench.floor import floor_rows, raw_round_trip  # noqa: E402
from bench.notes import explain as explain  # noqa: E402  (re-exported)
from bench.notes import explain_modes  # noqa: E402
from bench.notes import memcached_read_note as memcached_read_note  # noqa: E402
from bench.pinning import apply_mode  # noqa: E402
from bench.pinning import pin as pin  # noqa: E402  (re-exported)
from bench.pinning import split_cpus as split_cpus  # noqa: E402
from bench.targets import evaluate as evaluate  # noqa: E402
from bench.targets import evaluate_modes, target_line  # noqa: E402
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
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

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
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),  # the floor is in µs
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


def redis_command(port: int, directory: Path, appendfsync: str = "everysec") -> list[str]:
    """redis-server on loopback ``port``, its files in ``directory``, no snapshots; with the
    append-only file as docs/STORES.md sets up a durable store (``appendfsync`` "everysec" or
    "always"), or none ("off")."""
    command = [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    command += ["--dir", str(directory), "--save", ""]
    if appendfsync == "off":
        return [*command, "--appendonly", "no"]
    return [*command, "--appendonly", "yes", "--appendfsync", appendfsync]


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
    # Most targets are read at one connection and at the highest: they get more rounds than the others.
    targeted = [c for c in args.concurrency if c in (1, max(args.concurrency))]
    target_runs = max(args.runs, getattr(args, "target_runs", args.runs))
    for round_number in range(target_runs):
        print(f"round {round_number + 1} of {target_runs}", flush=True)
        in_round = args.concurrency if round_number < args.runs else targeted
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
    from bench.report import write_chart, write_latency_chart, write_markdown

    docs.mkdir(exist_ok=True)
    write_chart(report, docs / "benchmarks.png")
    write_latency_chart(report, docs / LATENCY_CHART)
    write_markdown(report, docs / "BENCHMARKS.md", "benchmarks.png", LATENCY_CHART)


LATENCY_CHART = "benchmarks-latency.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load benchmark of the session server.")
    # Many short runs rather than few long ones: on a shared machine a median of many is steadier.
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (the median is kept)")
    parser.add_argument(
        "--target-runs",
        type=int,
        default=7,
        help="runs per figure at 1 connection and the highest concurrency, where most targets are read",
    )
    parser.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run")
    parser.add_argument("--concurrency", default="1,10,50", help="comma-separated connection counts")
    parser.add_argument(
        "--pinning",
        default=",".join(MODES),
        help="comma-separated modes: pinned (each server on a core of its own, the load on the others), "
        "unpinned (everything left to the scheduler)",
    )
    parser.add_argument("--sessions", type=int, default=1000, help="browsers prepared per server and kind")
    parser.add_argument("--no-express", action="store_true", help="skip the reference Express app")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1,000,000-session memory test")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument(
        "--no-instructions", action="store_true", help="skip counting instructions per request (callgrind)"
    )
    parser.add_argument("--out", default=str(BENCH / "results"), help="folder for the JSON results")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="folder for BENCHMARKS.md and the charts")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    parser.add_argument("--smoke", action="store_true", help="under a minute: check the machinery only (both modes)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.target_runs, args.duration, args.concurrency, args.sessions = 1, 1, 1, "1,4", 20
        args.no_express = args.no_memory = args.no_profile = args.no_instructions = args.no_docs = True
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.pinning = [m.strip() for m in str(args.pinning).split(",") if m.strip()]
    if not args.pinning or set(args.pinning) - set(MODES):
        parser.error(f"--pinning takes a comma-separated list of {', '.join(MODES)}")
    return args


def missing_tools(args: argparse.Namespace) -> bool:
    """Says what is missing; True if the benchmark cannot run. Leaves Express out without Node.js."""
    for binary in ("wrk", "memcached"):
        if not shutil.which(binary) and not Path(f"/usr/bin/{binary}").exists():
            print(f"bench: {binary} is not installed (make bench installs it as root)", file=sys.stderr)
            return True
    express = shutil.which("node") and (BENCH / "express" / "node_modules").is_dir()
    if not args.no_express and not express:
        print("bench: Node.js or bench/express/node_modules missing: the reference app is skipped", flush=True)
        args.no_express = True
    return False


@dataclass
class Setup:
    """What one benchmark run starts: its memcached, the delaying proxy's port, and the servers."""

    work: Path
    base_env: dict[str, str]
    memcached_env: dict[str, str]
    memcached_port: int
    proxy_port: int
    servers: list[Server]
    delayed: Server


def make_setup(express: bool) -> Setup:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    secret = os.urandom(32).hex()
    memcached_port, proxy_port = free_port(), free_port()
    base_env = {"SESSION_SECRETS": secret, "USERS_FILE": str(users_file(work)), "LOG_FORMAT": "text"}
    base_env.update(UNLIMITED_CLIENT)
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
    return Setup(work, base_env, memcached_env, memcached_port, proxy_port, servers, delayed)


def new_report(args: argparse.Namespace, split: tuple[set[int], set[int]] | None, modes: list[str]) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "modes": modes,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Where the pinned runs put the servers and the load.
            "server_cpus": sorted(split[0]) if split and "pinned" in modes else None,
            "load_cpus": sorted(split[1]) if split and "pinned" in modes else None,
        },
        "settings": {
            "runs": args.runs,
            "target_runs": max(args.runs, args.target_runs),
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "pinning": modes,
            "browsers_per_kind": args.sessions,
            "wrk_threads": 1,
        },
    }


def measure_delayed(delayed: Server, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The counter through the 20 ms proxy at one connection and the highest concurrency.

    Its browsers are prepared here, in each mode: anonymous sessions end after five idle minutes,
    and a mode's other runs take longer than that (browsers whose sessions had ended would each
    make a new session per request, and measure that)."""
    count = min(args.sessions, 200)
    print(f"{delayed.name}: preparing {count} anonymous and {count} logged-in browsers", flush=True)
    prepare_browsers(delayed, count, work)
    results = []
    for concurrency in sorted({1, max(args.concurrency)}):
        runs = [
            wrk(delayed.base_url, "/api", delayed.cookies["anonymous"], concurrency, max(args.duration, 2))
            for _ in range(args.runs)
        ]
        entry = delayed_figure(concurrency, runs)
        results.append(entry)
        print(
            f"  ours-delayed       counter  c={concurrency:<3} {entry['rps']:8.0f} rps  p50 {entry['p50_ms']:6.2f} ms",
            flush=True,
        )
    return results


@dataclass
class Placement:
    """Where the processes go in each mode: the CPUs, and the helpers' process ids."""

    split: tuple[set[int], set[int]] | None
    every_cpu: set[int]
    helpers: list[int]

    def apply(self, mode: str, servers: list[Server]) -> None:
        apply_mode(mode, self.split, self.every_cpu, servers, self.helpers)


def measure_mode(mode: str, setup: Setup, args: argparse.Namespace, placement: Placement) -> dict[str, Any]:
    """Every figure of one mode, and the raw round trip to memcached from this process in it."""
    placement.apply(mode, [*setup.servers, setup.delayed])
    print(f"== {mode}: {MODE_WORDS[mode]}", flush=True)
    # Timed from where the servers run (in pinned runs, their core: memcached is on the other one,
    # so the floor includes the cross-core wake-ups a server's round trip pays).
    load_cpus = os.sched_getaffinity(0)
    if mode == "pinned" and placement.split:
        os.sched_setaffinity(0, placement.split[0])
    try:
        round_trip = raw_round_trip(setup.memcached_port)
    finally:
        os.sched_setaffinity(0, load_cpus)
    print(f"  raw round trip to memcached: {round_trip['median_ms']:.4f} ms (median)", flush=True)
    results = measure(setup.servers, args)
    print(f"ours-delayed: memcached behind a {DELAY_MS} ms delaying proxy", flush=True)
    results += measure_delayed(setup.delayed, args, setup.work)
    return {"results": [{"mode": mode, **r} for r in results], "round_trip": round_trip}


MODE_WORDS = {
    "pinned": "each server on a core of its own; wrk, memcached and this script on the others",
    "unpinned": "servers, wrk, memcached and this script left to the scheduler",
}


def run_servers(setup: Setup, args: argparse.Namespace, report: dict[str, Any], placement: Placement) -> None:
    """Starts memcached, the proxy and the servers; measures every mode; profiles (once)."""
    proxy_command = [sys.executable, str(BENCH / "delay_proxy.py"), str(setup.proxy_port)]
    proxy_command += [str(setup.memcached_port), str(DELAY_MS)]
    work, modes = setup.work, report["modes"]
    with (
        process(memcached_command(setup.memcached_port), work / "memcached.log") as memcached,
        process(proxy_command, work / "proxy.log") as proxy,
    ):
        wait_for_port(setup.memcached_port)
        wait_for_port(setup.proxy_port)
        if proxy.poll() is not None:  # something else answers on its port: no delay in the path
            raise RuntimeError(f"the delaying proxy exited: {(work / 'proxy.log').read_text()[-500:]}")
        placement.helpers = [memcached.pid, proxy.pid]
        everything = [*setup.servers, setup.delayed]
        try:
            for server in everything:
                server.start(work)
            for server in setup.servers:
                print(f"{server.name}: preparing {args.sessions} anonymous and logged-in browsers", flush=True)
                prepare_browsers(server, args.sessions, work)
            measured = {mode: measure_mode(mode, setup, args, placement) for mode in modes}
        finally:
            for server in everything:
                server.stop()
        report["results"] = [r for mode in modes for r in measured[mode]["results"]]
        report["raw_round_trip"] = {mode: measured[mode]["round_trip"] for mode in modes}
        if not args.no_profile:
            placement.apply(modes[0], setup.servers)
            print(f"profiling the page counter on both stores ({modes[0]})", flush=True)
            report["profile"] = {
                "memory": profile(setup.base_env, setup.servers[0], args, work),
                "memcached": profile(setup.memcached_env, setup.servers[1], args, work),
            }


def run_json(script: str) -> Any:
    command = [sys.executable, str(BENCH / script)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def measure_once(setup: Setup, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """What is measured once, not per mode: the memory store at scale, the session layer alone, and
    instructions per request."""
    top = max(args.concurrency)
    if not args.no_memory:
        print("memory store: 1,000,000 sessions", flush=True)
        report["memory_store"] = run_json("memory_sessions.py")
        print(f"  {report['memory_store']}", flush=True)
    print("session layer alone (no HTTP)", flush=True)
    report["session_layer_us"] = run_json("session_layer.py")
    if args.no_instructions:
        return
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("instructions per request: skipped, valgrind is not installed", flush=True)
        return
    # At the targets' concurrency, so the counts hold the same batches as the ratios.
    print(f"instructions per request (callgrind, {top} connections)", flush=True)
    from bench.instructions import measure as count_instructions

    report["instructions_connections"] = top
    report["instructions"] = {
        store: count_instructions(ROOT, store, 10 * top, setup.work, top) for store in ("memory", "memcached")
    }
    print(f"  {report['instructions']}", flush=True)


def conclude(report: dict[str, Any], top: int) -> None:
    """The targets, CPU figures, floor and notes, from the measured figures."""
    results, modes = report["results"], report["modes"]
    report["targets"] = evaluate_modes(results, report.get("memory_store"), top, modes)
    report["cpu"] = [{"mode": mode, **row} for mode in modes for row in cpu_figures(in_mode(results, mode), top)]
    report["floor"] = floor_rows(results, report["raw_round_trip"])
    report["notes"] = explain_modes(report, top)


def print_summary(report: dict[str, Any]) -> None:
    if report["floor"]:
        print("\ndistance to the floor (ours on memcached, 1 connection; floor = memory p50 + round trips x raw):")
    for row in report["floor"]:
        print(
            f"  {row['mode']:9} {row['scenario']:8} p50 {row['p50_ms']:.3f} ms  floor {row['floor_ms']:.3f} ms "
            f"({row['memory_p50_ms']:.3f} + {row['round_trips']} x {row['rtt_ms']:.4f})  "
            f"above {row['above_floor_ms']:+.3f} ms"
        )
    print("\ntargets:")
    for t in report["targets"]:
        print(f"  {target_line(t)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_tools(args):
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every_cpu, split = set(os.sched_getaffinity(0)), split_cpus()
    modes = [m for m in args.pinning if m != "pinned" or split]
    if modes != args.pinning:
        print("bench: fewer than two CPUs: no pinned runs", flush=True)
    if not modes:
        return 2
    setup = make_setup(not args.no_express)
    report = new_report(args, split, modes)
    started = time.monotonic()
    run_servers(setup, args, report, Placement(split, every_cpu, []))
    pin(os.getpid(), every_cpu)
    measure_once(setup, args, report)
    conclude(report, max(args.concurrency))
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    if not args.no_docs:
        write_docs(report, Path(args.docs))
        print(f"\nwrote {args.docs}/BENCHMARKS.md, benchmarks.png and {LATENCY_CHART}")
    print(f"results: {out / 'latest.json'} ({report['seconds']} s)")
    shutil.rmtree(setup.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
