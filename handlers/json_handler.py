"""`JsonHandler`: the base of every route, with or without a session.

It applies the browser-facing rules (CORS from handlers.cors, CSRF from handlers.xsrf, JSON bodies
and errors from handlers.json_api) and counts requests in flight for the drain.
"""

from __future__ import annotations

import functools
from asyncio import Future
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import TYPE_CHECKING, Any

from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler, stream_request_body

from handlers.cookies import cookie_values, parse_cookie_header
from handlers.cors import add_cors_headers, answer_options, own_origin
from handlers.headers import request_header
from handlers.json_api import (
    JSON_CONTENT_TYPE,
    STATUS_MESSAGES,
    ApiError,
    body_too_large,
    encode_json,
    error_body,
    parse_json_body,
)
from handlers.xsrf import check_csrf

if TYPE_CHECKING:
    from handlers.app import SessionApplication

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Values of one cookie name looked at: a client can repeat a name thousands of times in one
# header, and each value may cost a signature check. A planting sibling subdomain can send a
# value per path that prefixes the request's ("/", "/api", "/api/", "/api/login") and parent
# domain: sixteen leave room for the browser's own behind all of those.
COOKIE_VALUES_CHECKED = 16
# Of repeated session cookies that verify, those loaded (each may cost a store round trip).
SESSION_VALUES_LOADED = 4
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def input_unread(request: HTTPServerRequest, received: int, running: bool = False) -> bool:
    """Whether an answer now would come before ``request``'s body is read whole: ``received``
    bytes of a declared length, or chunks and the method (``running``) not begun."""
    length = request_header(request.headers, "Content-Length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            return True  # no length to tell where the body ends: the connection ends here
        return received < int(length)
    return "Transfer-Encoding" in request.headers and not running


def end_with_answer(handler: RequestHandler) -> None:
    """This answer comes before the request was read whole: the connection ends with it.

    Saying so keeps a proxy from sending another request on it, and the connection lingers
    while the client still sends (connections.Lingering) instead of resetting the answer away.
    """
    handler.set_header("Connection", "close")
    connection = handler.request.connection
    if isinstance(connection, HTTP1Connection) and connection.stream is not None:
        connection.stream.input_unread = True  # type: ignore[attr-defined]


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an HTTP method so the request checks have run before it, whatever ``prepare`` does.

    The checks run in `JsonHandler.prepare`, before the body is read; a subclass that overrides
    ``prepare`` without calling it, or calls an async one without awaiting it, would skip them
    (and the CSRF check with them), so each method checks again if they have not run.
    """

    @functools.wraps(method)
    def wrapper(self: JsonHandler, *args: Any, **kwargs: Any) -> Any:
        if not self._request_checked:
            self.check_request()
        # From here the request is the method's until it finishes, whether or not its client stays.
        self._running = True
        return method(self, *args, **kwargs)

    wrapper._checked = True  # type: ignore[attr-defined]
    return wrapper


@stream_request_body
class JsonHandler(RequestHandler):
    """JSON errors, CORS, CSRF and a bounded JSON body. Derive from this for sessionless routes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("get", "head", "post", "put", "patch", "delete"):
            # As resolved through inheritance: a method a mixin brings is wrapped too.
            method = getattr(cls, name)
            if method is not getattr(RequestHandler, name) and not getattr(method, "_checked", False):
                setattr(cls, name, _checked(method))

    def __init__(self, application: Any, request: HTTPServerRequest, **kwargs: Any) -> None:
        # The application, with its settings, session manager and users; set before Tornado's
        # __init__, whose clear() already calls set_default_headers().
        self.app: SessionApplication = application
        super().__init__(application, request, **kwargs)

    def initialize(self) -> None:
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._request_cookies: dict[str, str] | None = None
        self._cookies_header = ""
        self._request_checked = False
        # Counted so a shutdown can wait for requests in flight.
        self._counted = True
        self._running = False
        self.app.in_flight += 1

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.app.in_flight -= 1

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        # A client gone before the method began (while it sent its body, say) leaves nothing to
        # wait for. Once the method runs, it finishes (and saves its session) even without its
        # client, and a shutdown waits for that: on_finish uncounts it.
        if not self._running:
            self._uncount()

    # Headers ---------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        # Runs again on every clear(), so error responses carry the same CORS answer.
        self.set_header("Vary", "Origin")
        add_cors_headers(self, self.app.config)

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements (for Allow and preflight answers)."""
        return [m for m in _METHODS if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    def cookie_header(self) -> str:
        """The request's cookies as one Cookie header ("" if none).

        Tornado joins repeated headers with ","; repeated Cookie headers (HTTP/2's split cookies
        forwarded as they came, say) are joined with "; " here, so they stay apart.
        """
        header = request_header(self.request.headers, "Cookie")
        if header is None:
            return ""
        if "," in header:
            return "; ".join(self.request.headers.get_list("Cookie"))
        return header

    def request_cookie(self, name: str) -> str | None:
        """The request cookie ``name``, like ``get_cookie`` but parsed once and without Morsels."""
        if self._request_cookies is None:
            header = request_header(self.request.headers, "Cookie")
            if header is None:
                self._request_cookies = {}
                return None
            if "," in header:
                header = self.cookie_header()
            self._cookies_header = header
            self._request_cookies = parse_cookie_header(header)
        return self._request_cookies.get(name)

    def request_cookie_values(self, name: str, limit: int | None = COOKIE_VALUES_CHECKED) -> list[str]:
        """The values the request gives cookie ``name``, in order, duplicates included (see
        `cookie_values`): the first ``limit`` (None: all), where each costs a signature check."""
        header = self.cookie_header()
        return cookie_values(header, name)[:limit] if header else []

    def session_cookies(self) -> list[str]:
        """The request's session cookie value, as a list: empty if none.

        A sibling subdomain can add a second cookie of the same name for the parent domain
        (unless the name has the ``__Host-`` prefix, as in prod), listed before the browser's own
        when its path is longer. One value per name would be the last (Tornado's parser), and a
        planted junk value would log the user out; when the name is repeated, this is every value
        that verifies (of the first ``COOKIE_VALUES_CHECKED``; at most ``SESSION_VALUES_LOADED``),
        in the order sent, and the session is the first of them the store holds (`SessionHandler`).
        """
        name = self.app.config.cookie_name
        value = self.request_cookie(name)
        if value is None:
            return []
        if self._cookies_header.count(name + "=") > 1:
            verify = self.app.sessions.verify
            values = self.request_cookie_values(name)
            verified = [candidate for candidate in values if verify(candidate)[0]][:SESSION_VALUES_LOADED]
            if verified:
                return verified
        return [value]

    def session_cookie(self) -> str | None:
        """The request's session cookie value (of repeated ones, the first that verifies), or None."""
        values = self.session_cookies()
        return values[0] if values else None

    def own_origin(self) -> str:
        """This server's origin as the browser sees it (the forwarded scheme behind a proxy)."""
        return own_origin(self)

    # Request checks --------------------------------------------------------------------------

    def prepare(self) -> Awaitable[None] | None:
        if self.request.method != "OPTIONS":
            self.check_request()
        return None

    def check_request(self) -> None:
        """The declared body size (413 before it is read) and, for unsafe methods, CSRF (403)."""
        self._request_checked = True
        declared = request_header(self.request.headers, "Content-Length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise ApiError(400, "Invalid Content-Length.")
            if int(declared) > self.app.config.max_body_size:
                raise body_too_large(self.app.config.max_body_size)
        if self.request.method in UNSAFE_METHODS:
            self.check_csrf()

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
            # Requests the client pipelined behind this one are not run (connections.py).
            connection.stream.last_answer_given = True  # type: ignore[attr-defined]
            written.add_done_callback(lambda _: connection.close())
        return written

    def compute_etag(self) -> str | None:
        # API answers depend on the session; a validator would only invite stale 304s.
        return None

    def check_etag_header(self) -> bool:
        # Tornado's check runs a regex over If-None-Match on every GET; without that header it
        # can only answer False, so ask Tornado only when the request carries one.
        if "If-None-Match" not in self.request.headers:
            return False
        return super().check_etag_header()

    # Responses -------------------------------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        """Send ``value`` as the JSON response body."""
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.write(encode_json(value))

    def options(self, *args: str) -> None:
        """Answer a CORS preflight (no session is touched) or plain OPTIONS with Allow."""
        answer_options(self, self.app.config, self.allowed_methods())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if input_unread(self.request, self._body_size, self._running):
            end_with_answer(self)
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
