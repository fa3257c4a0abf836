"""The base handlers every route derives from.

`JsonHandler` applies the browser-facing rules (CORS from handlers.cors, CSRF from handlers.xsrf,
JSON bodies and errors from handlers.json_api) and counts requests in flight for the drain.
`SessionHandler` adds the session: loaded lazily on first use, saved after the handler method
returns and before the response is sent, with the cookie set only once the store confirmed.

`ApiError`, `not_logged_in` and `store_unavailable` are importable from here too, as handlers
written against this module expect.
"""

from __future__ import annotations

import functools
from asyncio import Future
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import TYPE_CHECKING, Any

from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError, RequestHandler, stream_request_body

from handlers.cookies import cookie_values, parse_cookie_header, set_cookie_header
from handlers.cors import add_cors_headers, answer_options, own_origin
from handlers.json_api import (
    JSON,
    JSON_CONTENT_TYPE,
    STATUS_MESSAGES,
    ApiError,
    body_too_large,
    error_body,
    not_logged_in,
    parse_json_body,
    store_unavailable,
)
from handlers.session_object import Session
from handlers.xsrf import check_csrf, xsrf_cookie_needed
from stores.base import StoreUnavailable, StoreValueError

if TYPE_CHECKING:
    from handlers.app import SessionApplication

__all__ = ["ApiError", "JsonHandler", "SessionHandler", "not_logged_in", "store_unavailable"]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


