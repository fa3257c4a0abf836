"""The README's "write your own handler" example, registered through ``extra_routes``."""

from __future__ import annotations

import datetime
import inspect
import math
import types
from collections.abc import MutableMapping
from typing import Any

import pytest
import tornado.web
from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import RequestHandler

from handlers.app import SessionApplication
from handlers.auth import AuthenticatedHandler
from handlers.base import ApiError, JsonHandler, SessionHandler
from handlers.session_object import Session
from tests.conftest import Browser, body_json


class CartHandler(AuthenticatedHandler):
    async def get(self) -> None:
        session = await self.get_session()
        self.write_json({"items": session.get("cart", [])})

    @tornado.web.authenticated
    async def post(self) -> None:
        item = self.json_body()
        if not isinstance(item, str):
            raise ApiError(400, "Expected a string.")
        session = await self.get_session()
        session["cart"] = [*session.get("cart", []), item]


ODD_VALUES = {
    "nan": math.nan,
    "infinity": math.inf,
    "date": datetime.date(2026, 1, 1),
    "set": {1, 2},
    "bytes": b"raw",
    "huge": 2**70,
    "tuple": (1, "a"),
    "int-keys": {1: "one"},
}


class OddValueHandler(AuthenticatedHandler):
    """Stores whatever Python value the query names, then changes its own copy afterwards."""

    async def get(self) -> None:
        session = await self.get_session()
        self.write_json(session.get("odd", "unset"))

    async def post(self) -> None:
        session = await self.get_session()
        value = ODD_VALUES[self.get_query_argument("kind")]
        session["odd"] = value
        if isinstance(value, dict):
            value["later"] = "changed"  # after the assignment: must not reach the store


class RestartHandler(AuthenticatedHandler):
    """Empties the session and saves it, then gives it a new id: only the retired id is left to save."""

    async def post(self) -> None:
        session = await self.get_session()
        for key in list(session):
            del session[key]
        await self.save_session()
        session.regenerate()


class ProfileHandler(AuthenticatedHandler):
    """Tornado's own decorator on the session layer, as a Tornado user writes it."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json({"name": self.current_user.name})

    @tornado.web.authenticated
    async def post(self) -> None:
        session = await self.get_session()
        session["nickname"] = self.json_body()
        self.write_json({"saved": True})


class PlainSessionHandler(SessionHandler):
    """The decorator on a plain session handler: logged-in users in, anonymous ones 401."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json({"name": self.current_user.name})


class TransferHandler(AuthenticatedHandler):
    """Overrides prepare() the usual Tornado way: the CSRF check must hold all the same."""

    def prepare(self) -> None:
        super().prepare()
        self.prepared = True

    @tornado.web.authenticated
    async def post(self) -> None:
        self.write_json({"sent": True})


class CartMixin:
    """A method a handler gets from a mixin, not from its own class body."""

    async def post(self: Any) -> None:
        session = await self.get_session()
        session["mixed"] = True


class MixedHandler(CartMixin, AuthenticatedHandler):
    def prepare(self) -> None:
        pass


class CarelessHandler(SessionHandler):
    """Overrides prepare() without calling it at all."""

    def prepare(self) -> None:
        pass

    async def post(self) -> None:
        session = await self.get_session()
        session["written"] = True


class MappingHandler(SessionHandler):
    """Uses the session as the MutableMapping it is: update, setdefault, pop, dict()."""

    async def get(self) -> None:
        self.write_json(dict(await self.get_session()))

    async def post(self) -> None:
        session = await self.get_session()
        session.update(self.json_body())
        session.setdefault("seen", 0)
        session.pop("drop", None)
        self.write_json({"keys": sorted(session), "length": len(session)})


class VersionedHandler(JsonHandler):
    """Computes its own validator: Tornado's If-None-Match check then answers 304 as it always does."""

    def compute_etag(self) -> str:
        return '"v1"'

    def get(self) -> None:
        self.write_json({"version": 1})


@pytest.fixture
def app(config, store, users, clock) -> SessionApplication:
    routes = [
        (r"/api/versioned", VersionedHandler),
        (r"/api/mapping", MappingHandler),
        (r"/api/cart", CartHandler),
        (r"/api/odd", OddValueHandler),
        (r"/api/restart", RestartHandler),
        (r"/api/profile", ProfileHandler),
        (r"/api/plain", PlainSessionHandler),
        (r"/api/transfer", TransferHandler),
        (r"/api/careless", CarelessHandler),
        (r"/api/mixed", MixedHandler),
    ]
    return SessionApplication(config, store, users, clock=clock, extra_routes=routes)


