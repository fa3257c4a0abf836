"""Cookies: reading a request's Cookie header, signing and verifying the session cookie, and the
one set of attributes every cookie this server writes (set or cleared) carries.
"""

from __future__ import annotations

import http.cookies
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tornado.httputil import format_timestamp, parse_cookie
from tornado.web import create_signed_value, decode_signed_value, get_signature_key_version

from handlers.session_object import SESSION_ID_PATTERN
from settings import key_version
from stores.remembered import Remembered

log = logging.getLogger("sessions")

if TYPE_CHECKING:
    from settings import Settings

# A browser sends the same Cookie header with every request until one of its cookies changes:
# each header is parsed once and remembered. Parsing one, with the quoted session cookie, took 2-3
# us per request. Only short headers of a few cookies are kept (a session and an XSRF cookie make
# about 250 characters): about 0.9 KB per header remembered, 1.7 KB at most, so 10,000 hold 9 MB
# and never more than 17 MB, however an attacker shapes them. A longer header is parsed each time.
COOKIE_HEADERS_REMEMBERED = 10_000
REMEMBERED_COOKIE_HEADER_LENGTH = 512
REMEMBERED_COOKIES_PER_HEADER = 4
_parsed_cookie_headers = Remembered(COOKIE_HEADERS_REMEMBERED)
# How many verified cookie values (and, in handlers.xsrf, tokens) are remembered (a few MiB at most).
VERIFIED_CACHE_SIZE = 20_000
# Seconds a time signed or stored by another process may lie ahead of this one's clock.
CLOCK_SKEW = 60
# Seconds between warnings about cookies signed further ahead than that (a clock gone wrong).
FUTURE_WARNING_INTERVAL = 60
# A cleared cookie's Expires: a year back, as Tornado's clear_cookie writes it.
CLEARED_EXPIRES_AGO = 365 * 86400


def parse_cookie_header(header: str) -> dict[str, str]:
    """A Cookie header's cookies by name (Tornado's parser). Shared: never change the result."""
    cookies: dict[str, str] | None = _parsed_cookie_headers.get(header)
    if cookies is None:
        try:
            cookies = parse_cookie(header)
        except Exception:  # a header the parser cannot read is no cookies at all
            cookies = {}
        if len(header) <= REMEMBERED_COOKIE_HEADER_LENGTH and len(cookies) <= REMEMBERED_COOKIES_PER_HEADER:
            _parsed_cookie_headers.remember(header, cookies)
    return cookies


def cookie_values(header: str, name: str) -> list[str]:
    """Every value ``header`` gives the cookie ``name``, in order, duplicates included.

    A parser keeps one value per name (Tornado's the last, a browser's script the first), but a
    sibling subdomain can add a second cookie of the same name for the parent domain: a check that
    a planted cookie must not defeat looks at all of them.
    """
    values = []
    for chunk in header.split(";"):
        key, separator, value = chunk.partition("=")
        if separator and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def set_cookie_header(
    config: Settings, name: str, value: str | None, *, httponly: bool, max_age: int | None = None
) -> str:
    """A Set-Cookie value for ``name``: ``value`` (for ``max_age`` seconds, if given), or, if
    ``value`` is None, the cookie cleared.

    Every cookie gets the same path, domain, Secure and SameSite, so a clear always matches what
    was set. A cleared cookie carries Max-Age=0 as well as a past Expires: clients that mishandle
    one honour the other.
    """
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    jar[name] = value or ""
    morsel = jar[name]
    morsel["path"] = "/"
    if config.cookie_domain:
        morsel["domain"] = config.cookie_domain
    if value is None:
        morsel["expires"] = format_timestamp(time.time() - CLEARED_EXPIRES_AGO)
        morsel["max-age"] = "0"
    elif max_age:
        morsel["max-age"] = str(int(max_age))
    if httponly:
        morsel["httponly"] = True
    if config.cookie_secure:
        morsel["secure"] = True
    if config.cookie_samesite:
        morsel["samesite"] = config.cookie_samesite
    return morsel.OutputString()


def _signed_at(cookie: str) -> float:
    """The signing time inside a Tornado v2 signed value (already verified by the caller)."""
    return float(cookie.split("|", 3)[2].split(":", 1)[1])


class CookieSigner:
    """Signs session ids into cookie values and verifies them: Tornado v2 signatures only, a
    secret per key version for rotation (the newest signs, all verify), within the absolute
    lifetime.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.cookie_name = settings.cookie_name
        self._secrets = {key_version(s): s for s in settings.session_secrets}
        self._signing_version = key_version(settings.session_secrets[0])
        self._max_age_days = settings.absolute_timeout / 86400
        # Verifying a signature is the costliest step of a request that reads its session, and a
        # browser sends the same value many times: successful verifications are remembered (the
        # value's age is still checked on every use). Failures are not, so junk cannot fill it.
        self._verified: Remembered = Remembered(VERIFIED_CACHE_SIZE)
        self._next_future_warning = -math.inf

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
        session_id, version = self._decode(cookie)
        if session_id is None:
            return None, False
        signed_at = _signed_at(cookie)
        now = self.clock()
        if signed_at > now + CLOCK_SKEW:
            # Signed in the future: only a holder of the key could, or a process with its clock
            # far ahead. Such a value would outlive the absolute lifetime by the difference.
            if now >= self._next_future_warning:
                self._next_future_warning = now + FUTURE_WARNING_INTERVAL
                log.warning(
                    "session cookie signed %.0f s ahead of this clock refused: are the servers' clocks apart?",
                    signed_at - now,
                )
            return None, False
        resign = version != self._signing_version
        self._verified.remember(cookie, (session_id, resign, signed_at))
        return session_id, resign

    def _decode(self, cookie: str) -> tuple[str | None, int | None]:
        """The well-formed session id a correctly signed value holds, and its key version."""
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
            return None, None
        if raw is None:
            return None, None
        try:
            session_id = raw.decode("ascii")
        except UnicodeDecodeError:
            return None, None
        if not SESSION_ID_PATTERN.fullmatch(session_id):
            return None, None
        return session_id, version
