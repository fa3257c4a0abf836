"""What a running server writes to its log: access lines and session events, as text or JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from connections import LogThrottle, ThrottledEvents
from handlers.logging_setup import TEXT_FORMAT, AccessLines, LogHandler
from handlers.session_manager import CLIENT_CAUSED_EVENTS
from tests.conftest import FakeClock, test_secret
from tests.services import AppProcess

TEXT_ACCESS = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>INFO|WARNING|ERROR) access: "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) \d+\.\d\dms client=127\.0\.0\.1 "
    r"session=(?P<session>-|[0-9a-f]{12})$"
)
LOGIN = {"email": "max@gmail.com", "password": "1234"}


def visit(app: AppProcess) -> None:
    """A 404, a new session's page view, then a login (a regenerated id).

    Starting the process already asked for /livez: a sessionless request.
    """
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(app.base_url + "/nowhere", timeout=5)
    urllib.request.urlopen(app.base_url + "/api", timeout=5).read()
    login = urllib.request.Request(
        app.base_url + "/api/login",
        data=json.dumps(LOGIN).encode(),
        headers={"Content-Type": "application/json", "Origin": app.base_url},
        method="POST",
    )
    urllib.request.urlopen(login, timeout=10).read()


@pytest.fixture(params=["text", "json"])
def app(request) -> Iterator[AppProcess]:
    with AppProcess({"SESSION_SECRETS": test_secret(), "LOG_FORMAT": request.param}, args=("--env=dev",)) as app:
        yield app


def test_access_lines_in_order_with_levels_and_hashed_sessions(app: AppProcess):
    visit(app)
    log = app.wait_for_output("/api/login")
    if app.env["LOG_FORMAT"] == "json":
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        for record in records:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        access = [r for r in records if r.get("event") == "access"]
        assert all(r["logger"] == "access" and r["client"] == "127.0.0.1" for r in access)
        seen = [(r["level"], r["method"], r["path"], r["status"], r["session"]) for r in access]
        kinds = [r.get("event") for r in records]
    else:
        matches = [TEXT_ACCESS.match(line) for line in log.splitlines() if " access: " in line]
        assert all(matches), log
        seen = [(m["level"].lower(), m["method"], m["path"], int(m["status"]), m["session"]) for m in matches if m]
        kinds = [
            "access" if " access: " in line else "session.regenerated" if "regenerated" in line else None
            for line in log.splitlines()
        ]
    assert ("info", "GET", "/livez", 200, "-") in seen
    seen = [s for s in seen if s[2] != "/livez"]
    assert [s[:4] for s in seen] == [
        ("warning", "GET", "/nowhere", 404),
        ("info", "GET", "/api", 200),
        ("info", "POST", "/api/login", 200),
    ]
    assert seen[0][4] == "-" and re.fullmatch(r"[0-9a-f]{12}", seen[1][4])
    # The login's event line comes before its access line, and after the lines of earlier requests.
    order = [k for k in kinds if k in ("access", "session.regenerated")]
    assert order[-3:] == ["access", "session.regenerated", "access"]


@pytest.mark.gen_test
async def test_access_lines_wait_for_the_loop_iteration_but_never_for_a_later_line():
    stream = io.StringIO()
    lines = AccessLines(stream, "text")
    handler = LogHandler(stream, lines)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    lines.add(logging.INFO, "GET /api 200 1.00ms client=127.0.0.1 session=-", {})
    lines.add(logging.WARNING, "GET /x 404 1.00ms client=127.0.0.1 session=-", {})
    assert stream.getvalue() == ""  # written together, once the iteration ends
    handler.emit(logging.LogRecord("handlers.session", logging.INFO, __file__, 1, "session regenerated", None, None))
    written = stream.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in written] == [
        "INFO access: GET /api 200 1.00ms client=127.0.0.1 session=-",
        "WARNING access: GET /x 404 1.00ms client=127.0.0.1 session=-",
        "INFO handlers.session: session regenerated",
    ]
    lines.add(logging.INFO, "GET /livez 200 1.00ms client=127.0.0.1 session=-", {})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = stream.getvalue().splitlines()[3:]
    assert len(later) == 1 and later[0].endswith(" INFO access: GET /livez 200 1.00ms client=127.0.0.1 session=-")


def test_access_lines_outside_an_event_loop_are_written_at_once():
    stream = io.StringIO()
    lines = AccessLines(stream, "json")
    lines.add(logging.ERROR, "GET /x 500 1.00ms client=127.0.0.1 session=-", {"event": "access", "status": 500})
    record = json.loads(stream.getvalue())
    assert (record["level"], record["logger"], record["status"]) == ("error", "access", 500)


def test_lines_a_client_can_cause_at_will_pass_once_a_second_and_life_cycle_lines_always():
    clock = FakeClock()
    throttled = ThrottledEvents(CLIENT_CAUSED_EVENTS, LogThrottle(clock=clock))

    def line(event: str, lineno: int) -> logging.LogRecord:  # each kind of line from a line of code
        record = logging.LogRecord("sessions", logging.INFO, __file__, lineno, "a line", (), None)
        record.event = event
        return record

    for lineno, event in enumerate(CLIENT_CAUSED_EVENTS):
        assert [throttled.filter(line(event, lineno)) for _ in range(3)] == [True, False, False], event
    assert all(throttled.filter(line("session.created", 99)) for _ in range(3))
    clock.advance(1)
    record = line(CLIENT_CAUSED_EVENTS[0], 0)
    assert throttled.filter(record) and record.getMessage() == "a line (2 more such since the last line)"
