"""The base handlers every route derives from.

`JsonHandler` owns the browser-facing rules: JSON errors, CORS (exact-match allowlist, early
preflight answers), CSRF (Origin check, else an XSRF token), JSON body parsing and the body limit.
`SessionHandler` adds the session: loaded lazily on first use, saved after the handler method
returns and before the response is sent, with the cookie set only once the store confirmed.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import TYPE_CHECKING, Any, ClassVar

from tornado.httputil import HTTPHeaders, HTTPServerRequest, format_timestamp, parse_cookie
from tornado.web import HTTPError, OutputTransform, RequestHandler, stream_request_body

from handlers.remembered import Remembered
from handlers.session_object import Session
from stores.base import StoreUnavailable, StoreValueError

if TYPE_CHECKING:
    from handlers.app import SessionApplication

log = logging.getLogger("handlers")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
STATUS_MESSAGES = {
    400: "Bad request.",
    401: "You must be logged in.",
    403: "Forbidden.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
    415: "Unsupported media type.",
    500: "Internal server error.",
    503: "Service temporarily unavailable.",
}
STORE_RETRY_AFTER = "2"
JSON = json.JSONEncoder(separators=(",", ":"))


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalise_origin(origin: str) -> str:
    """Lower-case, without the scheme's default port: http://Host:80 and http://host compare equal."""
    origin = origin.lower()
    scheme = origin.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    if default and origin.endswith(default):
        return origin[: -len(default)]
    return origin


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased media type and parameters."""
    media_type, *rest = value.split(";")
    params = {}
    for item in rest:
        name, _, param = item.partition("=")
        params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


# A browser sends the same Cookie header with every request until one of its cookies changes:
# each header is parsed once and remembered. Parsing one, with the quoted session cookie, took 2-3
# us per request. Only short headers of a few cookies are kept (a session and an XSRF cookie make
# about 250 characters): about 0.9 KB per header remembered, 1.7 KB at most, so 10,000 hold 9 MB
# and never more than 17 MB, however an attacker shapes them. A longer header is parsed each time.
COOKIE_HEADERS_REMEMBERED = 10_000
REMEMBERED_COOKIE_HEADER_LENGTH = 512
REMEMBERED_COOKIES_PER_HEADER = 4
_parsed_cookie_headers = Remembered(COOKIE_HEADERS_REMEMBERED)


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


# A \uD800-\uDFFF escape: JSON text may spell a lone surrogate that way, and Python's parser
# returns it in a str that no UTF-8 encoder (a password hash, a log line, orjson) accepts later.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed JSON value (keys included) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value for now, formatted once per second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_timestamp(second))
    return _date[1]


class ApiError(HTTPError):
    """An error with a message for the client, sent as ``{"errorMessage": message}``."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code)
        self.message = message
        self.headers = headers or {}


def store_unavailable() -> ApiError:
    """The 503 every handler answers while the session store is out."""
    return ApiError(503, "Session store unavailable, please retry shortly.", {"Retry-After": STORE_RETRY_AFTER})


def not_logged_in() -> ApiError:
    """The 401 an anonymous request gets where a user is required."""
    return ApiError(401, STATUS_MESSAGES[401])


class SecurityHeaders(OutputTransform):
    """Applied to every response, errors included: no version in Server, nosniff, no framing."""

    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        if "Server" in headers:
            del headers["Server"]
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        return status_code, headers, chunk


