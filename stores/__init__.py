"""Where session records and users live, and the registry of session stores. Nothing here knows
about HTTP or settings.

A store is chosen by name; its module is imported only then, so a store's client library is
loaded only when that store is used. Adding a store: its module, one line in `STORES`, its test
service launcher (tests/services.py) and docs/STORES.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from stores.base import SessionStore, StoreContext
from stores.options import StoreOptionsError

# Store name -> "module:class". The name is what SESSION_STORE picks and how its options'
# environment variables begin (MEMCACHED_SERVERS, REDIS_URL).
STORES: dict[str, str] = {
    "memory": "stores.memory:MemoryStore",
    "memcached": "stores.memcached:MemcachedStore",
    "redis": "stores.redis:RedisStore",
}


def store_class(name: str) -> type[SessionStore]:
    """The class of the store called ``name`` (imports its module); ValueError if there is none."""
    if name not in STORES:
        raise ValueError(f"{name!r} is not one of {', '.join(STORES)}")
    module, _, attribute = STORES[name].partition(":")
    found: type[SessionStore] = getattr(importlib.import_module(module), attribute)
    return found


def check_store_options(name: str, options: Mapping[str, Any]) -> list[str]:
    """Every problem with ``options`` for the store ``name`` (empty: they are fine)."""
    try:
        store_class(name).check_options(options)
    except StoreOptionsError as e:
        return e.problems
    return []


def build_store(name: str, options: Mapping[str, Any], context: StoreContext) -> SessionStore:
    """The store ``name`` built from ``options`` (not started)."""
    return store_class(name).from_options(options, context)
