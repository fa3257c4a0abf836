"""Sessions as handlers see them, and the cookie rules that bind a browser to one.

`Session` is the per-request view of a session: reads come from the record loaded at the start,
writes are recorded as operations. `SessionManager` owns everything about the cookie (signing
with rotation, strict verification, attributes), the timeouts, and loading and saving through
whichever store it was given.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tornado.web import create_signed_value, decode_signed_value, get_signature_key_version

from handlers.throttle import client_block
from settings import Settings, key_version
from stores.base import (
    Loaded,
    Operation,
    Record,
    SessionStore,
    StoreUnavailable,
    applied,
    apply_operations,
    is_privileged,
    json_value,
    new_record,
)

log = logging.getLogger("sessions")

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_ID_BYTES = 32  # 256 bits
# How many verified cookie values and XSRF tokens are remembered (a few MiB at most).
VERIFIED_CACHE_SIZE = 20_000
# New ids drawn for one session before a store that finds each one taken is called unavailable.
CREATE_ATTEMPTS = 3


class Remembered(dict[str, Any]):
    """A dict that forgets its oldest entries beyond ``limit`` (insertion order)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, value: Any) -> None:
        if len(self) >= self.limit:
            # Drop the oldest tenth at once, so eviction is rare and cheap.
            for old in list(itertools.islice(iter(self), self.limit // 10 or 1)):
                del self[old]
        self[key] = value


def _signed_at(cookie: str) -> float:
    """The signing time inside a Tornado v2 signed value (already verified by the caller)."""
    return float(cookie.split("|", 3)[2].split(":", 1)[1])


def new_session_id() -> str:
    """A fresh 256-bit URL-safe session id."""
    return secrets.token_urlsafe(_ID_BYTES)


class Session:
    """One browser session for the length of a request.

    Reading: ``session["k"]``, ``session.get("k")``, ``"k" in session``.
    Writing: ``session["k"] = v``, ``del session["k"]``, ``session.increment("k")``; each is
    recorded as an operation and applied to the newest stored record when the request saves,
    so concurrent requests do not overwrite each other.
    ``regenerate()`` moves the data to a new id; ``destroy()`` ends the session.

    ``privileged``: the session has been regenerated (a login), here or in an earlier request.
    That is all "logged in" means at this layer; it knows nothing of users. A privileged session
    keeps the full idle timeout and is never evicted for an anonymous one.
    """

    __slots__ = (
        "_data",
        "created_at",
        "id",
        "loaded",
        "operations",
        "privileged",
        "regenerated",
        "resign",
        "retired_ids",
        "stale_cookie",
        "stored_id",
        "touch_due",
    )

    def __init__(
        self,
        session_id: str | None,
        loaded: Loaded | None,
        *,
        resign: bool = False,
        touch_due: bool = False,
        stale_cookie: bool = False,
    ) -> None:
        record = loaded.record if loaded is not None else None
        # The id the browser will hold after this response; None until one is needed.
        self.id = session_id
        # The id whose record is in the store, or None for a session not stored yet.
        self.stored_id = session_id if record is not None else None
        self.created_at: float | None = record["created_at"] if record else None
        # Shared with the loaded record, not copied: writes replace this dict, never change it.
        self._data: dict[str, Any] = record["data"] if record else {}
        # The record as loaded, with the store's version token, for a cheaper update.
        self.loaded = loaded
        self.operations: list[Operation] = []
        self.retired_ids: list[str] = []
        self.resign = resign
        self.touch_due = touch_due
        # The request carried a session cookie that was not adopted: clear it unless replaced.
        self.stale_cookie = stale_cookie
        # regenerate() was called (a login): logged as such even when no session existed before.
        self.regenerated = False
        self.privileged = record is not None and is_privileged(record)

    # Reading -------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def modified(self) -> bool:
        """True if saving would write, delete or create anything."""
        return bool(self.operations or self.retired_ids)

    @property
    def unsaved(self) -> bool:
        """True if saving has anything to do: a write, a touch, or a cookie to re-sign or clear."""
        return self.modified or self.touch_due or self.resign or self.stale_cookie

    # Writing -------------------------------------------------------------------------------

    def _record(self, op: Operation) -> None:
        self.operations.append(op)
        self._data = applied(self._data, (op,))

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError("session keys are strings")
        # A copy as plain JSON: later changes to the caller's object do not leak in, and data
        # JSON cannot hold is refused here (413 from a handler), not altered on the way out.
        self._record(Operation("set", key, json_value(value)))

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._record(Operation("delete", key))

    def increment(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to an integer (missing counts as 0); return this request's view of it.

        Concurrent increments on one session all count; the stored total can be higher than the
        value returned here until the session is saved.
        """
        if type(amount) is not int:
            raise TypeError("session increments are integers")
        self._record(Operation("incr", key, amount))
        value: int = self._data[key]
        return value

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the old id stops working on save.

        Call it whenever privilege changes (login), so an id an attacker planted or saw before
        is worthless afterwards.
        """
        if self.stored_id is not None:
            self.retired_ids.append(self.stored_id)
        # The kept data becomes the new record's starting point.
        self.operations = [Operation("set", k, v) for k, v in self._data.items()]
        self.stored_id = None
        self.created_at = None
        self.id = new_session_id()
        self.regenerated = True
        self.privileged = True

    def destroy(self) -> None:
        """End the session: its record is deleted and the browser's cookie cleared on save.

        Anything written afterwards starts a new anonymous session.
        """
        if self.stored_id is not None:
            self.retired_ids.append(self.stored_id)
        self.stale_cookie = self.stale_cookie or self.id is not None
        self.stored_id = None
        self.created_at = None
        self.id = None
        self._data = {}
        self.operations = []
        self.privileged = False

    def discard(self) -> None:
        """Drop unsaved changes (used when the request fails)."""
        self.operations = []
        self.retired_ids = []
        self.touch_due = False


@dataclass(frozen=True)
class CookieChange:
    """What the response must do to the session cookie: set ``value`` or, if None, clear it."""

    value: str | None


class SessionManager:
    """Signs and verifies session cookies, enforces timeouts, and loads and saves sessions."""

    def __init__(self, settings: Settings, store: SessionStore, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.cookie_name = settings.cookie_name
        self._secrets = {key_version(s): s for s in settings.session_secrets}
        self._signing_version = key_version(settings.session_secrets[0])
        self._xsrf_keys = [hmac.digest(s.encode("utf-8"), b"xsrf-token", "sha256") for s in settings.session_secrets]
        self._log_key = hmac.digest(settings.session_secrets[-1].encode("utf-8"), b"log-id", "sha256")
        self._max_age_days = settings.absolute_timeout / 86400
        # Verifying a signature is the costliest step of a request that reads its session, and a
        # browser sends the same value many times: successful verifications are remembered (the
        # value's age is still checked on every use). Failures are not, so junk cannot fill it.
        self._verified: Remembered = Remembered(VERIFIED_CACHE_SIZE)
        self._xsrf_verified: Remembered = Remembered(VERIFIED_CACHE_SIZE)
        self._log_ids: Remembered = Remembered(VERIFIED_CACHE_SIZE)

    # Cookie values ---------------------------------------------------------------------------

    def log_id(self, session_id: str | None) -> str:
        """A short keyed hash of a session id for log lines; the id itself is never logged."""
        if not session_id:
            return "-"
        hashed: str | None = self._log_ids.get(session_id)
        if hashed is None:
            hashed = hmac.digest(self._log_key, session_id.encode("ascii"), "sha256").hex()[:12]
            self._log_ids.remember(session_id, hashed)
        return hashed

    def sign(self, session_id: str) -> str:
        """The cookie value for ``session_id``, signed (Tornado v2) with the newest secret."""
        value = create_signed_value(
            self._secrets, self.cookie_name, session_id, version=2, clock=self.clock, key_version=self._signing_version
        )
        return value.decode("ascii")

    def verify(self, cookie: str | None) -> tuple[str | None, bool]:
        """The session id a cookie value carries and whether it needs re-signing, or (None, False).

        Strict: only a v2 value signed by one of our secrets, within the absolute lifetime,
        carrying a well-formed id, is accepted.
        """
        if not cookie:
            return None, False
        known = self._verified.get(cookie)  # only values that passed every check below
        if known is not None:
            session_id, resign, signed_at = known
            if self.clock() - signed_at <= self.settings.absolute_timeout:
                return session_id, resign
            del self._verified[cookie]
        if len(cookie) > self.settings.cookie_max_length or not cookie.isascii():
            return None, False
        try:
            raw = decode_signed_value(
                self._secrets,
                self.cookie_name,
                cookie,
                max_age_days=self._max_age_days,
                clock=self.clock,
                min_version=2,
            )
            version = get_signature_key_version(cookie)
        except Exception:  # malformed fields can surface as any parsing error
            return None, False
        if raw is None:
            return None, False
        try:
            session_id = raw.decode("ascii")
        except UnicodeDecodeError:
            return None, False
        if not SESSION_ID_PATTERN.fullmatch(session_id):
            return None, False
        resign = version != self._signing_version
        self._verified.remember(cookie, (session_id, resign, _signed_at(cookie)))
        return session_id, resign

    # XSRF tokens -----------------------------------------------------------------------------

    def _xsrf_mac(self, key: bytes, nonce: str, session_id: str | None) -> str:
        mac = hmac.digest(key, f"{nonce}|{session_id or ''}".encode("ascii"), "sha256")
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def xsrf_token(self, session_id: str | None) -> str:
        """A new XSRF token bound to ``session_id`` (or to "no session")."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._xsrf_mac(self._xsrf_keys[0], nonce, session_id)}"

    def xsrf_valid(self, token: str | None, session_id: str | None) -> bool:
        """Whether ``token`` was issued by us for ``session_id``."""
        if not token:
            return False
        if self._xsrf_verified.get(token) == (session_id or ""):  # only tokens that passed below
            return True
        if len(token) > 128 or not token.isascii():
            return False
        nonce, _, mac = token.partition(".")
        if not nonce or not mac:
            return False
        if any(hmac.compare_digest(mac, self._xsrf_mac(key, nonce, session_id)) for key in self._xsrf_keys):
            self._xsrf_verified.remember(token, session_id or "")
            return True
        return False

    # Loading and saving ------------------------------------------------------------------------

    def idle_timeout(self, privileged: bool) -> int:
        """The idle timeout of a logged-in (privileged) or an anonymous session (never the longer)."""
        if privileged:
            return self.settings.idle_timeout
        return min(self.settings.idle_timeout, self.settings.anonymous_idle_timeout)

    def _expired(self, record: Record, now: float) -> str | None:
        if now - record["created_at"] >= self.settings.absolute_timeout:
            return "absolute timeout"
        if now - record["last_seen"] >= self.idle_timeout(is_privileged(record)):
            return "idle timeout"
        if record["created_at"] > now + 60:
            return "created in the future"
        return None

    def ttl(self, created_at: float, now: float, privileged: bool = True) -> float:
        """How long the store should keep a record: the sooner of the idle and absolute ends."""
        left = self.settings.absolute_timeout - (now - created_at)
        return max(1.0, min(float(self.idle_timeout(privileged)), left))

    async def creation_allowed(self, session: Session, client: str | None) -> bool:
        """Whether a new anonymous session may be stored for ``client`` (an address) now.

        A login's session always is (logins have budgets of their own). Past the address's
        budget the request is still answered, but its session is not stored: a client that
        makes a new session per request keeps no cookie, so storing it would only fill the
        store. Raises `StoreUnavailable` when the count cannot be made.
        """
        if session.privileged or client is None:
            return True
        budget = self.settings.new_sessions_per_address
        count = await self.store.count(f"new-session\0{client_block(client)}", self.settings.new_sessions_window)
        if count == budget + 1:
            log.warning(
                "new-session budget spent: new sessions of this address not stored (address=%s)",
                client,
                extra={"event": "session.budget", "client": client},
            )
        return count <= budget

    async def load(self, cookie: str | None) -> Session:
        """The session a request's cookie names, or a new anonymous one. Never adopts an id.

        Raises `StoreUnavailable` when the store cannot answer.
        """
        session_id, resign = self.verify(cookie)
        if session_id is None:
            if cookie:
                log.info("session cookie rejected (bad signature, format or age)", extra={"event": "session.rejected"})
            return Session(None, None, stale_cookie=bool(cookie))
        loaded = await self.store.load(session_id)
        if loaded is None:
            hashed = self.log_id(session_id)
            log.warning(
                "session cookie for an unknown session, not adopted (session=%s)",
                hashed,
                extra={"event": "session.unknown", "session": hashed},
            )
            return Session(None, None, stale_cookie=True)
        now = self.clock()
        record = loaded.record
        reason = self._expired(record, now)
        if reason is not None:
            await self.store.delete(session_id)
            hashed = self.log_id(session_id)
            log.info(
                "session expired: %s (session=%s)",
                reason,
                hashed,
                extra={"event": "session.expired", "session": hashed},
            )
            return Session(None, None, stale_cookie=True)
        # A record sealed under an older secret is written again under the newest one at once.
        touch_due = now - record["last_seen"] >= self.settings.touch_interval or loaded.stale_seal
        return Session(session_id, loaded, resign=resign, touch_due=touch_due)

    async def save(self, session: Session, client: str | None = None) -> CookieChange | None:
        """Write what the request changed; return the cookie change the response must carry.

        ``client`` is the request's address: a new anonymous session counts against its budget
        (see `creation_allowed`); past it, nothing is stored and no cookie is set.
        Every store call completes before this returns, so the response is never sent ahead of
        the save. Raises `StoreUnavailable` (nothing promised to the client) or
        `StoreValueError` (data too large or not JSON).
        """
        now = self.clock()
        change: CookieChange | None = None
        if session.stored_id is None and session.operations and not await self.creation_allowed(session, client):
            # Answered as for a client without cookies: this request's writes are seen, not kept.
            session.operations = []
            session.id = None
        if session.stored_id is None and session.operations:
            if session.id is None:
                session.id = new_session_id()
            record = apply_operations(new_record(now, session.privileged), session.operations, now)
            ttl = self.ttl(now, now, session.privileged)
            for _ in range(CREATE_ATTEMPTS):
                if await self.store.create(session.id, record, ttl):
                    break
                # The id is taken (a 256-bit id never collides by chance): never join that record.
                session.id = new_session_id()
            else:
                raise StoreUnavailable("every new session id drawn was taken")
            event = "regenerated" if session.regenerated else "created"
            hashed = self.log_id(session.id)
            log.info("session %s (session=%s)", event, hashed, extra={"event": f"session.{event}", "session": hashed})
            self._adopt(session, session.id, record)
            change = CookieChange(self.sign(session.id))
        elif session.stored_id is not None and session.operations:
            assert session.created_at is not None
            merged = await self.store.update(
                session.stored_id,
                session.operations,
                now,
                self.ttl(session.created_at, now, session.privileged),
                session.loaded,
            )
            if merged is None:
                # The record vanished meanwhile (expired, or a concurrent logout destroyed it):
                # never resurrect it; the changes start a new anonymous session instead.
                log.info("session vanished during request (session=%s)", self.log_id(session.stored_id))
                session.id = new_session_id()
                session.stored_id = None
                return await self.save(session, client)
            self._adopt(session, session.stored_id, merged)
        elif session.stored_id is not None and session.touch_due:
            assert session.created_at is not None
            alive = await self.store.touch(
                session.stored_id, now, self.ttl(session.created_at, now, session.privileged), session.loaded
            )
            session.loaded = None  # its version token is spent
            session.touch_due = False
            if not alive:
                # Ended meanwhile (a logout in another tab, or expired): the cookie names nothing.
                log.info("session vanished during request (session=%s)", self.log_id(session.stored_id))
                session.id = session.stored_id = None
                session.stale_cookie = True
        for old_id in session.retired_ids:
            await self.store.delete(old_id)
            if session.id is None:
                hashed = self.log_id(old_id)
                log.info(
                    "session destroyed (session=%s)", hashed, extra={"event": "session.destroyed", "session": hashed}
                )
        session.retired_ids = []
        if change is None and session.id is not None and session.stored_id == session.id and session.resign:
            change = CookieChange(self.sign(session.id))
        elif change is None and session.id is None and session.stale_cookie:
            change = CookieChange(None)
        session.resign = False
        session.stale_cookie = False
        return change

    @staticmethod
    def _adopt(session: Session, session_id: str, record: Record) -> None:
        session.loaded = None  # its version token is spent
        session.stored_id = session_id
        session.created_at = record["created_at"]
        session._data = record["data"]
        session.operations = []
        session.touch_due = False
