"""Logging in and out: ``POST /api/login``, ``GET /api/login``, ``POST /api/logout``."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from tornado.http1connection import HTTP1Connection

from handlers.base import ApiError, SessionHandler, not_logged_in
from handlers.devices import DeviceCookies
from handlers.json_handler import COOKIE_VALUES_CHECKED
from handlers.session_handler import USER_KEY
from handlers.session_object import Session
from handlers.throttle import TOO_MANY_ATTEMPTS, Refused, check_account_budgets, check_address_budget
from stores.users import CheckAbandoned, HashingBusy, User, normalise_email

log = logging.getLogger("handlers.auth")

MAX_CREDENTIAL_LENGTH = 1024
# Seconds a login refused because the hashing queue is full should wait: a hash takes a few
# hundred milliseconds, so by then the queue has moved.
HASHING_RETRY_AFTER = "1"
# What the access log shows for a login whose client left before its password was checked (as
# nginx logs it); nobody receives the answer.
CLIENT_GONE = 499


class AuthenticatedHandler(SessionHandler):
    """A session handler for routes that need the logged-in user (see `SessionHandler`'s
    ``current_user``); ``await self.require_user()`` is the user or a 401."""

    async def require_user(self) -> User:
        """The logged-in user; 401 ``You must be logged in.`` otherwise."""
        user: User | None = self.current_user
        if user is None:
            raise not_logged_in()
        return user


def _credentials(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise ApiError(400, 'Expected a JSON object {"email": ..., "password": ...}.')
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise ApiError(400, '"email" and "password" must be strings.')
    if len(email) > MAX_CREDENTIAL_LENGTH or len(password) > MAX_CREDENTIAL_LENGTH:
        raise ApiError(400, '"email" and "password" are too long.')
    return email, password


def log_in(session: Session, user: User) -> None:
    """Bind the session to ``user`` under a new id (the pre-login id dies: no fixation).

    What the session held carries over, except when another user was logged in on it: their data
    (a cart, say) is not the new user's on a shared browser.
    """
    previous = session.get(USER_KEY)
    same = isinstance(previous, str) and normalise_email(previous) == normalise_email(user.email)
    session.regenerate(keep_data=previous is None or same)
    session[USER_KEY] = user.email


class LoginHandler(AuthenticatedHandler):
    def initialize(self) -> None:
        super().initialize()
        # The password check under way, cancelled if the client goes while it waits for a thread.
        self._check: asyncio.Future[User | None] | None = None
        self._client_gone = False

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._client_gone = True
        if self._check is not None:
            self._check.cancel()

    def _client_still_there(self) -> bool:
        """Whether the client may still read the answer, asked just before its password is hashed.

        Tornado tells `on_connection_close` only once it has read the end of the stream; a
        client that wrote its request and closed at once has its end of stream already waiting
        in the socket, which a non-consuming peek sees without waiting for Tornado.
        """
        if self._client_gone:
            return False
        connection = self.request.connection
        if not isinstance(connection, HTTP1Connection) or connection.stream is None:
            return True
        if connection.stream.closed():
            return False
        try:
            return connection.stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except (BlockingIOError, InterruptedError, ValueError):  # nothing to read; or TLS, which cannot peek
            return True
        except OSError:  # reset by the peer
            return False

    async def get(self) -> None:
        self.write_json({"loggedIn": self.current_user is not None})

    def _throttled(self, refused: Refused, address: str) -> ApiError:
        if refused.first:
            log.warning(
                "login throttled: %s budget spent (address=%s)",
                refused.budget,
                address,
                extra={"event": "login.throttled", "client": address},
            )
        return ApiError(429, TOO_MANY_ATTEMPTS, {"Retry-After": str(refused.retry_after)})

    async def post(self) -> None:
        email, password = _credentials(self.json_body())
        # Counted before hashing, the same way for every email: a 429 costs no hash and tells
        # nothing about which accounts exist.
        address = self.request.remote_ip or "-"
        config = self.app.config
        account = normalise_email(email)
        # Every well-formed value the name is given (the first few: each costs an HMAC): junk of
        # the same name planted by a sibling subdomain (the dev name has no __Host- prefix) must
        # not hide the real one.
        now = self.app.clock()
        values = self.request_cookie_values(config.device_cookie_name, limit=None)
        candidates = [value for value in values if DeviceCookies.well_formed(value)][:COOKIE_VALUES_CHECKED]
        credential = self.app.users.credential(account)
        device = next((v for v in candidates if self.app.devices.known(v, account, credential, now)), None)
        refused = await check_address_budget(self.app.store, config, address)
        if refused is not None:
            raise self._throttled(refused, address)
        if self._client_gone:
            raise ApiError(CLIENT_GONE, "Client closed the request.")

        async def admit() -> None:
            # Once a hashing thread is this attempt's: a login refused as busy spent no budget.
            refused = await check_account_budgets(self.app.store, config, address, email, device=device)
            if refused is not None:
                raise self._throttled(refused, address)
            if not self._client_still_there():
                raise CheckAbandoned

        known = device is not None
        self._check = asyncio.ensure_future(self.app.users.authenticate(email, password, admit, priority=known))
        try:
            user = await self._check
        except HashingBusy:
            raise ApiError(
                503, "Too many logins at once, please retry shortly.", {"Retry-After": HASHING_RETRY_AFTER}
            ) from None
        except (asyncio.CancelledError, CheckAbandoned):
            raise ApiError(CLIENT_GONE, "Client closed the request.") from None
        if user is None:
            raise ApiError(401, "Permission denied!")
        log_in(await self.get_session(), user)
        self.current_user = user
        assert credential is not None  # the account just logged in
        device = self.app.devices.issue(account, credential, self.app.clock())
        self._set_cookie(config.device_cookie_name, device, httponly=True, max_age=config.device_cookie_max_age)
        self.write_json({"user": {"email": user.email, "name": user.name}})


class LogoutHandler(AuthenticatedHandler):
    async def post(self) -> None:
        if not isinstance(self.json_body(allow_empty=True), dict):
            raise ApiError(400, "Expected a JSON object ({}) or an empty body.")
        (await self.get_session()).destroy()
        self.current_user = None
        self.write_json({})
