"""Logging in and out: ``POST /api/login``, ``GET /api/login``, ``POST /api/logout``."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiError, SessionHandler
from handlers.session import Session
from stores.users import User

USER_KEY = "user"
MAX_CREDENTIAL_LENGTH = 1024


class AuthenticatedHandler(SessionHandler):
    """A session handler that knows which user, if any, the session belongs to."""

    def _user_of(self, session: Session) -> User | None:
        email = session.get(USER_KEY)
        return self.app.users.get(email) if isinstance(email, str) else None

    async def current_user(self) -> User | None:
        """The logged-in user, or None (also when their account has since been removed)."""
        return self._user_of(await self.get_session())

    async def require_user(self) -> User:
        """The logged-in user; 401 ``You must be logged in.`` otherwise."""
        user = self._user_of(await self.get_session())
        if user is None:
            raise ApiError(401, "You must be logged in.")
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
        self.write_json({"loggedIn": await self.current_user() is not None})

    async def post(self) -> None:
        email, password = _credentials(self.json_body())
        user = await self.app.users.authenticate(email, password)
        if user is None:
            raise ApiError(401, "Permission denied!")
        log_in(await self.get_session(), user)
        self.write_json({"user": {"email": user.email, "name": user.name}})


class LogoutHandler(AuthenticatedHandler):
    async def post(self) -> None:
        self.json_body(allow_empty=True)
        (await self.get_session()).destroy()
        self.write_json({})
