"""The user directory: accounts loaded from a JSON file, and scrypt password hashes.

A users file is a JSON list of ``{"email", "name", "balance", "password_hash"}`` objects.
Hashes look like ``scrypt$<log2 N>$<r>$<p>$<salt>$<key>`` (salt and key base64url, unpadded),
so their cost can be raised later without invalidating stored ones.

Hashing is bounded: a few threads hash, at most ``max_waiting`` checks wait for one (past that,
`HashingBusy` at once), and a check whose caller has given up while waiting is dropped unhashed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("users")

# OWASP's scrypt minimum (N=2^14, r=8, p=5): about 16 MiB and a few hundred ms per hash.
DEFAULT_COST = (14, 8, 5)
MAX_PASSWORD_LENGTH = 1024
DEMO_USERS_FILE = Path(__file__).resolve().parent.parent / "settings" / "demo_users.json"
_KEY_BYTES = 32
_SALT_BYTES = 16
HASHING_THREADS = 2
DEFAULT_MAX_WAITING = 16


class UsersFileError(Exception):
    """The users file cannot be read or has a malformed entry; the message says which."""


class HashingBusy(Exception):
    """Every hashing thread is busy and ``max_waiting`` checks already wait: try again shortly."""


class CheckAbandoned(Exception):
    """The caller no longer wanted the check when a thread was free for it: nothing was hashed."""


def b64url(raw: bytes) -> str:
    """``raw`` as unpadded URL-safe base64, the form every token and hash here is written in."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """The bytes an unpadded URL-safe base64 text (see `b64url`) spells."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * r * n + (1 << 20)
    )


