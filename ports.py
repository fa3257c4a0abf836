"""Free loopback ports for the processes tests and benchmarks start, one record for both."""

from __future__ import annotations

import socket

# Every port handed out in this process: one handed out earlier may not be bound yet, so it is
# never handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before: those may not be bound yet."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
