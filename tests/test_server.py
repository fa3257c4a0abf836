"""server.py's own HTTP server: what it changes about Tornado's connections."""

from __future__ import annotations

import asyncio
import gc
import http.client
import socket

import pytest
from tornado.web import Application, RequestHandler

from server import GC_YOUNG_THRESHOLD, SessionHTTPServer, settle_garbage_collector
from tests.services import free_port


class NoDelayReport(RequestHandler):
    def get(self) -> None:
        stream = self.request.connection.stream  # type: ignore[union-attr]
        self.write(str(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


@pytest.mark.gen_test
async def test_connections_keep_tcp_nodelay_for_every_request():
    port = free_port()
    server = SessionHTTPServer(Application([(r"/", NoDelayReport)]))
    server.listen(port, "127.0.0.1")
    try:

        def three_requests_on_one_connection() -> list[bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            answers = []
            for _ in range(3):
                connection.request("GET", "/")
                answers.append(connection.getresponse().read())
            connection.close()
            return answers

        # Nagle stays off throughout, not only while Tornado finishes a response.
        answers = await asyncio.get_running_loop().run_in_executor(None, three_requests_on_one_connection)
        assert answers == [b"1", b"1", b"1"]
    finally:
        server.stop()


def test_the_garbage_collector_is_settled_for_serving_and_still_collects():
    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 1000  # the modules and objects start-up made
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
