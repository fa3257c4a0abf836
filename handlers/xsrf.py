"""CSRF: which state-changing requests a third-party page could not have sent, and the XSRF
tokens (Angular's double-submit cookie) that vouch for a request without an ``Origin``.

A token is ``nonce.mac``: the MAC, keyed from the session secrets, binds the nonce to the
session id the browser holds (or to "no session"), so a token is worthless for another session.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

from handlers.cookies import VERIFIED_CACHE_SIZE
from handlers.cors import normalise_origin, own_origin
from handlers.headers import request_header
from handlers.json_api import ApiError
from stores.remembered import Remembered
from stores.users import b64url

if TYPE_CHECKING:
    from handlers.json_handler import JsonHandler

MAX_TOKEN_LENGTH = 128


class XsrfTokens:
    """Issues and checks XSRF tokens under every session secret (the newest issues)."""

    def __init__(self, session_secrets: tuple[str, ...] | list[str]) -> None:
        self._keys = [hmac.digest(s.encode("utf-8"), b"xsrf-token", "sha256") for s in session_secrets]
        self._verified: Remembered = Remembered(VERIFIED_CACHE_SIZE)

    def _mac(self, key: bytes, nonce: str, session_id: str | None) -> str:
        return b64url(hmac.digest(key, f"{nonce}|{session_id or ''}".encode("ascii"), "sha256"))

    def issue(self, session_id: str | None) -> str:
        """A new XSRF token bound to ``session_id`` (or to "no session")."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac(self._keys[0], nonce, session_id)}"

    def valid(self, token: str | None, session_id: str | None) -> bool:
        """Whether ``token`` was issued by us for ``session_id``."""
        if not token:
            return False
        if self._verified.get(token) == (session_id or ""):  # only tokens that passed below
            return True
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return False
        nonce, _, mac = token.partition(".")
        if not nonce or not mac:
            return False
        if any(hmac.compare_digest(mac, self._mac(key, nonce, session_id)) for key in self._keys):
            self._verified.remember(token, session_id or "")
            return True
        return False


def check_csrf(handler: JsonHandler) -> None:
    """Refuse a state-changing request that a third-party page could have sent (403).

    Accepted: an Origin that is this server's own or on the allowlist; with no Origin, an XSRF
    header issued by us for this browser's session and equal to an XSRF cookie: any of them, so a
    duplicate planted by a sibling subdomain neither denies the request nor helps (the header
    must still be this session's token).
    """
    config = handler.app.config
    origin = request_header(handler.request.headers, "Origin")
    if origin is not None:
        if origin in config.cors_origins or normalise_origin(origin) == own_origin(handler):
            return
        raise ApiError(403, "Cross-origin request refused.")
    header = request_header(handler.request.headers, config.xsrf_header_name)
    sessions = handler.app.sessions
    # The token is bound to the session the browser holds: of repeated session cookies, any.
    session_ids = [sessions.verify(cookie)[0] for cookie in handler.session_cookies()] or [None]
    if not header or not any(sessions.xsrf_valid(header, session_id) for session_id in session_ids):
        raise ApiError(403, "Missing or invalid XSRF token.")
    token = header.encode("utf-8", "replace")
    # Only compared (no signature to check), so every value counts, however many were planted.
    if not any(
        hmac.compare_digest(token, cookie.encode("utf-8", "replace"))
        for cookie in handler.request_cookie_values(config.xsrf_cookie_name, limit=None)
    ):
        raise ApiError(403, "Missing or invalid XSRF token.")


def xsrf_cookie_needed(handler: JsonHandler, session_id: str | None) -> bool:
    """Whether the browser lacks a token valid for ``session_id``, the session it will hold."""
    cookie_name = handler.app.config.xsrf_cookie_name
    sessions = handler.app.sessions
    if sessions.xsrf_valid(handler.request_cookie(cookie_name), session_id):
        return False
    # A planted duplicate may hide a valid token from the one-value parse: look at them all.
    return not any(sessions.xsrf_valid(v, session_id) for v in handler.request_cookie_values(cookie_name))
