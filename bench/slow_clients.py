"""How long the server needs to answer again after a slow-client attack (issue 15's figure).

    python bench/slow_clients.py [--connections 300] [--descriptors 256] [--give-up 45]

Starts ``server.py --env=test`` with RLIMIT_NOFILE set to ``--descriptors``, opens
``--connections`` loopback connections that each send a request line and one header but never
finish the headers, and then asks ``GET /livez`` on a new connection at a time (each given a
second to answer) until one is answered or ``--give-up`` seconds have passed. Prints the seconds
from the attack's last connection to the first answer, the server's CPU time over that wait, and
how many bytes its log grew. The attack's connections stay open and silent throughout: the
server has to end them itself.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import wait_for  # noqa: E402
from harness import cpu_seconds, free_port, partial_header_flood  # noqa: E402

LIVEZ = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def livez_answers(port: int, wait: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
            sock.sendall(LIVEZ)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--descriptors", type=int, default=256)
    parser.add_argument("--give-up", type=float, default=45.0)
    args = parser.parse_args()
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="slow-clients-", suffix=".log")[1])
    limit = (args.descriptors, args.descriptors)
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "server.py", "--env=test", f"--port={port}"],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
        )
    attack: list[socket.socket] = []
    try:
        wait_for(f"http://127.0.0.1:{port}/livez")
        log_before = log_path.stat().st_size
        attack = partial_header_flood(port, args.connections)
        started, cpu_before = time.monotonic(), sum(cpu_seconds(server.pid))
        answered = None
        while time.monotonic() - started < args.give_up:
            if livez_answers(port, 1.0):
                answered = time.monotonic() - started
                break
        waited = time.monotonic() - started
        cpu = sum(cpu_seconds(server.pid)) - cpu_before
        log_growth = log_path.stat().st_size - log_before
        outcome = f"answered after {answered:.1f} s" if answered is not None else f"not answered within {waited:.0f} s"
        print(
            f"{args.connections} partial-header connections, RLIMIT_NOFILE {args.descriptors}: /livez {outcome}; "
            f"server CPU {cpu:.2f} s over {waited:.1f} s; log grew {log_growth:,} bytes"
        )
    finally:
        for sock in attack:
            sock.close()
        server.terminate()
        server.wait(20)
        log_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
