"""`SessionManager`: the cookie rules that bind a browser to a session, and its life in the store.

It owns everything about the cookie (signing with rotation, strict verification, attributes),
the timeouts, and loading and saving through whichever store it was given.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from tornado.web import create_signed_value, decode_signed_value, get_signature_key_version

from handlers.remembered import Remembered
from handlers.session_object import SESSION_ID_PATTERN, Session, new_session_id
from handlers.throttle import client_block
from settings import Settings, key_version
from stores.base import (
    STALE_SEAL,
    Record,
    SessionStore,
    apply_operations,
    is_privileged,
    new_record,
)

log = logging.getLogger("sessions")

# How many verified cookie values and XSRF tokens are remembered (a few MiB at most).
VERIFIED_CACHE_SIZE = 20_000


def _signed_at(cookie: str) -> float:
    """The signing time inside a Tornado v2 signed value (already verified by the caller)."""
    return float(cookie.split("|", 3)[2].split(":", 1)[1])


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
        record = await self.store.load(session_id)
        if record is None:
            hashed = self.log_id(session_id)
            log.warning(
                "session cookie for an unknown session, not adopted (session=%s)",
                hashed,
                extra={"event": "session.unknown", "session": hashed},
            )
            return Session(None, None, stale_cookie=True)
        now = self.clock()
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
        touch_due = now - record["last_seen"] >= self.settings.touch_interval or STALE_SEAL in record
        return Session(session_id, record, resign=resign, touch_due=touch_due)

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
            await self.store.create(session.id, record, self.ttl(now, now, session.privileged))
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
            await self.store.touch(
                session.stored_id, now, self.ttl(session.created_at, now, session.privileged), session.loaded
            )
            session.loaded = None  # its version token is spent
            session.touch_due = False
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
