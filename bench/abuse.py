"""Figures under abuse: password guesses a client gets, a real login's latency under a flood of
abandoned logins, and the cookieless flood a logged-in user survives.

    .venv/bin/python bench/abuse.py                 # a few minutes; prints the figures as JSON
    .venv/bin/python bench/abuse.py --docs          # and rewrites its section of docs/BENCHMARKS.md
    .venv/bin/python bench/abuse.py --root DIR      # the same against another checkout (before/after)

Everything is loopback. Distinct clients are distinct loopback addresses (127.0.0.0/8), which the
server sees as its ``remote_ip``: the flood comes from 200 addresses, as a botnet's would, so the
login budgets are not what stops it and the hashing bounds are what is measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import ABUSE_SECTION, replace_section  # noqa: E402
from bench.run import LOGIN, free_port, wait_for, wait_for_port  # noqa: E402
from settings.base import DEFAULTS  # noqa: E402
from stores.users import hash_password  # noqa: E402

WRONG = {"email": LOGIN["email"], "password": "wrong"}
SECTION = ABUSE_SECTION
RESULTS = ROOT / "bench" / "results" / "abuse.json"


@contextmanager
def server(root: Path, env: dict[str, str], args: tuple[str, ...] = ("--env=dev",)) -> Iterator[int]:
    """``server.py`` from ``root`` on a free port, stopped afterwards; yields the port."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", *args, f"--port={port}"],
            cwd=root,
            env={**os.environ, "SESSION_SECRETS": os.urandom(32).hex(), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/livez")
            yield port
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def post_login(
    port: int,
    credentials: dict[str, str],
    address: str = "127.0.0.1",
    connection: http.client.HTTPConnection | None = None,
) -> int:
    """One login from ``address`` (on ``connection`` if given, kept open; else a new one); its status."""
    own = connection is None
    if connection is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300, source_address=(address, 0))
    try:
        connection.request(
            "POST",
            "/api/login",
            body=json.dumps(credentials),
            headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        if own:
            connection.close()


def address(i: int) -> str:
    """The i-th client address after 127.0.0.1 (127.0.1.1 and up, 250 to a byte)."""
    return f"127.{i // 62_500}.{1 + i // 250 % 250}.{1 + i % 250}"


def guesses(port: int, kind: str, seconds: float, connections: int) -> dict[str, float]:
    """Guess as fast as ``connections`` clients can for ``seconds``; how many were checked (401)."""
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    def attempt_loop() -> list[int]:
        codes = []
        # One address: one kept-alive connection, as a guessing script would (and no thousands of
        # closed sockets, which would run this address out of ports).
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while time.monotonic() < deadline:
            n = next(counter)
            if kind == "account":  # one account, a new address each time
                codes.append(post_login(port, WRONG, address(n)))
            elif kind == "address":  # one address, a new account each time
                credentials = {"email": f"user{n}@example.com", "password": "x"}
                codes.append(post_login(port, credentials, connection=connection))
            else:  # one account from one address
                codes.append(post_login(port, WRONG, connection=connection))
        connection.close()
        return codes

    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        codes = [c for result in pool.map(lambda _: attempt_loop(), range(connections)) for c in result]
    checked = codes.count(401)
    return {
        "attempts": len(codes),
        "checked": checked,
        "refused_429": codes.count(429),
        "checked_per_s": round(checked / seconds, 2),
    }


def abandoned_flood(port: int, size: int) -> None:
    """``size`` whole login requests, each from its own address, written and closed at once."""
    body = json.dumps({"email": "someone@example.com", "password": "guess"}).encode()
    request = (
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, port, len(body), body)
    )
    for i in range(size):
        with socket.create_connection(("127.0.0.1", port), source_address=(address(i), 0)) as sock:
            sock.sendall(request)


def flood_latency(port: int, size: int, rounds: int, settle: float) -> dict[str, Any]:
    """A real login's seconds while ``size`` abandoned logins arrive, over ``rounds`` rounds."""
    latencies = []
    for _ in range(rounds):
        abandoned_flood(port, size)
        started = time.perf_counter()
        status = post_login(port, LOGIN)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"the real login got {status}")
        time.sleep(settle)  # let what the flood started finish before the next round
    return {
        "flood": size,
        "rounds": rounds,
        "p50_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
        "all_s": [round(x, 3) for x in latencies],
    }


