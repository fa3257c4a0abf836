"""Browser-facing rules: CORS allowlist, CSRF, bodies, error shape and response headers."""

from __future__ import annotations

import email.utils
import json
import time

import pytest

from tests.conftest import MAX, Browser, CountingStore, body_json

ALLOWED = "http://localhost:4736"
ACA_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
)


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type",
    }


# CORS -------------------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api", "/api/login", "/api/balance", "/nope"])
async def test_allowed_origin_gets_itself_back_with_credentials(browser: Browser, path):
    r = await browser.get(path, headers={"Origin": ALLOWED})
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in r.headers["Vary"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://localhost:4736.evil.example",
        "http://evil.localhost:4736",
        "http://localhost:47360",
        "http://localhost:473",
        "https://localhost:4736",
        "http://localhost",
        "http://localhost:4736/",
        "HTTP://LOCALHOST:4736",
        "*",
    ],
)
async def test_other_origins_get_no_cors_headers(browser: Browser, origin):
    for r in (
        await browser.get("/api/login", headers={"Origin": origin}),
        await browser.fetch("OPTIONS", "/api/login", headers=preflight_headers(origin)),
    ):
        for name in ACA_HEADERS:
            assert name not in r.headers, (origin, name)
    assert r.code == 403


@pytest.mark.gen_test
async def test_preflight_is_answered_without_a_session(browser: Browser, store: CountingStore):
    r = await browser.fetch("OPTIONS", "/api/login", headers=preflight_headers(ALLOWED))
    assert r.code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"GET", "POST"}
    allowed_headers = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-xsrf-token"} <= allowed_headers
    assert 0 < int(r.headers["Access-Control-Max-Age"]) <= 7200
    assert "Set-Cookie" not in r.headers
    assert store.calls == []


@pytest.mark.gen_test
async def test_plain_options_lists_the_allowed_methods(browser: Browser):
    r = await browser.fetch("OPTIONS", "/api/balance")
    assert r.code == 204
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "OPTIONS"}


@pytest.mark.gen_test
async def test_error_responses_carry_cors_headers_too(make_browser):
    b = make_browser(origin=ALLOWED)
    r = await b.get("/api/balance", send_origin=True)
    assert r.code == 401
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    r = await b.post("/api/login", {"email": "max@gmail.com", "password": "no"})
    assert r.code == 401
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.gen_test
async def test_reference_client_flow_from_the_dev_server_origin(make_browser):
    # The reference Angular client: absolute URLs, credentials, Origin http://localhost:4736, no XSRF header.
    b = make_browser(origin=ALLOWED)
    assert body_json(await b.get("/api/login", send_origin=True)) == {"loggedIn": False}
    r = await b.post("/api/login", MAX)
    assert r.code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert body_json(await b.get("/api/balance", send_origin=True)) == {"balance": 53762}
    assert (await b.post("/api/logout", {})).code == 200
    assert body_json(await b.get("/api/login", send_origin=True)) == {"loggedIn": False}


# CSRF -------------------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:4736.evil.example"])
@pytest.mark.parametrize("path", ["/api/login", "/api/logout"])
async def test_cross_site_posts_are_refused(make_browser, store: CountingStore, origin, path):
    victim = make_browser()
    await victim.login()
    victim.origin = origin
    r = await victim.post(path, MAX)
    assert r.code == 403
    assert "errorMessage" in body_json(r)
    victim.origin = victim.base_url
    assert body_json(await victim.get("/api/login")) == {"loggedIn": True}


@pytest.mark.gen_test
async def test_same_origin_post_works_with_either_host_name(http_client, base_url):
    for host in ("localhost", "127.0.0.1"):
        url = base_url.replace("127.0.0.1", host).replace("localhost", host)
        b = Browser(http_client, url)
        assert (await b.login()).code == 200, host


@pytest.mark.gen_test
async def test_no_origin_needs_a_valid_xsrf_token(make_browser):
    b = make_browser(origin=None)
    # No token at all.
    r = await b.post("/api/login", MAX)
    assert r.code == 403
    assert body_json(r) == {"errorMessage": "Missing or invalid XSRF token."}
    # A GET hands out the token cookie (readable by script); echoing it in the header works.
    await b.get("/api/login")
    morsel = b.last_set_cookies["XSRF-TOKEN"]
    assert not morsel["httponly"] and morsel["path"] == "/"
    token = b.cookies["XSRF-TOKEN"]
    r = await b.post("/api/login", MAX, headers={"X-XSRF-TOKEN": token})
    assert r.code == 200
    # Login rotated the token: the old one is bound to the old (no) session.
    new_token = b.cookies["XSRF-TOKEN"]
    assert new_token != token
    r = await b.post("/api/logout", {}, headers={"X-XSRF-TOKEN": token})
    assert r.code == 403
    r = await b.post("/api/logout", {}, headers={"X-XSRF-TOKEN": new_token})
    assert r.code == 200
    assert b.cookies["XSRF-TOKEN"] != new_token  # rotated at logout as well