@stream_request_body
class JsonHandler(RequestHandler):
    """JSON errors, CORS, CSRF and a bounded JSON body. Derive from this for sessionless routes."""

    def __init__(self, application: Any, request: HTTPServerRequest, **kwargs: Any) -> None:
        # The application, with its settings, session manager and users; set before Tornado's
        # __init__, whose clear() already calls set_default_headers().
        self.app: SessionApplication = application
        super().__init__(application, request, **kwargs)

    def initialize(self) -> None:
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._request_cookies: dict[str, str] | None = None
        # Counted so a shutdown can wait for requests in flight.
        self._counted = True
        self.app.in_flight += 1

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.app.in_flight -= 1

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()

    # Headers ---------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        # Runs again on every clear(), so error responses carry the same CORS answer.
        self.set_header("Vary", "Origin")
        add_cors_headers(self, self.app.config)

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements (for Allow and preflight answers)."""
        return [m for m in _METHODS if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    def request_cookie(self, name: str) -> str | None:
        """The request cookie ``name``, like ``get_cookie`` but parsed once and without Morsels."""
        if self._request_cookies is None:
            header = self.request.headers.get("Cookie")
            self._request_cookies = parse_cookie_header(header) if header else {}
        return self._request_cookies.get(name)

    def request_cookie_values(self, name: str) -> list[str]:
        """Every value the request's Cookie header gives ``name`` (see `cookie_values`)."""
        header = self.request.headers.get("Cookie")
        return cookie_values(header, name) if header else []

    def own_origin(self) -> str:
        """This server's origin as the browser sees it (the forwarded scheme behind a proxy)."""
        return own_origin(self)

    # Request checks --------------------------------------------------------------------------

    def prepare(self) -> Awaitable[None] | None:
        if self.request.method == "OPTIONS":
            return None
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "Invalid Content-Length.")
            if int(declared) > self.app.config.max_body_size:
                raise body_too_large(self.app.config.max_body_size)
        if self.request.method in UNSAFE_METHODS:
            self.check_csrf()
        return None

    def check_csrf(self) -> None:
        """Refuse a state-changing request that a third-party page could have sent (403)."""
        check_csrf(self)

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        # Past the limit, count but keep nothing: the request is answered 413.
        if self._body_size <= self.app.config.max_body_size:
            self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The request body; raises 413 if it was larger than the configured limit."""
        if self._body_size > self.app.config.max_body_size:
            raise body_too_large(self.app.config.max_body_size)
        return b"".join(self._body_chunks)

    def json_body(self, *, allow_empty: bool = False) -> Any:
        """The request body parsed as JSON: 415 for another media type, 400 if malformed.

        With ``allow_empty``, an empty body reads as ``{}`` whatever its declared type.
        """
        body = self.body
        if allow_empty and not body:
            return {}
        return parse_json_body(body, self.request.headers.get("Content-Type", ""))

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        if not self.app.draining:
            return super().finish(chunk)
        # The process is stopping: this is the connection's last answer.
        self.set_header("Connection", "close")
        written = super().finish(chunk)
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            written.add_done_callback(lambda _: connection.close())
        return written

    def compute_etag(self) -> None:
        # API answers depend on the session; a validator would only invite stale 304s.
        return None

    # Responses -------------------------------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        """Send ``value`` as the JSON response body."""
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.write(JSON.encode(value))

    def options(self, *args: str) -> None:
        """Answer a CORS preflight (no session is touched) or plain OPTIONS with Allow."""
        answer_options(self, self.app.config, self.allowed_methods())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            message = error.message
            for name, value in error.headers.items():
                self.set_header(name, value)
        else:
            message = STATUS_MESSAGES.get(status_code) or responses.get(status_code, "Unknown")
        if status_code == 405:
            self.set_header("Allow", ", ".join([*self.allowed_methods(), "OPTIONS"]))
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(error_body(message))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Errors we answered on purpose are not worth a traceback.
        if isinstance(value, ApiError):
            return
        super().log_exception(typ, value, tb)


def _saves_session(method: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """Wrap an HTTP method so the session is saved after it returns, before the response goes.

    Store outages become 503 and unstorable data 413, never a 500. An anonymous request that
    ``@tornado.web.authenticated`` refuses is a 401 (the decorator itself raises 403 for methods
    other than GET and HEAD, and redirects those through `SessionHandler.get_login_url`).
    """

    @functools.wraps(method)
    async def wrapper(self: SessionHandler, *args: Any, **kwargs: Any) -> None:
        try:
            result = method(self, *args, **kwargs)
            if result is not None:  # as Tornado does: a coroutine, or None from a plain method
                await result
            if not self._response_finished:
                await self.save_session()
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
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("get", "head", "post", "put", "patch", "delete"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_saves_session", False):
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

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Responses here depend on the session: no shared or browser cache may keep them.
        self.set_header("Cache-Control", "no-store")

    def get_login_url(self) -> str:
        # Where ``@tornado.web.authenticated`` would redirect an anonymous GET: an API answers
        # 401 with its JSON error instead of sending a browser to a login page.
        raise not_logged_in()

    async def get_session(self) -> Session:
        """This request's session, loaded from the store on first call (503 if unavailable)."""
        if self._session is None:
            try:
                self._session = await self.app.sessions.load(self.request_cookie(self.app.config.cookie_name))
            except StoreUnavailable:
                raise store_unavailable() from None
            self._stale_cookie_at_load = self._session.stale_cookie
        return self._session

    async def save_session(self) -> None:
        """Save the session now (it is saved automatically when the method returns)."""
        if self._session is None or not self._session.unsaved:
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
        # A cleared cookie is written last: curl's cookie jar, read back and written by the same
        # command (-b jar -c jar), brings a cleared cookie back when another Set-Cookie follows it
        # in the response (the next cookie purges the expired one from memory, then the jar file
        # is read again), so the README's curl walk-through would keep a dead session cookie.
        for header, _ in sorted(self._cookies.values(), key=lambda cookie: cookie[1]):
            self.add_header("Set-Cookie", header)
        self._cookies.clear()
        return super().flush(include_footers)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # A failed request saves nothing it had changed; a cookie that named no stored session
        # is still cleared, as a successful request would (clearing it stores nothing).
        if self._session is not None:
            self._session.discard()
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
            session_id, _ = self.app.sessions.verify(self.request_cookie(self.app.config.cookie_name))
        if xsrf_cookie_needed(self, session_id):
            self._set_cookie(self.app.config.xsrf_cookie_name, self.app.sessions.xsrf_token(session_id), httponly=False)
