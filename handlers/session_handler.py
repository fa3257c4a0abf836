"""`SessionHandler`: a handler with a session, loaded lazily on first use and saved after the
handler method returns and before the response is sent, with the cookie set only once the store
confirmed.
"""

from __future__ import annotations

import functools
from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.web import HTTPError, RequestHandler

from handlers.cookies import set_cookie_header
from handlers.json_api import ApiError, not_logged_in, store_unavailable
from handlers.json_handler import JsonHandler
from handlers.session_object import Session
from handlers.xsrf import xsrf_cookie_needed
from stores.base import Loaded, StaleCopy, StoreUnavailable, StoreValueError
from stores.users import User

# The session key that holds the logged-in user's email.
USER_KEY = "user"


def _saves_session(method: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """Wrap an HTTP method so the session is saved after it returns, before the response goes.

    Store outages become 503 and unstorable data 413, never a 500. An anonymous request that
    ``@tornado.web.authenticated`` refuses is a 401 (the decorator itself raises 403 for methods
    other than GET and HEAD, and redirects those through `SessionHandler.get_login_url`).
    """

    @functools.wraps(method)
    async def wrapper(self: SessionHandler, *args: Any, **kwargs: Any) -> None:
        self._running = True  # see JsonHandler.on_connection_close: finished even if the client leaves
        copy = self.runs_on_copies
        try:
            while True:
                try:
                    # Before the method, so Tornado's @authenticated (inside this wrapper) sees the user.
                    self.current_user = self.user_of(await self._get_session(copy))
                    try:
                        result = method(self, *args, **kwargs)
                        if result is not None:  # as Tornado does: a coroutine, or None from a plain method
                            await result
                        if not self._response_finished:
                            await self.save_session()
                    except (StaleCopy, StoreUnavailable):
                        raise
                    except Exception:
                        # Any other way out (a refusal, data refused, Tornado's Finish, a bug) was
                        # decided on the copy too: checked, as an answer would be, before it is sent.
                        if self._session is not None and self._session.copy is not None:
                            await self.app.sessions.confirm(self._session)
                        raise
                    return
                except StaleCopy as stale:
                    if not copy:  # a store that calls a fresh load a stale copy
                        raise store_unavailable() from None
                    # It ran on this process's copy of the session, which the store no longer
                    # holds: nothing was written or sent; run it again on the session as stored
                    # (as the lost write found it, when it did: no load of its own).
                    copy_id = self._session.copy_id if self._session is not None else None
                    self._start_again()
                    if stale.found and copy_id is not None:
                        self._found = (copy_id, stale.current)
                    copy = False
        except StoreUnavailable:
            raise store_unavailable() from None
        except StoreValueError as e:
            raise ApiError(413, f"Session data refused: {e}.") from None
        except HTTPError as e:
            if type(e) is HTTPError and e.status_code == 403 and not self.current_user:
                raise not_logged_in() from None
            raise

    wrapper._saves_session = True  # type: ignore[attr-defined]
    return wrapper


class SessionHandler(JsonHandler):
    """A handler with ``await self.get_session()``; the session is saved before the response.

    Writing your own: derive from this, implement ``get``/``post``/..., read and write the
    session; return normally and the session is saved, the cookie set or cleared, then the
    response sent. To show a value only the save knows (a counter's stored total), call
    ``await self.save_session()`` first. Raise `ApiError` for an error the client should see.

    ``self.current_user`` is Tornado's: the logged-in `User`, or None (also when the account has
    since been removed), set before each HTTP method runs. So ``@tornado.web.authenticated``
    works as Tornado users expect, answering an anonymous request with 401
    ``{"errorMessage": "You must be logged in."}`` instead of a redirect.

    ``runs_on_copies = True`` saves a handler that changes its session a round trip on shared
    stores: its methods run on the copy of the session this process last wrote (if the
    store keeps one), and the save writes against that copy's version, so a stored write proves
    the copy was current. If it was not, nothing is written or sent and the method runs again
    on the session as stored (as the lost write found it, or loaded). Set it only for methods
    whose effects are on the session alone (they may run twice: attributes they set on the
    handler, and cookies set with Tornado's ``set_cookie``, stay from the first run), that
    return or raise rather than call ``finish()`` or ``flush()``, and that let exceptions from
    ``save_session()`` through.
    """

    # See the class docstring: methods may run on this process's copy of the session.
    runs_on_copies = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("get", "head", "post", "put", "patch", "delete"):
            # As resolved through inheritance: a method a mixin brings is wrapped too.
            method = getattr(cls, name)
            if method is not getattr(RequestHandler, name) and not getattr(method, "_saves_session", False):
                setattr(cls, name, _saves_session(method))

    def initialize(self) -> None:
        super().initialize()
        self._session: Session | None = None
        # finish() was called (by the method itself, say): there is nothing left to save for.
        self._response_finished = False
        # The request's session cookie named no stored session (bad, expired or unknown).
        self._stale_cookie_at_load = False
        # Set-Cookie values by cookie name, written out when the headers are (see flush).
        self._cookies: dict[str, tuple[str, bool]] = {}
        # What a write lost against a copy found stored (session id, record), for the run again.
        self._found: tuple[str, Loaded | None] | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Responses here depend on the session: no shared or browser cache may keep them.
        self.set_header("Cache-Control", "no-store")

    def user_of(self, session: Session) -> User | None:
        """The user ``session`` is logged in as, or None."""
        email = session.get(USER_KEY)
        return self.app.users.get(email) if isinstance(email, str) else None

    def get_login_url(self) -> str:
        # Where ``@tornado.web.authenticated`` would redirect an anonymous GET: an API answers
        # 401 with its JSON error instead of sending a browser to a login page.
        raise not_logged_in()

    async def get_session(self) -> Session:
        """This request's session, loaded from the store on first call (503 if unavailable)."""
        return await self._get_session(False)

    async def _get_session(self, copy: bool) -> Session:
        if self._session is None:
            found, self._found = self._found, None
            try:
                cookies = self.session_cookies()
                session = await self.app.sessions.load(cookies[0] if cookies else None, copy, found)
                for cookie in cookies[1:]:  # a repeated cookie name: the first the store holds
                    if not session.stale_cookie:
                        break
                    session = await self.app.sessions.load(cookie, copy, found)
                self._session = session
            except StoreUnavailable:
                raise store_unavailable() from None
            self._stale_cookie_at_load = self._session.stale_cookie
        return self._session

    def _start_again(self) -> None:
        """Forget what a run on a stale copy did to this response, to run the method again."""
        self.clear()
        self._session = None
        self._cookies.clear()
        self._stale_cookie_at_load = False
        self.current_user = None

    async def save_session(self) -> None:
        """Save the session now (it is saved automatically when the method returns)."""
        if self._session is None or not (self._session.unsaved or self._session.copy is not None):
            return
        change = await self.app.sessions.save(self._session, self.request.remote_ip)
        if change is not None:
            config = self.app.config
            max_age = config.cookie_max_age
            self._set_cookie(config.cookie_name, change.value, httponly=config.cookie_httponly, max_age=max_age)

    def _set_cookie(self, name: str, value: str | None, *, httponly: bool, max_age: int | None = None) -> None:
        """Set (or with None, clear) a cookie on this response, replacing any set before for it."""
        header = set_cookie_header(self.app.config, name, value, httponly=httponly, max_age=max_age)
        self._cookies.pop(name, None)
        self._cookies[name] = (header, value is None)

    def flush(self, include_footers: bool = False) -> Future[None]:
        if self._session is not None and self._session.copy is not None:
            raise RuntimeError("runs_on_copies: the response was sent before the session was confirmed")
        # A cleared cookie is written last: curl's cookie jar, read back and written by the same
        # command (-b jar -c jar), brings a cleared cookie back when another Set-Cookie follows it
        # in the response (the next cookie purges the expired one from memory, then the jar file
        # is read again), so the README's curl walk-through would keep a dead session cookie.
        if self._cookies:
            for header, _ in sorted(self._cookies.values(), key=lambda cookie: cookie[1]):
                self.add_header("Set-Cookie", header)
            self._cookies.clear()
        return super().flush(include_footers)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # A failed request saves nothing it had changed; a cookie that named no stored session
        # is still cleared, as a successful request would (clearing it stores nothing).
        if self._session is not None:
            self._session.discard()
            # What ended the method on a copy was confirmed first (see _saves_session), or the
            # store failed: an error answer says nothing an unconfirmed copy decided.
            self._session.copy = None
            if self._stale_cookie_at_load and self._session.stored_id is None:
                config = self.app.config
                self._set_cookie(config.cookie_name, None, httponly=config.cookie_httponly)
        super().send_error(status_code, **kwargs)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        if self._session is not None and self._session.modified:
            raise RuntimeError("session changed but not saved: await self.save_session() before finish()")
        self._issue_xsrf_cookie()
        self._response_finished = True
        return super().finish(chunk)

    def _issue_xsrf_cookie(self) -> None:
        """Give the browser an XSRF token valid for the session it holds after this response."""
        if self._session is None and self.request.method != "GET":
            return
        if self._session is not None:
            session_id = self._session.stored_id
        else:
            session_id, _ = self.app.sessions.verify(self.session_cookie())
        if xsrf_cookie_needed(self, session_id):
            self._set_cookie(self.app.config.xsrf_cookie_name, self.app.sessions.xsrf_token(session_id), httponly=False)
