"""Where session records and users live. Nothing here knows about HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable

from settings import Settings
from stores.base import SessionStore
from stores.memcached import MemcachedStore, tls_context
from stores.memory import MemoryStore
from stores.sealing import record_keys


def build_store(settings: Settings, clock: Callable[[], float] = time.time) -> SessionStore:
    """The session store ``settings`` ask for."""
    if settings.store == "memory":
        return MemoryStore(
            settings.memory_max_sessions,
            clock=clock,
            sweep_interval=settings.memory_sweep_interval,
            sweep_batch=settings.memory_sweep_batch,
            max_record_size=settings.session_max_size,
        )
    if settings.store == "memcached":
        tls = None
        if settings.memcached_tls_ca:
            tls = tls_context(settings.memcached_tls_ca, settings.memcached_tls_cert, settings.memcached_tls_key)
        return MemcachedStore(
            settings.memcached_servers,
            record_keys=record_keys(settings.session_secrets),
            prefix=settings.memcached_prefix,
            connect_timeout=settings.memcached_connect_timeout,
            timeout=settings.memcached_timeout,
            threads=settings.memcached_threads,
            max_record_size=settings.session_max_size,
            dead_after=settings.memcached_dead_after,
            probe_interval=settings.memcached_probe_interval,
            tls=tls,
        )
    raise ValueError(f"unknown store {settings.store!r}")
