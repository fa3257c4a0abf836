"""What the demo client is told, outside the browser: the files deploy/render_client.py writes for
a page served apart from its API, the shipped files, and the dev server's own config.js."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from handlers.app import SessionApplication
from handlers.json_api import STATUS_MESSAGES
from settings import Settings
from stores.users import DEMO_USERS_FILE
from tests.conftest import serve
from tests.services import ROOT

sys.path.insert(0, str(ROOT / "deploy"))
from render_client import api_origin, render


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://localhost:3000/", "http://localhost:3000"),
        ("HTTPS://API.Example.COM:443", "https://api.example.com"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("https://api.example.com:08443", "https://api.example.com:8443"),
    ],
)
def test_the_api_origin_is_written_as_browsers_spell_it(given, written):
    assert api_origin(given) == written


@pytest.mark.parametrize(
    "given",
    [
        "",
        "localhost:3000",
        "ftp://example.com",
        "javascript:alert(1)",
        "http://example.com/api",
        "http://example.com?x",
        "http://example.com#x",
        "http://user@example.com",
        "http://example.com:0",
        "http://example.com:65536",
        "http://example.com https:",
        "http://example.com; connect-src *",
        "http://example.com'",
        "'self'",
        "*",
        "http://*.example.com",
        "http://ex ample.com",
    ],
)
def test_the_renderer_refuses_anything_but_an_origin(given, tmp_path):
    with pytest.raises(ValueError):
        render(api=given, out=tmp_path / "client")
    assert not (tmp_path / "client").exists()


def test_the_renderer_writes_config_and_policy_for_one_origin(tmp_path):
    assert render(api="http://LOCALHOST:3000/", out=tmp_path) == "http://localhost:3000"
    page = (tmp_path / "index.html").read_text()
    assert "content=\"default-src 'none';" in page and " connect-src http://localhost:3000; " in page
    assert "connect-src 'self'" not in page
    config = (tmp_path / "config.js").read_text()
    assert 'window.SESSION_DEMO_CONFIG = {"api": "http://localhost:3000", "demoUser": null};' in config
    shipped = {p.name for p in (ROOT / "static").iterdir()}
    assert {p.name for p in tmp_path.iterdir()} == shipped
    assert (tmp_path / "app.js").read_bytes() == (ROOT / "static" / "app.js").read_bytes()


def test_the_renderer_leaves_the_shipped_files_alone():
    before = {p.name: p.read_bytes() for p in (ROOT / "static").iterdir()}
    with pytest.raises(ValueError, match="static/"):
        render(api="http://localhost:3000", out=ROOT / "static")
    assert {p.name: p.read_bytes() for p in (ROOT / "static").iterdir()} == before


def test_the_shipped_files_call_their_own_origin_and_prefill_nothing():
    config = (ROOT / "static" / "config.js").read_text()
    assert 'window.SESSION_DEMO_CONFIG = { api: "", demoUser: null };' in config
    for name in ("index.html", "app.js", "config.js"):
        text = (ROOT / "static" / name).read_text()
        assert "max@gmail.com" not in text and "1234" not in text, name


@pytest.mark.gen_test
@pytest.mark.parametrize("own_users_file", [False, True])
async def test_the_dev_server_prefills_only_with_the_demo_users(
    http_server, base_url, app: SessionApplication, config: Settings, own_users_file: bool
):
    users_file = str(DEMO_USERS_FILE) if own_users_file else None
    serve(
        http_server,
        SessionApplication(config.replace(static_path="static", users_file=users_file), app.store, app.users),
    )
    # Nothing in the request (query, Referer, Origin) changes what the page is told.
    response = await AsyncHTTPClient().fetch(
        base_url + "/config.js?api=http://evil.example",
        headers={"Referer": "http://evil.example/", "Origin": "http://evil.example"},
    )
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.headers["Cache-Control"] == "no-cache"
    demo_user = None if own_users_file else {"email": "max@gmail.com", "password": "1234"}
    body = response.body.decode()
    assert body == f"window.SESSION_DEMO_CONFIG = {json.dumps({'api': '', 'demoUser': demo_user})};\n"


@pytest.mark.gen_test
async def test_the_static_route_answers_a_body_with_405_without_reading_it(
    http_server, http_port, app: SessionApplication, config: Settings
):
    serve(http_server, SessionApplication(config.replace(static_path="static"), app.store, app.users))
    # Ten megabytes declared and none sent: the answer comes without the body ever being read.
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), timeout=10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 405")


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path", "status"), [("DELETE", "/index.html", 405), ("GET", "/nope.html", 404)])
async def test_the_static_route_s_errors_are_the_api_s(
    http_server, base_url, app: SessionApplication, config: Settings, method, path, status
):
    serve(http_server, SessionApplication(config.replace(static_path="static"), app.store, app.users))
    response = await AsyncHTTPClient().fetch(
        base_url + path, method=method, raise_error=False, allow_nonstandard_methods=True
    )
    assert response.code == status
    assert json.loads(response.body) == {"errorMessage": STATUS_MESSAGES[status]}
    assert response.headers.get("Allow") == ("GET, HEAD" if status == 405 else None)
