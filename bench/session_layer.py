"""The session layer alone, outside HTTP: what each step of a page-counter hit costs, in µs.

    .venv/bin/python bench/session_layer.py

Runs the session manager on the memory store in a tight loop (warm caches, no HTTP, no
contention), so the figures are a floor: inside a loaded server the same work takes longer.
bench/run.py includes them in its report next to the HTTP figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.cookies import parse_cookie_header
from handlers.session_manager import SessionManager
from settings import load_settings
from stores.base import dump_record, parse_record
from stores.memory import MemoryStore


async def _per_call_us(step: Callable[[], Awaitable[Any] | Any], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        result = step()
        if isinstance(result, Awaitable):
            await result
    return round((time.perf_counter() - start) / count * 1e6, 2)


async def measure(count: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each step, on one session of the reference app's shape."""
    config = load_settings("dev", environ={"SESSION_SECRETS": secrets.token_hex(32)})
    manager = SessionManager(config, MemoryStore(1_000), time.time)
    session = await manager.load(None)
    session["user"] = "max@gmail.com"
    session.increment("page_views")
    change = await manager.save(session)
    assert change is not None and change.value is not None
    header = f"{config.cookie_name}={change.value}; {config.xsrf_cookie_name}={'x' * 60}"
    cookie = change.value
    text = dump_record({"data": {"page_views": 12, "user": "max@gmail.com"}, "created_at": 1.8e9, "last_seen": 1.8e9})
    record = parse_record(text)
    assert record is not None

    async def hit() -> None:
        loaded = await manager.load(cookie)
        loaded.increment("page_views")
        await manager.save(loaded)

    return {
        # A new string each time, as each request brings: the header is parsed once, then remembered.
        "parse_cookie_header": await _per_call_us(lambda: parse_cookie_header(header[:-1] + header[-1]), count),
        "verify_cookie": await _per_call_us(lambda: manager.verify(cookie), count),
        "load_session": await _per_call_us(lambda: manager.load(cookie), count),
        "load_increment_save": await _per_call_us(hit, count),
        "decode_record_json": await _per_call_us(lambda: parse_record(text), count),
        "encode_record_json": await _per_call_us(lambda: dump_record(record), count),
    }


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(json.dumps(asyncio.run(measure()), indent=2))