@pytest.mark.gen_test
async def test_a_handler_that_sets_an_etag_gets_tornados_304(browser: Browser):
    r = await browser.get("/api/versioned")
    assert (r.code, r.headers["Etag"], body_json(r)) == (200, '"v1"', {"version": 1})
    assert (await browser.get("/api/versioned", headers={"If-None-Match": '"v1"'})).code == 304
    assert (await browser.get("/api/versioned", headers={"If-None-Match": '"v0"'})).code == 200
    assert (await browser.get("/api/versioned", headers={"If-None-Match": "*"})).code == 304
    # Our own answers carry no validator, so an If-None-Match never turns them into a 304.
    assert (await browser.get("/livez", headers={"If-None-Match": "*"})).code == 200


@pytest.mark.gen_test
async def test_the_session_is_a_mutable_mapping_whose_changes_are_stored(browser: Browser):
    assert isinstance(Session(None, None), MutableMapping)
    r = await browser.post("/api/mapping", {"a": 1, "drop": True})
    assert body_json(r) == {"keys": ["a", "seen"], "length": 2}
    await browser.post("/api/mapping", {"b": [2]})
    assert body_json(await browser.get("/api/mapping")) == {"a": 1, "seen": 0, "b": [2]}


@pytest.mark.gen_test
async def test_a_handler_of_your_own_gets_sessions_auth_csrf_and_errors(browser: Browser, make_browser):
    assert body_json(await browser.get("/api/cart")) == {"items": []}
    r = await browser.post("/api/cart", "apple")
    assert (r.code, body_json(r)) == (401, {"errorMessage": "You must be logged in."})
    await browser.login()
    assert (await browser.post("/api/cart", "apple")).code == 200
    assert (await browser.post("/api/cart", "pear")).code == 200
    assert body_json(await browser.get("/api/cart")) == {"items": ["apple", "pear"]}
    r = await browser.post("/api/cart", {"not": "a string"})
    assert (r.code, body_json(r)) == (400, {"errorMessage": "Expected a string."})
    r = await browser.fetch("POST", "/api/cart", body="apple", headers={"Content-Type": "text/plain"})
    assert r.code == 415
    browser.origin = "http://evil.example"
    assert (await browser.post("/api/cart", "plum")).code == 403
    browser.origin = browser.base_url
    assert body_json(await browser.get("/api/cart")) == {"items": ["apple", "pear"]}
    assert body_json(await make_browser().get("/api/cart")) == {"items": []}


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", ["nan", "infinity", "date", "set", "bytes", "huge"])
async def test_values_json_cannot_hold_are_refused_with_413_and_lose_nothing(browser: Browser, kind):
    assert (await browser.post("/api/odd?kind=tuple", {})).code == 200
    r = await browser.post(f"/api/odd?kind={kind}", {})
    assert r.code == 413 and body_json(r)["errorMessage"].startswith("Session data refused")
    # Never stored altered (NaN as null, a date as a string): the earlier value is still there.
    assert body_json(await browser.get("/api/odd")) == [1, "a"]


@pytest.mark.gen_test
async def test_stored_values_are_plain_json_copies(browser: Browser):
    assert (await browser.post("/api/odd?kind=int-keys", {})).code == 200
    assert body_json(await browser.get("/api/odd")) == {"1": "one"}


@pytest.mark.gen_test
async def test_a_new_id_for_an_emptied_session_still_kills_the_old_one(browser: Browser, app, store):
    # Nothing is written after regenerate(): the only change left to save is the retired id.
    assert (await browser.get("/api")).code == 200
    old_id, _ = app.sessions.verify(browser.cookies["sid"])
    assert old_id is not None and await store.load(old_id) is not None
    assert (await browser.post("/api/restart", {})).code == 200
    assert await store.load(old_id) is None


@pytest.mark.gen_test
async def test_tornados_authenticated_decorator_refuses_anonymous_requests_with_401(browser: Browser, make_browser):
    for method in ("GET", "POST"):  # Tornado redirects a GET and answers other methods 403
        r = await make_browser().fetch(method, "/api/profile", json_body="Maxi" if method == "POST" else None)
        assert (r.code, body_json(r)) == (401, {"errorMessage": "You must be logged in."}), method
        assert "Location" not in r.headers
    # A cookie that names no session is anonymous too.
    stale = make_browser()
    stale.cookies["sid"] = "2|1:0|10:1800000000|3:sid|8:Zm9vYmFy|" + "0" * 64
    assert (await stale.get("/api/profile")).code == 401
    await browser.login()
    r = await browser.get("/api/profile")
    assert (r.code, body_json(r)) == (200, {"name": "Max Miller"})
    assert (await browser.post("/api/profile", "Maxi")).code == 200
    assert (await browser.post("/api/logout", {})).code == 200
    assert (await browser.get("/api/profile")).code == 401


