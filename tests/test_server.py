"""server.py's own HTTP server: what it changes about Tornado's connections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from tornado.web import Application, RequestHandler

from connections import CappedHTTPServer
from server import GC_YOUNG_THRESHOLD, READ_CHUNK_SIZE, settle_garbage_collector
from tests.services import ROOT, free_port


@contextlib.contextmanager
def serving(handler: type[RequestHandler]) -> Iterator[int]:
    """server.py's HTTP server for ``handler`` at ``/`` on a free loopback port, stopped afterwards."""
    port = free_port()
    server = CappedHTTPServer(Application([(r"/", handler)]), chunk_size=READ_CHUNK_SIZE)
    server.listen(port, "127.0.0.1")
    try:
        yield port
    finally:
        server.stop()


def read_answer(replies: BinaryIO) -> bytes:
    """The body of the next answer in ``replies``, which must be a 200."""
    assert replies.readline().startswith(b"HTTP/1.1 200")
    length = 0
    while (line := replies.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return replies.read(length)


class SizeReport(RequestHandler):
    def post(self) -> None:
        stream = self.request.connection.stream  # type: ignore[union-attr]
        sizes = (stream.read_chunk_size, len(self.request.headers["X-Padding"]), len(self.request.body))
        self.write(" ".join(str(size) for size in sizes))


@pytest.mark.gen_test
async def test_reads_are_small_and_requests_larger_than_a_read_arrive_whole():
    with serving(SizeReport) as port:

        def two_large_requests_in_one_send() -> list[bytes]:
            requests = b""
            for header, body in ((20_000, 100_000), (5, 3)):
                requests += b"POST / HTTP/1.1\r\nHost: x\r\nX-Padding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
                    b"h" * header,
                    body,
                    b"b" * body,
                )
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as replies:
                sock.sendall(requests)
                answers = []
                for _ in range(2):
                    answers.append(read_answer(replies))
            return answers

        # A head and a body many reads long, and a second request behind them in the same bytes.
        answers = await asyncio.get_running_loop().run_in_executor(None, two_large_requests_in_one_send)
        assert answers == [b"%d 20000 100000" % READ_CHUNK_SIZE, b"%d 5 3" % READ_CHUNK_SIZE]
        assert READ_CHUNK_SIZE < 65536  # Tornado's default, allocated and zeroed for every read


class NodelayReport(RequestHandler):
    def get(self) -> None:
        stream = self.request.connection.stream  # type: ignore[union-attr]
        self.write(str(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


@pytest.mark.gen_test
async def test_client_connections_keep_tcp_nodelay_on_between_requests():
    # Tornado turns Nagle's algorithm back on once each response is sent; the server's own
    # streams keep it off for the connection's life, so the second request still sees it off.
    with serving(NodelayReport) as port:

        def two_requests_on_one_connection() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as replies:
                answers = []
                for _ in range(2):
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    answers.append(read_answer(replies))
            return answers

        answers = await asyncio.get_running_loop().run_in_executor(None, two_requests_on_one_connection)
        assert all(int(answer) != 0 for answer in answers), answers


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


def test_port_0_serves_on_a_free_port_and_says_which(tmp_path: Path):
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--env=test", "--port=0"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(r"serving env=test on http://127\.0\.0\.1:(\d+) ", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(found.group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as answer:
            assert json.loads(answer.read()) == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(20)
