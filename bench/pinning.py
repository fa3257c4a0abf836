"""Where the benchmark's processes run: pinned (each server on a core of its own, the load on the
others) or unpinned (everything left to the scheduler)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class Pinnable(Protocol):
    cpus: set[int] | None

    @property
    def pid(self) -> int | None: ...


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


def apply_mode(
    mode: str,
    split: tuple[set[int], set[int]] | None,
    every_cpu: set[int],
    servers: Iterable[Pinnable],
    helpers: Iterable[int],
) -> None:
    """Put this process, its ``helpers`` (memcached, the delaying proxy) and the running ``servers``
    where ``mode`` wants them. wrk, started from this process, inherits its CPUs; a server started
    later is pinned to its ``cpus`` (None: left alone)."""
    if mode == "pinned":
        if split is None:
            raise ValueError("pinned runs need at least two CPUs")
        server_cpus, load_cpus = split
    elif mode == "unpinned":
        server_cpus = load_cpus = every_cpu
    else:
        raise ValueError(f"unknown pinning mode {mode!r}")
    pin(os.getpid(), load_cpus)
    for pid in helpers:
        pin(pid, load_cpus)
    for server in servers:
        server.cpus = server_cpus if mode == "pinned" else None
        if server.pid is not None:
            pin(server.pid, server_cpus)