@pytest.mark.gen_test
async def test_the_decorator_on_a_plain_session_handler_knows_the_user(browser: Browser, make_browser):
    r = await make_browser().get("/api/plain")
    assert (r.code, body_json(r)) == (401, {"errorMessage": "You must be logged in."})
    await browser.login()
    r = await browser.get("/api/plain")
    assert (r.code, body_json(r)) == (200, {"name": "Max Miller"})


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/transfer", "/api/careless", "/api/mixed"])
async def test_a_prepare_override_cannot_skip_the_csrf_check(browser: Browser, make_browser, path):
    await browser.login()
    evil = make_browser(origin="http://evil.example")
    evil.cookies = dict(browser.cookies)
    r = await evil.post(path, {})
    assert (r.code, body_json(r)) == (403, {"errorMessage": "Cross-origin request refused."})
    no_token = make_browser(origin=None)
    no_token.cookies = {k: v for k, v in browser.cookies.items() if k != "XSRF-TOKEN"}
    assert (await no_token.post(path, {})).code == 403
    assert (await browser.post(path, {})).code == 200  # the same request from the page itself


# Tornado hooks a handler may override with Tornado's own meaning; any other name a handler class
# of ours defines must not exist on RequestHandler (a shadow changes what Tornado users expect).
TORNADO_HOOKS = {
    "__init__",
    "initialize",
    "prepare",
    "on_finish",
    "on_connection_close",
    "data_received",
    "set_default_headers",
    "clear",
    "write_error",
    "send_error",
    "finish",
    "flush",
    "log_exception",
    "compute_etag",
    "check_etag_header",
    "get_current_user",
    "get_login_url",
    "get",
    "head",
    "post",
    "put",
    "patch",
    "delete",
    "options",
    "set_extra_headers",
    "__init_subclass__",
}


def handler_classes() -> list[type]:
    found: set[type] = set()
    for module in ("account", "app", "auth", "base", "health", "json_handler", "pages", "session_handler"):
        namespace = vars(__import__(f"handlers.{module}", fromlist=["_"]))
        found.update(c for c in namespace.values() if isinstance(c, type) and issubclass(c, RequestHandler))
    return sorted((c for c in found if c.__module__.startswith("handlers.")), key=lambda c: c.__qualname__)


def test_no_handler_class_shadows_a_tornado_attribute():
    classes = handler_classes()
    assert JsonHandler in classes and AuthenticatedHandler in classes and len(classes) >= 10
    for cls in classes:
        for name in vars(cls):
            # _stream_request_body is set by Tornado's own @stream_request_body decorator.
            if name in TORNADO_HOOKS or name.startswith("__") or name == "_stream_request_body":
                continue
            assert not hasattr(RequestHandler, name), f"{cls.__qualname__}.{name} shadows RequestHandler.{name}"
        for name in TORNADO_HOOKS & set(vars(cls)) - {"__init__", "__init_subclass__"}:
            ours, theirs = vars(cls)[name], getattr(RequestHandler, name, None)
            if theirs is None:  # a StaticFileHandler hook
                continue
            assert callable(ours) and isinstance(theirs, types.FunctionType), f"{cls.__qualname__}.{name}"


def test_no_handler_instance_attribute_shadows_a_tornado_attribute(app: SessionApplication):
    # What our initialize() and __init__ set on an instance, against what Tornado's own set.
    class Connection(HTTPConnection):
        def set_close_callback(self, callback: object) -> None:
            pass

    def instance(cls: type[RequestHandler]) -> RequestHandler:
        start_line = RequestStartLine("GET", "/api", "HTTP/1.1")
        request = HTTPServerRequest(start_line=start_line, headers=HTTPHeaders({"Host": "x"}), connection=Connection())
        return cls(app, request)

    tornado_names = set(vars(instance(RequestHandler))) | set(dir(RequestHandler))
    for cls in (JsonHandler, SessionHandler, AuthenticatedHandler):
        ours = set(vars(instance(cls))) - set(vars(instance(RequestHandler)))
        assert ours, cls
        clashes = ours & tornado_names
        assert not clashes, f"{cls.__qualname__} sets {sorted(clashes)}, which Tornado uses"


def test_current_user_is_tornados_property_not_a_method():
    assert isinstance(inspect.getattr_static(AuthenticatedHandler, "current_user"), property)


@pytest.mark.gen_test
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '["a", NaN]'])
async def test_a_body_that_python_parses_but_json_does_not_is_400(browser: Browser, text):
    await browser.login()
    r = await browser.fetch("POST", "/api/cart", body=text, headers={"Content-Type": "application/json"})
    assert (r.code, body_json(r)) == (400, {"errorMessage": "Malformed JSON body."})
