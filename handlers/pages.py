"""Pages: the reference app's page counter (``GET /api``) and, in dev, the demo client's files."""

from __future__ import annotations

import json
from http.client import responses
from typing import Any

from tornado.web import HTTPError, StaticFileHandler, stream_request_body

from handlers.base import JsonHandler, SessionHandler
from handlers.json_api import JSON_CONTENT_TYPE, STATUS_MESSAGES, error_body
from handlers.json_handler import end_with_answer, input_unread

PAGE_VIEWS = "page_views"
# The first of the shipped demo users (settings/demo_users.json), as the README lists them.
DEMO_USER = {"email": "max@gmail.com", "password": "1234"}


class PageCounterHandler(SessionHandler):
    """Counts this browser's visits. An increment, so concurrent visits all count.

    Its only effect is on the session: it may run on this process's copy (one round trip to a
    shared store instead of two; see `SessionHandler`).
    """

    runs_on_copies = True

    async def get(self) -> None:
        session = await self.get_session()
        session.increment(PAGE_VIEWS)
        # Save first so the text shows the stored total, not this request's guess.
        await self.save_session()
        views = session[PAGE_VIEWS]
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        if views == 1:
            self.write("Welcome to this page for the first time!")
        else:
            self.write(f"You visited this page {views} times")


class DemoClientConfigHandler(JsonHandler):
    """The dev server's ``config.js`` for the demo client, in place of the shipped file.

    The page calls this server's own origin, and its login form is prefilled with the demo user
    while the server runs on the demo users (prod refuses them; there nginx serves the shipped
    file, which prefills nothing). Nothing in the request changes what is written.
    """

    def get(self) -> None:
        client = {"api": "", "demoUser": DEMO_USER if self.app.config.users_file is None else None}
        self.set_header("Content-Type", "text/javascript; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(f"window.SESSION_DEMO_CONFIG = {json.dumps(client)};\n")


@stream_request_body
class DemoClientHandler(StaticFileHandler):
    """Serves ``static/`` at ``/`` in dev (nginx does it in prod); errors in the API's JSON shape.

    Streamed, so a request body is never buffered: Tornado would otherwise read a whole body (up
    to its own 16 MiB cap) before answering that files take only GET and HEAD.
    """

    # Body bytes received (and dropped): see write_error.
    _body_size = 0

    def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD"):
            raise HTTPError(405)

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)  # counted, never kept: refused in prepare()

    def set_extra_headers(self, path: str) -> None:
        # A laptop edits these files: always revalidate.
        self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            self.set_header("Allow", "GET, HEAD")
        if input_unread(self.request, self._body_size):
            end_with_answer(self)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        message = STATUS_MESSAGES.get(status_code) or responses.get(status_code, "Unknown")
        self.finish(error_body(message))
