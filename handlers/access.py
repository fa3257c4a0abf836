"""Logging: one access line per request and session life-cycle events, as text or JSON lines.

Session ids never reach a log line: lines carry ``session``, a short keyed hash of the id (see
`SessionManager.log_id`), which is enough to follow one session through the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from tornado.web import RequestHandler

if TYPE_CHECKING:
    from handlers.app import SessionApplication

access_log = logging.getLogger("access")

# Fields a log call may pass in ``extra`` that the JSON formatter writes out.
FIELDS = ("event", "method", "path", "status", "duration_ms", "client", "scheme", "session")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every log line to standard error, as ``text`` or ``json`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado's own access lines are replaced by ours.
    logging.getLogger("tornado.access").disabled = True


def log_request(handler: RequestHandler) -> None:
    """The access line: method, path (no query), status, duration, real client, session hash."""
    app: SessionApplication = handler.application  # type: ignore[assignment]
    request = handler.request
    status = handler.get_status()
    session = getattr(handler, "_session", None)
    session_hash = app.sessions.log_id(session.stored_id) if session is not None else "-"
    fields = {
        "event": "access",
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(request.request_time() * 1000, 2),
        "client": request.remote_ip,
        "scheme": request.protocol,
        "session": session_hash,
    }
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    access_log.log(
        level,
        "%s %s %d %.2fms client=%s session=%s",
        request.method,
        request.path,
        status,
        fields["duration_ms"],
        request.remote_ip,
        session_hash,
        extra=fields,
    )