@pytest.mark.gen_test
async def test_xsrf_header_must_match_the_cookie_and_be_ours(make_browser, app):
    b = make_browser(origin=None)
    await b.get("/api/login")
    token = b.cookies["XSRF-TOKEN"]
    other = app.sessions.xsrf_token(None)
    forged = "A" * 24 + "." + "B" * 43
    cases = [
        ({"X-XSRF-TOKEN": other}, token),  # valid, but not the cookie
        ({"X-XSRF-TOKEN": forged}, forged),  # matches, but not signed by us
        ({"X-XSRF-TOKEN": ""}, token),
        ({}, token),
    ]
    for headers, cookie in cases:
        b.cookies["XSRF-TOKEN"] = cookie
        r = await b.post("/api/login", MAX, headers=headers)
        assert r.code == 403, headers


@pytest.mark.gen_test
async def test_xsrf_cookie_creates_no_session(make_browser, store: CountingStore):
    b = make_browser()
    await b.get("/api/login")
    assert "XSRF-TOKEN" in b.cookies
    assert "sid" not in b.cookies
    assert len(store) == 0


@pytest.mark.gen_test
async def test_a_token_from_another_browsers_session_is_refused(make_browser):
    attacker, victim = make_browser(origin=None), make_browser(origin=None)
    await attacker.get("/api/login")
    await victim.get("/api")  # victim has a session
    # Even if the attacker could plant his token as the victim's cookie, it is bound elsewhere.
    victim.cookies["XSRF-TOKEN"] = attacker.cookies["XSRF-TOKEN"]
    r = await victim.post("/api/logout", {}, headers={"X-XSRF-TOKEN": attacker.cookies["XSRF-TOKEN"]})
    assert r.code == 403


@pytest.mark.gen_test
@pytest.mark.parametrize("planted_first", [True, False])
async def test_a_planted_duplicate_xsrf_cookie_neither_denies_nor_helps(make_browser, app, planted_first):
    # A sibling subdomain can set XSRF-TOKEN for the parent domain: the request then carries two.
    victim, attacker = make_browser(origin=None), make_browser(origin=None)
    await victim.get("/api")  # the victim has a session and its token
    await attacker.get("/api")
    real, planted = victim.cookies.pop("XSRF-TOKEN"), attacker.cookies["XSRF-TOKEN"]
    sid = victim.cookies.pop("sid")
    pair = [f"XSRF-TOKEN={planted}", f"XSRF-TOKEN={real}"]
    if not planted_first:
        pair.reverse()
    cookie = "; ".join([f"sid={sid}", *pair])

    async def post(token: str) -> int:
        headers = {"Cookie": cookie, "X-XSRF-TOKEN": token, "Content-Type": "application/json"}
        r = await victim.client.fetch(
            victim.base_url + "/api", method="POST", body="{}", headers=headers, raise_error=False
        )
        return int(r.code)

    # /api has no POST: a request that passes the CSRF check gets 405, one refused by it 403.
    assert await post(real) == 405
    assert await post(planted) == 403  # the attacker's own token is bound to another session
    # And a GET carrying both keeps the valid token rather than handing out a new one each time.
    r = await victim.client.fetch(victim.base_url + "/api/login", headers={"Cookie": cookie})
    assert "XSRF-TOKEN" not in "".join(r.headers.get_list("Set-Cookie"))


# Bodies -----------------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "",
    ],
)
async def test_login_refuses_other_content_types(browser: Browser, content_type):
    r = await browser.fetch("POST", "/api/login", body=json.dumps(MAX), headers={"Content-Type": content_type})
    assert r.code == 415
    assert body_json(r) == {"errorMessage": "Content-Type must be application/json."}


