"""A store's options: read from a mapping (a settings module's values or environment strings),
checked, and every problem named at once.

Each store declares its options and reads them here, so settings know no store's options and
the rules shared by stores (a host:port list, a key prefix) live in one place.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

# A key is this prefix and 64 hex digits: printable ASCII, no spaces, within memcached's 250
# bytes (the memcached store sends its keys unchecked, so the prefix is checked here).
KEY_PREFIX = re.compile(r"[!-~]{0,100}")


class StoreOptionsError(ValueError):
    """Options a store refuses; ``problems`` names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# A host name or IPv4 address, or an IPv6 address in brackets.
HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host, port); ValueError if it is not one."""
    host, _, port = text.strip().rpartition(":")
    if not HOST.fullmatch(host) or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ValueError("not host:port")
    return host.strip("[]"), int(port)


def env_name(store: str, option: str) -> str:
    """The environment variable that sets ``option`` of ``store``: ``REDIS_URL`` for redis's url."""
    return f"{store}_{option}".upper()


class Options:
    """The options of ``store`` in ``raw``; reading one checks it, `done` refuses what was wrong.

    Values come as their types (from a settings module) or as text (from the environment), so each
    reader accepts both. An option the store does not know is a problem, not silently ignored.
    """

    def __init__(self, store: str, raw: Mapping[str, Any], known: tuple[str, ...]) -> None:
        self.store = store
        self.raw = raw
        self.problems: list[str] = [
            f"{self.label(name)}: {store} has no such option (it has {', '.join(known)})"
            for name in raw
            if name not in known
        ]

    def label(self, name: str) -> str:
        return f"{self.store} option {name} ({env_name(self.store, name)})"

    def _problem(self, name: str, message: str) -> None:
        self.problems.append(f"{self.label(name)}: {message}")

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw.get(name, default)
        if value is None or value == "":
            return default
        if not isinstance(value, str):
            self._problem(name, f"expected text, got {type(value).__name__}")  # not the value: it may be a secret
            return default
        return value

    def number(self, name: str, default: float, *, whole: bool = False, zero: bool = False) -> float:
        """A positive number (a whole one if ``whole``; 0 too if ``zero``)."""
        value = self.raw.get(name, default)
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero) or (whole and number != int(number)):
            kind = "positive" if not zero else "non-negative"
            self._problem(name, f"expected a {kind} {'whole ' if whole else ''}number, got {value!r}")
            return default
        return int(number) if whole else number

    def addresses(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of host:port, comma-separated in text."""
        value = self.raw.get(name, default)
        items = tuple(item.strip() for item in value.split(",")) if isinstance(value, str) else tuple(value)
        items = tuple(item for item in items if item)
        for number, item in enumerate(items, 1):
            try:
                parse_address(item)
            except ValueError as e:  # not repeated: a mistyped entry may hold a password
                self._problem(name, f"entry {number} of {len(items)}: {e}")
        return items

    def key_prefix(self, name: str, default: str) -> str:
        prefix = self.text(name, default)
        if prefix is None or not KEY_PREFIX.fullmatch(prefix):
            self._problem(name, "a key prefix is up to 100 printable ASCII characters, no spaces")
            return default
        return prefix

    def file(self, name: str) -> str | None:
        path = self.text(name)
        if path and not os.path.isfile(path):
            self._problem(name, f"{path!r} is not a readable file")
        return path

    def busy_poll(self) -> float:
        """The ``busy_poll`` option (`stores.busy_poll`): microseconds, 200 unless set, 0 for off,
        at most 1,000 (a round trip longer than a millisecond is not worth a core)."""
        micros = self.number("busy_poll", 200, zero=True)
        self.require(micros <= 1_000, "busy_poll", f"at most 1000 microseconds, got {micros:g}")
        return micros

    def require(self, condition: bool, name: str, message: str) -> None:
        if not condition:
            self._problem(name, message)

    def done(self) -> None:
        """Raise `StoreOptionsError` naming every problem found, if any."""
        if self.problems:
            raise StoreOptionsError(self.problems)