def cookieless_flood(port: int, seconds: int) -> int:
    """wrk's cookieless ``GET /api`` for ``seconds`` at 20 connections; how many were answered 200."""
    out = subprocess.run(
        ["wrk", "-t1", "-c20", f"-d{seconds}s", f"http://127.0.0.1:{port}/api"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(out.split(" requests in ")[0].split()[-1])
    errors = sum(int(n) for n in _non_2xx(out))
    return requests - errors


def _non_2xx(out: str) -> list[str]:
    return [line.split(":")[1].strip() for line in out.splitlines() if "Non-2xx" in line]


@contextmanager
def small_memcached() -> Iterator[int]:
    """memcached with 8 MB (as the issue's flood had it) on a free port; yields the port."""
    port = free_port()
    command = [shutil.which("memcached") or "memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "8"]
    process = subprocess.Popen([*command, "-t", "1", *(["-u", "root"] if os.geteuid() == 0 else [])])
    try:
        wait_for_port(port)
        yield port
    finally:
        process.kill()
        process.wait()


def user_survives(port: int, seconds: int) -> dict[str, Any]:
    """Log in, flood with cookieless requests, and ask whether the user is still logged in."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        "POST",
        "/api/login",
        body=json.dumps(LOGIN),
        headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"},
    )
    response = connection.getresponse()
    response.read()
    cookie = "; ".join(c.split(";")[0] for c in response.headers.get_all("Set-Cookie") or [])
    hits = cookieless_flood(port, seconds)
    connection.request("GET", "/api/login", headers={"Cookie": cookie})
    answer = connection.getresponse()
    still = json.loads(answer.read())["loggedIn"]
    connection.close()
    return {"cookieless_hits": hits, "still_logged_in": still}


def memcached_stats(port: int, command: bytes) -> dict[str, int]:
    """One ``stats`` answer of memcached as numbers (``STAT name value`` lines)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
    stats = {}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            stats[parts[1]] = int(parts[2])
    return stats


def slab_bytes(port: int) -> int:
    """Bytes of slab chunks in use: what memcached's -m is spent on, item by item."""
    stats = memcached_stats(port, b"stats slabs")
    classes = {name.split(":")[0] for name in stats if ":" in name}
    return sum(stats[f"{c}:chunk_size"] * stats[f"{c}:used_chunks"] for c in classes)


def sizing(root: Path, sessions: int) -> dict[str, Any]:
    """memcached bytes per anonymous session, per logged-in session and per login counter."""
    memcached = shutil.which("memcached") or "/usr/bin/memcached"
    mport = free_port()
    command = [memcached, "-l", "127.0.0.1", "-p", str(mport), "-U", "0", "-m", "64", "-t", "1"]
    process = subprocess.Popen([*command, *(["-u", "root"] if os.geteuid() == 0 else [])])
    try:
        with tempfile.TemporaryDirectory(prefix="abuse-") as work:
            # A cheap hash: a thousand logins are the point here, not their cost.
            users = Path(work) / "users.json"
            password_hash = hash_password(LOGIN["password"], cost=(10, 8, 1))
            users.write_text(json.dumps([{**LOGIN, "name": "M", "balance": 1, "password_hash": password_hash}]))
            wait_for_port(mport)
            env = {
                "SESSION_STORE": "memcached",
                "MEMCACHED_SERVERS": f"127.0.0.1:{mport}",
                "USERS_FILE": str(users),
                "NEW_SESSIONS_PER_ADDRESS": "100000000",
                **UNLIMITED,
            }
            with server(root, env) as port:
                start = slab_bytes(mport)
                for _ in range(sessions):  # the page counter's record: {"page_views": 1}
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    connection.request("GET", "/api")
                    connection.getresponse().read()
                    connection.close()
                anonymous = slab_bytes(mport)
                # Wrong passwords, each from its own address: a new address and pair counter each.
                for i in range(sessions):
                    post_login(port, WRONG, address(i))
                counted = slab_bytes(mport)
                # The same addresses again, right: only the logged-in session is new.
                for i in range(sessions):
                    if post_login(port, LOGIN, address(i)) != 200:
                        raise RuntimeError("a login failed while sizing")
                logged_in = slab_bytes(mport)
    finally:
        process.kill()
        process.wait()
    return {
        "sessions": sessions,
        "anonymous_bytes": round((anonymous - start) / sessions),
        "counter_bytes": round((counted - anonymous) / (2 * sessions)),
        "logged_in_bytes": round((logged_in - counted) / sessions),
    }


UNLIMITED = {"LOGIN_PAIR_BUDGET": "1000000", "LOGIN_ADDRESS_BUDGET": "1000000", "LOGIN_ACCOUNT_BUDGET": "1000000"}


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"guesses": {}, "anonymous": {}}
    if "guesses" in args.parts:
        result["guess_seconds"] = args.guess_seconds
    if "anonymous" in args.parts:
        result["flood_seconds"] = args.flood_seconds
    parts = set(args.parts.split(","))
    for label, env in (("unlimited", UNLIMITED), ("defaults", {})) if "guesses" in parts else ():
        for kind in ("pair", "address", "account"):
            with server(root, env) as port:
                result["guesses"][f"{kind}, {label}"] = guesses(port, kind, args.guess_seconds, args.connections)
                print(f"guesses {kind:8} {label:9} {result['guesses'][f'{kind}, {label}']}", flush=True)
    if "flood" in parts:
        with server(root, {}) as port:
            result["flood"] = flood_latency(port, args.flood, args.rounds, args.settle)
            print(f"flood {result['flood']}", flush=True)
    if "sizing" in parts:
        result["sizing"] = sizing(root, args.sizing_sessions)
        print(f"sizing {result['sizing']}", flush=True)
    if "anonymous" in parts and shutil.which("wrk"):
        # The test environment's store holds 1,000 sessions: the flood is many times that.
        for label, env in (("budget lifted", {"NEW_SESSIONS_PER_ADDRESS": "100000000"}), ("defaults", {})):
            with server(root, env, ("--env=test",)) as port:
                result["anonymous"][f"memory, {label}"] = user_survives(port, args.flood_seconds)
        if shutil.which("memcached"):
            # memcached knows nothing of privilege: without the budget, its LRU is all there is.
            for label, extra in (("budget lifted", {"NEW_SESSIONS_PER_ADDRESS": "100000000"}), ("defaults", {})):
                with small_memcached() as mport:
                    env = {"SESSION_STORE": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{mport}", **extra}
                    with server(root, env) as port:
                        survived = user_survives(port, args.flood_seconds)
                    stats = memcached_stats(mport, b"stats")
                    survived |= {"stored": stats["total_items"], "evicted": stats["evictions"]}
                    result["anonymous"][f"memcached -m 8, {label}"] = survived
        print(f"anonymous {result['anonymous']}", flush=True)
    return result


def _before(result: dict[str, Any]) -> str:
    before = result.get("flood_before")
    if not before:
        return ""
    return (
        f" The code before the hashing bounds (a checkout of it measured with `--root`), the same flood: "
        f"{before['p50_s']} s ({before['rounds']} round): every abandoned login was hashed first."
    )


def markdown(result: dict[str, Any], when: str) -> str:
    lines = [
        SECTION,
        "",
        f"Written by `bench/abuse.py` on {when}, on loopback; each client is its own loopback address. "
        "The server runs `--env=dev` (scrypt N=2^14, r=8, p=5; two hashing threads) except where a "
        "store bound of 1,000 sessions is wanted (`--env=test`).",
        "",
        "Password guesses a client gets (wrong passwords as fast as the clients can send them), with the",
        "budgets lifted (as before they existed) and at their defaults:",
        "",
        "| who guesses | budgets | attempts | checked (401) | 429 | checked per s |",
        "|---|---|---|---|---|---|",
    ]
    who = {
        "pair": "one address, one account",
        "address": "one address, a new account each time",
        "account": "a new address each time, one account",
    }
    for key, g in result.get("guesses", {}).items():
        kind, label = key.split(", ")
        lines.append(
            f"| {who[kind]} | {label} | {g['attempts']} | {g['checked']} | {g['refused_429']} | {g['checked_per_s']} |"
        )
    d = DEFAULTS
    lines += [
        "",
        f"Each run lasts {result.get('guess_seconds', 60):g} s, within the budgets' first window. Sustained, the "
        f"defaults allow {d.login_pair_budget} checks per {d.login_pair_window // 60} minutes per (account, "
        f"address) pair ({d.login_pair_budget / d.login_pair_window:.3f}/s), {d.login_address_budget} per "
        f"{d.login_address_window // 60} minutes per address ({d.login_address_budget / d.login_address_window:.2f}/s) "
        f"and {d.login_account_budget} per {d.login_account_window // 60} minutes per account across addresses "
        f"({d.login_account_budget / d.login_account_window:.3f}/s). A refused attempt costs no hash.",
    ]
    flood = result.get("flood")
    lines += (
        []
        if flood is None
        else [
            "",
            f"A real login while {flood['flood']} abandoned logins (written and closed at once, from "
            f"{flood['flood']} addresses) arrive: p50 **{flood['p50_s']} s**, slowest {flood['max_s']} s over "
            f"{flood['rounds']} rounds ({', '.join(str(x) for x in flood['all_s'])})." + _before(result),
            "",
        ]
    )
    size = result.get("sizing")
    if size:
        lines += [
            f"memcached memory per item (slab chunk bytes in use, {size['sessions']} of each, `-m` is spent in "
            f"these): an anonymous session (the page counter's) {size['anonymous_bytes']} B, a logged-in "
            f"session {size['logged_in_bytes']} B, a login counter {size['counter_bytes']} B.",
            "",
        ]
    if result.get("anonymous"):
        lines += [
            f"Cookieless `GET /api` from one address for {result.get('flood_seconds', 20)} s (wrk, 20 connections) "
            "after a user logged in; the memory store runs `--env=test`, whose bound is 1,000 sessions. "
            "memcached has no notion of privilege: without the new-session budget a user stays only as long "
            "as its LRU happens to keep them.",
            "",
        ]
        lines += [
            "| store | budgets | cookieless requests answered | user still logged in | memcached items |",
            "|---|---|---|---|---|",
        ]
        for key, a in result["anonymous"].items():
            store, label = key.split(", ")
            stored = f"{a['stored']} stored, {a['evicted']} evicted" if "stored" in a else ""
            lines.append(f"| {store} | {label} | {a['cookieless_hits']} | {a['still_logged_in']} | {stored} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Figures under abuse (login budgets, hashing bounds).")
    parser.add_argument("--root", default=str(ROOT), help="checkout whose server.py is measured")
    parser.add_argument("--flood", type=int, default=200, help="abandoned logins per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the flood")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between flood rounds")
    parser.add_argument("--guess-seconds", type=float, default=10.0, help="seconds of guessing per figure")
    parser.add_argument("--connections", type=int, default=4, help="guessing clients at once")
    parser.add_argument("--flood-seconds", type=int, default=20, help="seconds of cookieless flood")
    parser.add_argument("--parts", default="guesses,flood,anonymous,sizing", help="which figures (comma-separated)")
    parser.add_argument("--sizing-sessions", type=int, default=1000, help="sessions of each kind for the sizing")
    parser.add_argument("--docs", action="store_true", help="rewrite the section of docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = measure(Path(args.root), args)
    if Path(args.root).resolve() != ROOT:
        # Another checkout: the code before a change, kept beside this checkout's figures.
        result = {f"{k}_before": v for k, v in result.items()}
    print(json.dumps(result, indent=2))
    if args.docs:
        # The figures of earlier runs stand where this one measured nothing (--parts).
        RESULTS.parent.mkdir(exist_ok=True)
        kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        merged = {**kept, **{k: v for k, v in result.items() if v}}
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
        path = ROOT / "docs" / "BENCHMARKS.md"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(replace_section(path.read_text(), SECTION, markdown(merged, when)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
