"""The README's "write your own handler" example, registered through ``extra_routes``."""

from __future__ import annotations

import datetime
import math

import pytest

from handlers.app import SessionApplication
from handlers.auth import AuthenticatedHandler
from handlers.base import ApiError
from tests.conftest import Browser, body_json


class CartHandler(AuthenticatedHandler):
    async def get(self) -> None:
        session = await self.get_session()
        self.write_json({"items": session.get("cart", [])})

    async def post(self) -> None:
        await self.require_user()
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


@pytest.fixture
def app(config, store, users, clock) -> SessionApplication:
    routes = [(r"/api/cart", CartHandler), (r"/api/odd", OddValueHandler), (r"/api/restart", RestartHandler)]
    return SessionApplication(config, store, users, clock=clock, extra_routes=routes)


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
