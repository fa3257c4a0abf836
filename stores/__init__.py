"""Where session records and users live. Nothing here knows about HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable

from settings import Settings
from stores.base import SessionStore
from stores.memory import MemoryStore


def build_store(settings: Settings, clock: Callable[[], float] = time.time) -> SessionStore:
    """The session store ``settings`` ask for."""
    if settings.store == "memory":
        return MemoryStore(
            settings.memory_max_sessions,
            clock=clock,
            sweep_interval=settings.memory_sweep_interval,
            sweep_batch=settings.memory_sweep_batch,
        )
    raise ValueError(f"unknown store {settings.store!r}")