@stream_request_body
class JsonHandler(RequestHandler):
    """JSON errors, CORS, CSRF and a bounded JSON body. Derive from this for sessionless routes."""

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

    def __init__(self, application: Any, request: HTTPServerRequest, **kwargs: Any) -> None:
        # The application, with its settings, session manager and users; set before Tornado's
        # __init__, whose clear() already calls set_default_headers().
        self.app: SessionApplication = application
        super().__init__(application, request, **kwargs)

    # Headers ---------------------------------------------------------------------------------

    # The constant headers every response starts with, before set_default_headers() adds the
    # ones that depend on the request. Set here, they skip set_header's per-call checks.
    fixed_headers: ClassVar[dict[str, str]] = {"Content-Type": "text/html; charset=UTF-8", "Vary": "Origin"}

    def clear(self) -> None:
        # Tornado's clear(), less two costs on every response: the Date header formatted anew
        # (3% of a page-counter request; here once per second) and a Server header that
        # SecurityHeaders would only delete again.
        self._headers = HTTPHeaders({**self.fixed_headers, "Date": http_date()})
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = responses[200]

    def set_default_headers(self) -> None:
        # Runs again on every clear(), so error responses carry the same CORS answer.
        origin = self.request.headers.get("Origin")
        if origin is not None and origin in self.app.config.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")

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
        return normalise_origin(f"{self.request.protocol}://{self.request.host}")

    # Request checks --------------------------------------------------------------------------

    def prepare(self) -> Awaitable[None] | None:
        if self.request.method == "OPTIONS":
            return None
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "Invalid Content-Length.")
            if int(declared) > self.app.config.max_body_size:
                raise ApiError(413, f"Request body larger than {self.app.config.max_body_size} bytes.")
        if self.request.method in UNSAFE_METHODS:
            self.check_csrf()
        return None

    def check_csrf(self) -> None:
        """Refuse a state-changing request that a third-party page could have sent (403).

        Accepted: an Origin that is this server's own or on the allowlist; with no Origin, an
        XSRF header issued by us for this browser's session and equal to an XSRF cookie: any of
        them, so a duplicate planted by a sibling subdomain neither denies the request nor helps
        (the header must still be this session's token).
        """
        origin = self.request.headers.get("Origin")
        if origin is not None:
            if origin in self.app.config.cors_origins or normalise_origin(origin) == self.own_origin():
                return
            raise ApiError(403, "Cross-origin request refused.")
        config = self.app.config
        header = self.request.headers.get(config.xsrf_header_name)
        session_id, _ = self.app.sessions.verify(self.request_cookie(config.cookie_name))
        if not header or not self.app.sessions.xsrf_valid(header, session_id):
            raise ApiError(403, "Missing or invalid XSRF token.")
        token = header.encode("utf-8", "replace")
        if not any(
            hmac.compare_digest(token, cookie.encode("utf-8", "replace"))
            for cookie in self.request_cookie_values(config.xsrf_cookie_name)
        ):
            raise ApiError(403, "Missing or invalid XSRF token.")

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        # Past the limit, count but keep nothing: the request is answered 413.
        if self._body_size <= self.app.config.max_body_size:
            self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The request body; raises 413 if it was larger than the configured limit."""
        if self._body_size > self.app.config.max_body_size:
            raise ApiError(413, f"Request body larger than {self.app.config.max_body_size} bytes.")
        return b"".join(self._body_chunks)

    def json_body(self, *, allow_empty: bool = False) -> Any:
        """The request body parsed as JSON: 415 for another media type, 400 if malformed.

        With ``allow_empty``, an empty body reads as ``{}`` whatever its declared type.
        """
        body = self.body
        if allow_empty and not body:
            return {}
        media_type, params = parse_media_type(self.request.headers.get("Content-Type", ""))
        charset = params.get("charset", "utf-8").lower()
        if media_type != "application/json" or charset not in ("utf-8", "utf8"):
            raise ApiError(415, "Content-Type must be application/json.")
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ApiError(400, "Malformed JSON body.") from None
        if _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(value):
            raise ApiError(400, "Malformed JSON body: a string is not valid Unicode (a lone surrogate).")
        return value

    def compute_etag(self) -> None:
        # API answers depend on the session; a validator would only invite stale 304s.
        return None

    # Responses -------------------------------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        """Send ``value`` as the JSON response body."""
        self.set_status(status)
        self._headers["Content-Type"] = "application/json; charset=UTF-8"
        self.write(JSON.encode(value))

    def options(self, *args: str) -> None:
        """Answer a CORS preflight (no session is touched) or plain OPTIONS with Allow."""
        methods = ", ".join(self.allowed_methods())
        origin = self.request.headers.get("Origin")
        if origin is None:
            self.set_header("Allow", f"{methods}, OPTIONS")
        elif origin not in self.app.config.cors_origins:
            raise ApiError(403, "Origin not allowed.")
        else:
            self.set_header("Access-Control-Allow-Methods", methods)
            self.set_header("Access-Control-Allow-Headers", f"Content-Type, {self.app.config.xsrf_header_name}")
            self.set_header("Access-Control-Max-Age", str(self.app.config.cors_max_age))
        self.set_status(204)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            message = error.message
            for name, value in error.headers.items():
                self.set_header(name, value)
        else:
            message = STATUS_MESSAGES.get(status_code, self._reason)
        if status_code == 405:
            self.set_header("Allow", ", ".join([*self.allowed_methods(), "OPTIONS"]))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(JSON.encode({"errorMessage": message}))

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
            if not self._finished:
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

    # Responses here depend on the session: no shared or browser cache may keep them.
    fixed_headers: ClassVar[dict[str, str]] = {**JsonHandler.fixed_headers, "Cache-Control": "no-store"}

    def initialize(self) -> None:
        super().initialize()
        self._session: Session | None = None

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
        return self._session

    async def save_session(self) -> None:
        """Save the session now (it is saved automatically when the method returns)."""
        if self._session is None or not self._session.unsaved:
            return
        change = await self.app.sessions.save(self._session, self.request.remote_ip)
        if change is None:
            return
        config = self.app.config
        attributes: dict[str, Any] = {
            "path": "/",
            "domain": config.cookie_domain,
            "secure": config.cookie_secure,
            "httponly": config.cookie_httponly,
            "samesite": config.cookie_samesite,
        }
        if change.value is None:
            self.clear_cookie(config.cookie_name, **attributes)
            # Max-Age=0 as well as a past Expires: clients that mishandle one (curl's cookie
            # jar keeps a cookie whose Expires is past) honour the other. set_cookie drops a
            # max_age of 0 as falsy, hence the morsel.
            self._new_cookie[config.cookie_name]["max-age"] = "0"
        else:
            self.set_cookie(config.cookie_name, change.value, max_age=config.cookie_max_age, **attributes)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # A failed request saves nothing it had changed.
        if self._session is not None:
            self._session.discard()
        super().send_error(status_code, **kwargs)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        if self._session is not None and self._session.modified:
            raise RuntimeError("session changed but not saved: await self.save_session() before finish()")
        self._issue_xsrf_cookie()
        return super().finish(chunk)

    def _issue_xsrf_cookie(self) -> None:
        """Give the browser an XSRF token valid for the session it holds after this response."""
        if self._session is None and self.request.method != "GET":
            return
        config = self.app.config
        if self._session is not None:
            session_id = self._session.stored_id
        else:
            session_id, _ = self.app.sessions.verify(self.request_cookie(config.cookie_name))
        sessions = self.app.sessions
        if sessions.xsrf_valid(self.request_cookie(config.xsrf_cookie_name), session_id):
            return
        # A planted duplicate may hide a valid token from the one-value parse: look at them all.
        if any(sessions.xsrf_valid(v, session_id) for v in self.request_cookie_values(config.xsrf_cookie_name)):
            return
        self.set_cookie(
            config.xsrf_cookie_name,
            self.app.sessions.xsrf_token(session_id),
            path="/",
            domain=config.cookie_domain,
            secure=config.cookie_secure,
            samesite=config.cookie_samesite,
        )