def hash_password(password: str, cost: tuple[int, int, int] = DEFAULT_COST) -> str:
    """A new salted scrypt hash of ``password`` in this module's text format."""
    log_n, r, p = cost
    salt = os.urandom(_SALT_BYTES)
    return f"scrypt${log_n}${r}${p}${b64url(salt)}${b64url(_scrypt(password, salt, log_n, r, p))}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$logN$r$p$salt$key hash")
    log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    # Bounds keep a mistyped file from asking for gigabytes per login.
    if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt cost out of range")
    salt, key = unb64url(parts[4]), unb64url(parts[5])
    if len(salt) < 8 or len(key) != _KEY_BYTES:
        raise ValueError("salt or key of the wrong length")
    return log_n, r, p, salt, key


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time comparison)."""
    log_n, r, p, salt, key = _parse_hash(password_hash)
    return hmac.compare_digest(_scrypt(password, salt, log_n, r, p), key)


@dataclass(frozen=True)
class User:
    """An account as the API shows it. The hash stays in the directory."""

    email: str
    name: str
    balance: float


def _work(cost: tuple[int, int, int]) -> int:
    """What a scrypt cost (log2 N, r, p) asks of a check, up to a constant factor."""
    log_n, r, p = cost
    return (1 << log_n) * r * p


def normalise_email(email: str) -> str:
    """An email as accounts are keyed: trimmed and lower-cased."""
    return email.strip().lower()


class UserDirectory:
    """Looks up users and checks passwords off the IOLoop, at the same cost for unknown emails.

    At most ``max_waiting`` checks wait for a hashing thread; see `authenticate`.
    """

    def __init__(
        self,
        entries: list[dict[str, Any]],
        executor: ThreadPoolExecutor | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
        threads: int = HASHING_THREADS,
    ) -> None:
        self._users: dict[str, tuple[User, str]] = {}
        costs: list[tuple[int, int, int]] = []  # each account's
        for i, entry in enumerate(entries):
            user, password_hash = self._parse_entry(i, entry)
            key = normalise_email(user.email)
            if key in self._users:
                raise UsersFileError(f"entry {i}: email {user.email!r} appears twice")
            self._users[key] = (user, password_hash)
            costs.append(_parse_hash(password_hash)[:3])
        # An unknown email is checked against a hash of the most expensive cost in the file (by
        # work: 2^log_n * r * p), so the answer takes as long as for a known email.
        dearest = max(costs, key=_work, default=DEFAULT_COST)
        self._decoy_hash = hash_password(os.urandom(16).hex(), dearest)
        cheaper = sum(_work(cost) < _work(dearest) for cost in costs)
        if cheaper:
            # Their wrong-password answers come sooner than an unknown email's: timing tells they exist.
            log.warning(
                "users file: %d of %d accounts have a cheaper password hash than the dearest (%s); a login's "
                "timing shows that they exist: hash their passwords again with server.py hash-password",
                cheaper,
                len(self._users),
                "N=2^{} r={} p={}".format(*dearest),
            )
        self._executor = executor or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="password")
        self.max_waiting = max_waiting
        self.threads = threads
        # The executor is only ever given ``threads`` jobs at once: the queue is kept here, on
        # the IOLoop, where a waiting check can be dropped when its client goes.
        self._hashing = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        # Known devices' checks: served before any in ``_waiting``, bounded the same way.
        self._waiting_first: deque[asyncio.Future[None]] = deque()
        # The accounts with a check in (or on its way into) that queue: one each.
        self._accounts_first: set[str] = set()
        # Hashes actually run (each a few hundred ms of a core), and checks dropped unhashed
        # because their caller had gone: what the bounds are judged by.
        self.hashes_run = 0
        self.dropped = 0

    @staticmethod
    def _parse_entry(i: int, entry: Any) -> tuple[User, str]:
        if not isinstance(entry, dict):
            raise UsersFileError(f"entry {i}: expected an object")
        email, name, balance, password_hash = (
            entry.get("email"),
            entry.get("name"),
            entry.get("balance"),
            entry.get("password_hash"),
        )
        if not isinstance(email, str) or "@" not in email:
            raise UsersFileError(f"entry {i}: 'email' must be an email address")
        if not isinstance(name, str):
            raise UsersFileError(f"entry {i}: 'name' must be a string")
        if not isinstance(balance, (int, float)) or isinstance(balance, bool) or not math.isfinite(balance):
            raise UsersFileError(f"entry {i}: 'balance' must be a number")
        if not isinstance(password_hash, str):
            raise UsersFileError(f"entry {i}: 'password_hash' must be a string from 'server.py hash-password'")
        try:
            _parse_hash(password_hash)
        except ValueError as e:
            raise UsersFileError(f"entry {i}: 'password_hash' is invalid ({e})") from None
        return User(email=email, name=name, balance=balance), password_hash

    @classmethod
    def from_file(cls, path: str | Path, max_waiting: int = DEFAULT_MAX_WAITING) -> UserDirectory:
        """Load a users file; raise `UsersFileError` naming the problem."""
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except OSError as e:
            raise UsersFileError(f"cannot read users file {str(path)!r}: {e.strerror}") from None
        except ValueError as e:
            raise UsersFileError(f"users file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(entries, list):
            raise UsersFileError(f"users file {str(path)!r} must hold a JSON list")
        try:
            return cls(entries, max_waiting=max_waiting)
        except UsersFileError as e:
            raise UsersFileError(f"users file {str(path)!r}: {e}") from None

    def get(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None."""
        found = self._users.get(normalise_email(email))
        return found[0] if found else None

    def credential(self, email: str) -> str | None:
        """The stored hash of the user's password (it changes with the password), or None."""
        found = self._users.get(normalise_email(email))
        return found[1] if found else None

    async def authenticate(
        self,
        email: str,
        password: str,
        admit: Callable[[], Awaitable[None]] | None = None,
        *,
        priority: bool = False,
    ) -> User | None:
        """The user if ``password`` is theirs, else None. Runs the hash on a worker thread.

        Raises `HashingBusy` at once when ``max_waiting`` checks of its kind already wait for a
        thread. A ``priority`` check (a known device's) waits in a queue of its own that is served
        first, so a flood of other checks never holds it back; one per account at a time (any more
        for that account wait with the others), so an account's own device cookie cannot fill it.
        ``admit()`` is awaited once a thread is free for this check: whatever it raises
        (`CheckAbandoned` when the client has gone, a refusal) drops the check unhashed and frees
        the thread. Cancelling the task that awaits this while it waits drops it too; once hashing
        has started, the thread finishes it and frees its place.
        """
        account = normalise_email(email)
        found = self._users.get(account)
        password_hash = found[1] if found else self._decoy_hash
        if len(password) > MAX_PASSWORD_LENGTH:
            password = ""
            found = None
        first = priority and account not in self._accounts_first
        if first:
            self._accounts_first.add(account)
        try:
            await self._thread_turn(first)
        finally:
            if first:
                self._accounts_first.discard(account)
        if admit is not None:
            try:
                await admit()
            except BaseException:
                self.dropped += 1
                self._next_turn()
                raise
        loop = asyncio.get_running_loop()
        self.hashes_run += 1
        hashing = loop.run_in_executor(self._executor, verify_password, password, password_hash)
        # The turn ends when the thread is done, not when a cancelled caller stops waiting for it.
        hashing.add_done_callback(self._next_turn)
        matches = await asyncio.shield(hashing)
        return found[0] if found and matches else None

    async def _thread_turn(self, priority: bool = False) -> None:
        """Return once a hashing thread is this caller's; `HashingBusy` if too many of its kind wait."""
        if self._hashing < self.threads and not self._waiting and not self._waiting_first:
            self._hashing += 1
            return
        queue = self._waiting_first if priority else self._waiting
        if len(queue) >= self.max_waiting:
            raise HashingBusy
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Handed a thread in the same moment it was cancelled: pass the thread on.
                self._next_turn()
            else:
                queue.remove(turn)
            self.dropped += 1
            raise

    def _next_turn(self, _: object = None) -> None:
        """A thread is free: give it to the longest-waiting check, or count it as idle."""
        for queue in (self._waiting_first, self._waiting):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._hashing -= 1

    @property
    def waiting(self) -> int:
        """How many checks wait for a hashing thread now."""
        return len(self._waiting) + len(self._waiting_first)

    def close(self) -> None:
        """Stop the hashing threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
