"""What the tests and the benchmarks both do to server processes on this machine: hand out free
loopback ports, read a process's CPU time, and hold connections open with unfinished requests.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from pathlib import Path

# Every port handed out in this process: one handed out earlier may not be bound yet, so it is
# never handed out twice.
_HANDED_OUT: set[int] = set()
PARTIAL_HEADERS = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# Enough for the kernel's retries of a connection first refused for a full queue (1 s, then 3 s).
ESTABLISH_WITHIN = 5.0


def free_port() -> int:
    """A free loopback port, never one handed out before: those may not be bound yet."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The CPU time (user and system) a process has used so far: its main thread's, and its other
    threads' together. For our server the main thread is the IOLoop; the others are the store's
    workers. Counted in clock ticks (10 ms), so only a run's whole is meaningful, not a request."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # The fields after the command name, which may itself hold spaces and parentheses.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if task.name == str(pid):
            main += used
        else:
            others += used
    return main, others


def partial_header_flood(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to ``port`` that send a request line and one header, and no more.

    Non-blocking: a connection the server has not accepted is still established (the kernel
    queues it) and holds its place while the server is busy or out of descriptors. Returns once
    every one is established (a connect refused for a full queue is retried by the kernel), or
    after ``ESTABLISH_WITHIN`` seconds with those that are.
    """
    flood = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        flood.append(sock)
    waiting, deadline = list(flood), time.monotonic() + ESTABLISH_WITHIN
    while waiting and time.monotonic() < deadline:
        _, established, _ = select.select([], waiting, [], deadline - time.monotonic())
        for sock in established:
            waiting.remove(sock)
            with contextlib.suppress(OSError):
                sock.send(PARTIAL_HEADERS)
    return flood
