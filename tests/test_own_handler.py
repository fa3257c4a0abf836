"""The README's "write your own handler" example, registered through ``extra_routes``."""

from __future__ import annotations

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


@pytest.fixture
def app(config, store, users, clock) -> SessionApplication:
    return SessionApplication(config, store, users, clock=clock, extra_routes=[(r"/api/cart", CartHandler)])


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
