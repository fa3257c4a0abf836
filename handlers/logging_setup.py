"""Logging set-up for the whole process: every line to standard error as text or JSON lines, the
access line each request writes, and session life-cycle events.

Session ids never reach a log line: lines carry ``session``, a short keyed hash of the id (see
`SessionManager.log_id`), which is enough to follow one session through the log.

Access lines are the one log line every request writes, and the logging module's per-record work
(a LogRecord, the caller lookup, a formatted time, a lock, a write and a flush) cost about a tenth
of a bare request here. So once `configure_logging` has set the output up, access lines are
formatted directly, in the same shape, and written together at the end of the loop iteration;
any other log line first writes out the access lines before it, so the order holds.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from tornado.web import RequestHandler

if TYPE_CHECKING:
    from handlers.app import SessionApplication

access_log = logging.getLogger("access")

# Fields a log call may pass in ``extra`` that the JSON formatter writes out.
FIELDS = ("event", "method", "path", "status", "duration_ms", "client", "scheme", "session")


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_time(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created % 1) * 1000):03d}Z"


def json_line(created: float, level: int, logger: str, message: str, fields: dict[str, Any]) -> str:
    """One log line as a JSON object: time, level, logger, message, then ``fields``."""
    line = {
        "time": json_time(created),
        "level": logging.getLevelName(level).lower(),
        "logger": logger,
        "message": message,
        **fields,
    }
    return json.dumps(line, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {field: getattr(record, field) for field in FIELDS if hasattr(record, field)}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelno, record.name, record.getMessage(), fields)


# The levels access lines are written at, by name (logging.getLevelName's answer, without a call).
_LEVEL_NAMES = {level: logging.getLevelName(level) for level in (logging.INFO, logging.WARNING, logging.ERROR)}


class AccessLines:
    """Access lines in the configured format, written once per loop iteration."""

    def __init__(self, stream: TextIO, log_format: str) -> None:
        self.stream = stream
        self.json = log_format == "json"
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""

    def _text_time(self, now: float) -> str:
        # As logging.Formatter's asctime: local time, then ",mmm"; the seconds part kept per second.
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def add(self, level: int, message: str, fields: dict[str, Any] | None = None) -> None:
        """Queue a line; ``fields`` are written in the JSON format only."""
        now = time.time()
        if self.json:
            line = json_line(now, level, "access", message, fields or {}) + "\n"
        else:
            name = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
            line = f"{self._text_time(now)} {name} access: {message}\n"
        self._pending.append(line)
        if not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop running: nothing to wait for
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # as logging does: a log line that cannot be written never fails a request


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler: writes out pending access lines first, so lines stay in order."""

    def __init__(self, stream: TextIO, access: AccessLines) -> None:
        super().__init__(stream)
        self.access = access

    def emit(self, record: logging.LogRecord) -> None:
        self.access.flush()
        super().emit(record)


# Set by configure_logging; until then (in tests, or an embedding app) access lines go through
# the logging module like any other.
_access_lines: AccessLines | None = None


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every log line to standard error, as ``text`` or ``json`` lines."""
    global _access_lines
    if _access_lines is not None:
        _access_lines.flush()
    _access_lines = AccessLines(sys.stderr, log_format)
    atexit.register(_access_lines.flush)
    handler = LogHandler(sys.stderr, _access_lines)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado's own access lines are replaced by ours.
    logging.getLogger("tornado.access").disabled = True


# Characters of a request's path and method an access line keeps.
LOGGED_PATH_LENGTH = 256
LOGGED_METHOD_LENGTH = 20


def loggable(text: str, limit: int) -> str:
    """Client-chosen ``text`` as a log line may hold it: anything not printable escaped, and a
    backslash too, so an escape cannot be forged (a NEL or a no-break space in a path would
    otherwise let a client write what reads as a line of its own in a text log); then at most
    ``limit`` characters of that, with the original length when cut."""
    shown = text[:limit]
    if not shown.isprintable() or "\\" in shown:
        shown = shown.encode("unicode_escape").decode("ascii")
    if len(text) > limit or len(shown) > limit:
        return f"{shown[:limit]}...({len(text)} characters)"
    return shown


def log_request(handler: RequestHandler) -> None:
    """The access line: method, path (no query), status, duration, real client, session hash."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    app: SessionApplication = handler.application  # type: ignore[assignment]
    request = handler.request
    session = getattr(handler, "_session", None)
    session_hash = app.sessions.log_id(session.stored_id) if session is not None else "-"
    # A client chooses the path and the method: its log line stays short and one line.
    path = request.path
    if len(path) > LOGGED_PATH_LENGTH or not path.isprintable() or "\\" in path:
        path = loggable(path, LOGGED_PATH_LENGTH)
    method = request.method or ""
    if len(method) > LOGGED_METHOD_LENGTH or not method.isprintable() or "\\" in method:
        method = loggable(method, LOGGED_METHOD_LENGTH)
    duration = request.request_time() * 1000
    # Formatted to two places directly: what the rounded duration formats to, without round().
    message = f"{method} {path} {status} {duration:.2f}ms client={request.remote_ip} session={session_hash}"
    if _access_lines is not None and not _access_lines.json:
        _access_lines.add(level, message)  # a text line has no fields beside its message
        return
    fields = {
        "event": "access",
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration, 2),
        "client": request.remote_ip,
        "scheme": request.protocol,
        "session": session_hash,
    }
    if _access_lines is not None:
        _access_lines.add(level, message, fields)
    else:
        access_log.log(level, "%s", message, extra=fields)
