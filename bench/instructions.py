"""Instructions per request, counted by valgrind's callgrind: an A/B measure that noise cannot move.

    .venv/bin/python bench/instructions.py                       # this checkout, memory store
    .venv/bin/python bench/instructions.py --store memcached --root ../other-checkout

Requests per second on a shared machine wander by tens of percent between runs; instructions
executed do not (repeat runs agree to about 1%). This starts ``server.py`` under callgrind (slow:
a minute or two), sends each route ``--requests`` times over kept-alive connections after a
warm-up, and prints the instructions the whole process (every thread) executed per request. With
one connection (the default) memcached batches hold one request each; with ``--connections 50``
every connection sends, then every answer is read, so the server finds 50 requests waiting, as
under wrk, and batches them. What lands in one loop iteration varies with timing, so these
counts vary from run to run: about 2% on the memory store, up to 5% on memcached, whose batches
under valgrind are not always whole (memcached balance 860-912k in six runs), against 1% at one
connection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.run import LOGIN, UNLIMITED_CLIENT, free_port, wait_for  # noqa: E402
from stores.users import hash_password  # noqa: E402

ROUTES = {"ceiling": ("/livez", False), "counter": ("/api", False), "balance": ("/api/balance", True)}


def instructions(pid: int) -> int:
    """Instructions the callgrind-run process has executed so far, all threads together."""
    shown = subprocess.run(["callgrind_control", "-e", "Ir", str(pid)], capture_output=True, text=True).stdout
    return sum(int(count.replace(",", "")) for count in re.findall(r"Th\s+\d+\s+([\d,]+)", shown))


def measure(root: Path, store: str, requests: int, work: Path, connections: int = 1) -> dict[str, float]:
    users = work / "users.json"
    # A cheap hash: logging in is not what this measures, and it runs under valgrind.
    password_hash = hash_password(LOGIN["password"], cost=(10, 8, 1))
    users.write_text(json.dumps([{"email": LOGIN["email"], "name": "M", "balance": 1, "password_hash": password_hash}]))
    env = {
        **os.environ,
        "SESSION_SECRETS": os.urandom(32).hex(),
        "USERS_FILE": str(users),
        "LOG_FORMAT": "text",
        **UNLIMITED_CLIENT,
    }
    memcached = None
    if store == "memcached":
        memcached_port = free_port()
        command = ["memcached", "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0", "-m", "64", "-t", "1"]
        memcached = subprocess.Popen([*command, *(["-u", "root"] if os.geteuid() == 0 else [])])
        env |= {"SESSION_STORE": "memcached", "MEMCACHED_SERVERS": f"127.0.0.1:{memcached_port}"}
    port = free_port()
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.%p"]
    server = subprocess.Popen(
        [*callgrind, sys.executable, "server.py", "--env=dev", f"--port={port}"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    figures: dict[str, float] = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/livez", timeout=300)
        pool = [http.client.HTTPConnection("127.0.0.1", port, timeout=300) for _ in range(connections)]
        connection = pool[0]

        def send(method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None) -> list[str]:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            response.read()
            return [c.split(";")[0] for c in response.headers.get_all("Set-Cookie") or []]

        def rounds(path: str, browsers: list[str], count: int) -> None:
            # Every connection sends, then every answer is read: the server finds them all
            # waiting, as under wrk's connections, so a memcached batch holds one of each.
            for _ in range(count):
                for each, cookie in zip(pool, browsers, strict=True):
                    each.request("GET", path, headers={"Cookie": cookie})
                for each in pool:
                    answer = each.getresponse()
                    answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{path}: {answer.status}")

        login = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}
        # A browser per connection, as wrk's rotating cookies: sessions of their own, so the
        # connections never share a batched load or race one another's writes.
        cookies = {
            False: ["; ".join(send("GET", "/api")) for _ in pool],
            True: ["; ".join(send("POST", "/api/login", json.dumps(LOGIN), login)) for _ in pool],
        }
        for name, (path, logged_in) in ROUTES.items():
            rounds(path, cookies[logged_in], max(1, 200 // connections))
            measured = max(1, requests // connections)
            before = instructions(server.pid)
            rounds(path, cookies[logged_in], measured)
            figures[name] = round((instructions(server.pid) - before) / (measured * connections) / 1000, 1)
    finally:
        server.terminate()
        server.wait(120)
        if memcached is not None:
            memcached.kill()
            memcached.wait()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(BENCH.parent), help="the checkout whose server.py to measure")
    parser.add_argument("--store", choices=("memory", "memcached"), default="memory")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per route")
    parser.add_argument(
        "--connections", type=int, default=1, help="connections sending at once (50: batches as under wrk -c50)"
    )
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="instructions-") as work:
        figures = measure(Path(args.root), args.store, args.requests, Path(work), args.connections)
    ceiling = figures["ceiling"]
    for name, thousands in figures.items():
        share = f"  ceiling/route {ceiling / thousands:.3f}" if name != "ceiling" else ""
        print(f"{args.store:9} c={args.connections:<3} {name:8} {thousands:8.1f} k instructions per request{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
