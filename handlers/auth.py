"""Logging in and out: ``POST /api/login``, ``GET /api/login``, ``POST /api/logout``."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiError, SessionHandler, not_logged_in
from handlers.session import Session
from stores.users import User

USER_KEY = "user"
MAX_CREDENTIAL_LENGTH = 1024


class AuthenticatedHandler(SessionHandler):
    """A session handler that knows which user, if any, the session belongs to.

    ``self.current_user`` is Tornado's: the logged-in `User`, or None (also when the account has
    since been removed), set in ``prepare()`` once the session is loaded. So
    ``@tornado.web.authenticated`` works as Tornado users expect, answering an anonymous request
    with 401 ``{"errorMessage": "You must be logged in."}`` instead of a redirect.
    """

    async def prepare(self) -> None:
        super().prepare()
        if self.request.method != "OPTIONS":  # a preflight is answered without a session
            self.current_user = self.user_of(await self.get_session())

    def user_of(self, session: Session) -> User | None:
        """The user ``session`` is logged in as, or None."""
        email = session.get(USER_KEY)
        return self.app.users.get(email) if isinstance(email, str) else None

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
    """Bind the session to ``user`` under a new id (the pre-login id dies: no fixation)."""
    session.regenerate()
    session[USER_KEY] = user.email


class LoginHandler(AuthenticatedHandler):
    async def get(self) -> None:
        self.write_json({"loggedIn": self.current_user is not None})

    async def post(self) -> None:
        email, password = _credentials(self.json_body())
        user = await self.app.users.authenticate(email, password)
        if user is None:
            raise ApiError(401, "Permission denied!")
        log_in(await self.get_session(), user)
        self.current_user = user
        self.write_json({"user": {"email": user.email, "name": user.name}})


class LogoutHandler(AuthenticatedHandler):
    async def post(self) -> None:
        self.json_body(allow_empty=True)
        (await self.get_session()).destroy()
        self.current_user = None
        self.write_json({})
