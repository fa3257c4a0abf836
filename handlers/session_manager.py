"""`SessionManager`: a session's life in the store: loading (and expiring) it, saving what a
request changed, and the cookie change the response must carry.

It reaches the cookie rules through `CookieSigner` (handlers.cookies) and the XSRF tokens through
`XsrfTokens` (handlers.xsrf), both keyed from the same secrets, and talks to whichever store it
was given.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from handlers.cookies import CLOCK_SKEW, VERIFIED_CACHE_SIZE, CookieSigner
from handlers.session_object import Session, new_session_id
from handlers.throttle import client_block, counter_name
from handlers.xsrf import XsrfTokens
from settings import Settings
from stores.base import (
    Loaded,
    Record,
    SessionStore,
    StaleCopy,
    StoreUnavailable,
    apply_operations,
    is_privileged,
    new_record,
)
from stores.remembered import Remembered

log = logging.getLogger("sessions")
# Events of lines any client can cause on every request, by sending a bad or dead session cookie
# again and again, or racing its own logout: server.py lets each through once a second (the
# access line still says it).
CLIENT_CAUSED_EVENTS = ("session.rejected", "session.unknown", "session.vanished")
# New ids drawn for one session before a store that finds each one taken is called unavailable.
CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class CookieChange:
    """What the response must do to the session cookie: set ``value`` or, if None, clear it."""

    value: str | None


class SessionManager:
    """Loads, expires and saves sessions; signs cookies and XSRF tokens through its helpers."""

    def __init__(self, settings: Settings, store: SessionStore, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.cookie_name = settings.cookie_name
        self.signer = CookieSigner(settings, clock)
        self.xsrf = XsrfTokens(settings.session_secrets)
        # Bound once: these run on most requests.
        self.sign = self.signer.sign
        self.verify = self.signer.verify
        self.xsrf_token = self.xsrf.issue
        self.xsrf_valid = self.xsrf.valid
        # Read on every request; settings are frozen, so plain attributes here.
        self._absolute_timeout = settings.absolute_timeout
        # Indexed by privileged (False, True): an anonymous session never gets the longer one.
        self._idle_timeouts = (min(settings.idle_timeout, settings.anonymous_idle_timeout), settings.idle_timeout)
        # Likewise, and a quarter of that idle timeout at most: a session read every second must
        # not idle out because its last_seen was written a whole touch interval ago.
        self._touch_intervals = tuple(min(settings.touch_interval, idle / 4) for idle in self._idle_timeouts)
        self._log_key = hmac.digest(settings.session_secrets[-1].encode("utf-8"), b"log-id", "sha256")
        self._log_ids: Remembered = Remembered(VERIFIED_CACHE_SIZE)

    def log_id(self, session_id: str | None) -> str:
        """A short keyed hash of a session id for log lines; the id itself is never logged."""
        if not session_id:
            return "-"
        hashed: str | None = self._log_ids.get(session_id)
        if hashed is None:
            hashed = hmac.digest(self._log_key, session_id.encode("ascii"), "sha256").hex()[:12]
            self._log_ids.remember(session_id, hashed)
        return hashed

    # Loading and saving ------------------------------------------------------------------------

    def idle_timeout(self, privileged: bool) -> int:
        """The idle timeout of a logged-in (privileged) or an anonymous session (never the longer)."""
        return self._idle_timeouts[privileged]

    def _expired(self, record: Record, now: float) -> str | None:
        if now - record["created_at"] >= self._absolute_timeout:
            return "absolute timeout"
        if now - record["last_seen"] >= self._idle_timeouts[is_privileged(record)]:
            return "idle timeout"
        if record["created_at"] > now + CLOCK_SKEW:
            return "created in the future"
        return None

    def ttl(self, created_at: float, now: float, privileged: bool = True) -> float:
        """How long the store should keep a record: the sooner of the idle and absolute ends."""
        left = self._absolute_timeout - (now - created_at)
        return max(1.0, min(float(self._idle_timeouts[privileged]), left))

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
        name = counter_name(self.settings, "new-session", client_block(client))
        count = await self.store.count(name, self.settings.new_sessions_window)
        if count == budget + 1:
            log.warning(
                "new-session budget spent: new sessions of this address not stored (address=%s)",
                client,
                extra={"event": "session.budget", "client": client},
            )
        return count <= budget

    async def load(
        self, cookie: str | None, copy: bool = False, found: tuple[str, Loaded | None] | None = None
    ) -> Session:
        """The session a request's cookie names, or a new anonymous one. Never adopts an id.

        ``copy``: the store's copy of the record in this process may stand in for a load (no
        round trip) when it has not expired; `save` then confirms it (`confirm`), or raises
        `StaleCopy`. ``found``: (session id, what the store holds for it) as a `StaleCopy` just
        reported it, used in place of a load for that id. Raises `StoreUnavailable` when the
        store cannot answer.
        """
        session_id, resign = self.verify(cookie)
        if session_id is None:
            if cookie:
                log.info("session cookie rejected (bad signature, format or age)", extra={"event": "session.rejected"})
            return Session(None, None, stale_cookie=bool(cookie))
        if copy:
            kept = self.store.copy(session_id)
            if kept is not None:
                now = self.clock()
                if self._expired(kept.record, now) is None:
                    touch_due = now - kept.record["last_seen"] >= self._touch_intervals[is_privileged(kept.record)]
                    return Session(session_id, kept, resign=resign, touch_due=touch_due)
        loaded = found[1] if found is not None and found[0] == session_id else await self.store.load(session_id)
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
        touch_due = now - record["last_seen"] >= self._touch_intervals[is_privileged(record)] or loaded.stale_seal
        return Session(session_id, loaded, resign=resign, touch_due=touch_due)

    async def save(self, session: Session, client: str | None = None) -> CookieChange | None:
        """Write what the request changed; return the cookie change the response must carry.

        ``client`` is the request's address: a new anonymous session counts against its budget
        (see `creation_allowed`); past it, nothing is stored and no cookie is set.
        Every store call completes before this returns, so the response is never sent ahead of
        the save. Raises `StoreUnavailable` (nothing promised to the client) or
        `StoreValueError` (data too large or not JSON).
        """
        if session.copy is not None and not (
            session.operations and session.stored_id is not None and not session.retired_ids
        ):
            # Built from a copy, and no write below would confirm it: ask the store first.
            await self.confirm(session)
        now = self.clock()
        change: CookieChange | None = None
        if session.operations and session.stored_id is not None:
            assert session.created_at is not None
            # Applied to the newest stored record (one round trip with its version token).
            merged = await self.store.update(
                session.stored_id,
                session.operations,
                now,
                self.ttl(session.created_at, now, session.privileged),
                session.loaded,
            )
            if merged is not None:
                self._adopt(session, session.stored_id, merged)
            else:
                # The record vanished meanwhile (expired, or a concurrent logout destroyed it):
                # never resurrect it; the changes start a new anonymous session instead (counted
                # against the new-session budget, with the anonymous timeouts).
                self._log_vanished(session.stored_id)
                session.id = new_session_id()
                session.stored_id = None
                session.privileged = False
        if session.operations and session.stored_id is None:
            change = await self._create(session, client, now)
        elif session.stored_id is not None and session.touch_due:
            await self._touch(session, now)
        if session.retired_ids:
            await self._delete_retired(session)
        if change is None and session.id is not None and session.stored_id == session.id and session.resign:
            change = CookieChange(self.sign(session.id))
        elif change is None and session.id is None and session.stale_cookie:
            change = CookieChange(None)
        session.resign = False
        session.stale_cookie = False
        return change

    async def confirm(self, session: Session) -> None:
        """Check a session built from this process's copy against the store: `StaleCopy` if the
        stored record is another version now (or gone), so the request runs again from what it loaded.
        """
        copy, copy_id = session.copy, session.copy_id
        if copy is None or copy_id is None:
            return
        loaded = await self.store.load(copy_id)
        if loaded is None or loaded.version != copy.version:
            raise StaleCopy(self.log_id(copy_id), found=True, current=loaded)
        session.copy = None
        if session.loaded is copy:
            session.loaded = loaded

    async def _create(self, session: Session, client: str | None, now: float) -> CookieChange | None:
        """Store a new record for the session's writes; the cookie to set, or None if refused."""
        if not await self.creation_allowed(session, client):
            # Answered as for a client without cookies: this request's writes are seen, not kept.
            session.operations = []
            session.id = None
            return None
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
        return CookieChange(self.sign(session.id))

    async def _touch(self, session: Session, now: float) -> None:
        """Refresh ``last_seen`` and the TTL of a session the request only read."""
        assert session.stored_id is not None and session.created_at is not None
        alive = await self.store.touch(
            session.stored_id, now, self.ttl(session.created_at, now, session.privileged), session.loaded
        )
        session.loaded = None  # its version token is spent
        session.touch_due = False
        if not alive:
            # Ended meanwhile (a logout in another tab, or expired): the cookie names nothing.
            self._log_vanished(session.stored_id)
            session.id = session.stored_id = None
            session.stale_cookie = True

    def _log_vanished(self, session_id: str) -> None:
        hashed = self.log_id(session_id)
        log.info(
            "session vanished during request (session=%s)",
            hashed,
            extra={"event": "session.vanished", "session": hashed},
        )

    async def _delete_retired(self, session: Session) -> None:
        """Delete the records of ids the request retired (regenerated or destroyed)."""
        for old_id in session.retired_ids:
            await self.store.delete(old_id)
            if session.id is None:
                hashed = self.log_id(old_id)
                log.info(
                    "session destroyed (session=%s)", hashed, extra={"event": "session.destroyed", "session": hashed}
                )
        session.retired_ids = []

    @staticmethod
    def _adopt(session: Session, session_id: str, record: Record) -> None:
        session.loaded = session.copy = None  # its version token is spent; stored, so confirmed
        session.stored_id = session_id
        session.created_at = record["created_at"]
        session._data = record["data"]
        session.operations = []
        session.touch_due = False