@pytest.mark.gen_test
async def test_json_content_type_with_charset_is_accepted(browser: Browser):
    r = await browser.fetch(
        "POST", "/api/login", body=json.dumps(MAX), headers={"Content-Type": "Application/JSON; charset=UTF-8"}
    )
    assert r.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        "{",
        "",
        "[]",
        '"max"',
        "null",
        '{"email": "max@gmail.com"}',
        '{"email": 1, "password": "1234"}',
        '{"email": "max@gmail.com", "password": ["1234"]}',
        "\xff\xfe",
        "[" * 10000 + "]" * 10000,
        '{"email": "' + "a" * 5000 + '", "password": "1234"}',
    ],
)
async def test_malformed_or_wrongly_shaped_login_bodies_get_400(browser: Browser, body):
    r = await browser.fetch(
        "POST", "/api/login", body=body.encode("latin-1"), headers={"Content-Type": "application/json"}
    )
    assert r.code == 400
    assert isinstance(body_json(r)["errorMessage"], str)


@pytest.mark.gen_test
async def test_oversized_bodies_get_413_json(browser: Browser, app, store: CountingStore):
    limit = app.config.max_body_size
    big = json.dumps({"email": "max@gmail.com", "password": "x" * limit})
    r = await browser.fetch("POST", "/api/login", body=big, headers={"Content-Type": "application/json"})
    assert r.code == 413
    assert body_json(r) == {"errorMessage": f"Request body larger than {limit} bytes."}
    # Far larger than the limit (and than Tornado's own), still a JSON 413.
    r = await browser.fetch(
        "POST", "/api/login", body=b"x" * (8 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert r.code == 413
    assert "errorMessage" in body_json(r)
    assert len(store) == 0


@pytest.mark.gen_test
async def test_a_body_just_under_the_limit_is_read(browser: Browser, app):
    limit = app.config.max_body_size
    body = json.dumps({"email": "max@gmail.com", "password": "1234", "pad": ""})
    body = body[:-2] + " " * (limit - len(body)) + '"}'
    assert len(body) == limit
    r = await browser.fetch("POST", "/api/login", body=body, headers={"Content-Type": "application/json"})
    assert r.code == 200


# Errors and headers -----------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/api/nope", 404),
        ("GET", "/api/logout", 405),
        ("DELETE", "/api/login", 405),
        ("PUT", "/api/balance", 405),
        ("POST", "/livez", 405),
        ("PROPFIND", "/api", 405),
    ],
)
async def test_errors_are_json(browser: Browser, method, path, status):
    r = await browser.fetch(method, path, body=b"" if method in ("POST", "PUT", "DELETE", "PROPFIND") else None)
    assert r.code == status
    assert r.headers["Content-Type"].startswith("application/json")
    assert set(body_json(r)) == {"errorMessage"}
    if status == 405 and method != "PROPFIND":
        assert "Allow" in r.headers


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api", "/api/login", "/api/balance", "/livez", "/nope"])
async def test_security_headers_on_every_response(browser: Browser, path):
    r = await browser.get(path)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in r.headers or "/" not in r.headers["Server"]
    # Date is there and current (RFC 9110 asks an origin server with a clock to send it).
    sent = email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp()
    assert abs(sent - time.time()) < 5 and r.headers["Date"].endswith(" GMT")


@pytest.mark.gen_test
async def test_session_responses_are_not_cached(browser: Browser):
    refused = await browser.get("/api/balance")  # an error answer too
    assert refused.code == 401
    for r in (
        refused,
        await browser.get("/api"),
        await browser.get("/api/login"),
        await browser.login(),
        await browser.get("/api/balance"),
    ):
        assert r.headers["Cache-Control"] == "no-store"
        assert "Etag" not in r.headers


@pytest.mark.parametrize(
    ("origin", "normalised"),
    [
        ("HTTP://Example.COM:80", "http://example.com"),
        ("https://example.com:443", "https://example.com"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("https://example.com:80", "https://example.com:80"),
        ("http://[::1]:80", "http://[::1]"),
    ],
)
def test_origins_compare_without_their_default_port(origin, normalised):
    from handlers.cors import normalise_origin

    assert normalise_origin(origin) == normalised


@pytest.mark.gen_test
async def test_a_host_header_with_the_default_port_is_still_our_own_origin(browser: Browser):
    # Behind a proxy on port 80 the Host header may carry ":80" while the browser's Origin omits it.
    browser.origin = "http://localhost"
    r = await browser.post("/api/login", MAX, headers={"Host": "localhost:80"})
    assert r.code == 200
    browser.origin = "http://localhost:81"
    r = await browser.post("/api/login", MAX, headers={"Host": "localhost:80"})
    assert r.code == 403
