"""JSON in and out: the errors a client sees (`ApiError`, ``{"errorMessage": ...}``) and request
bodies parsed as JSON under the media-type, size and Unicode rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from tornado.web import HTTPError

STATUS_MESSAGES = {
    400: "Bad request.",
    401: "You must be logged in.",
    403: "Forbidden.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
    415: "Unsupported media type.",
    500: "Internal server error.",
    503: "Service temporarily unavailable.",
}
STORE_RETRY_AFTER = "2"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
JSON = json.JSONEncoder(separators=(",", ":"))


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only dicts with str keys, lists, tuples, str, int, bool and None.

    Exact types: a subclass (an IntEnum, say) may encode differently in the two encoders.
    """
    kind = type(value)
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    return kind is str or kind is int or kind is bool or value is None


def encode_json(value: Any) -> bytes:
    """``value`` as compact JSON, byte for byte what ``JSON.encode`` writes (UTF-8).

    The standard encoder builds its C encoder afresh on every call, several microseconds for a
    body of a few bytes; orjson writes the same bytes for plain values with ASCII text (its
    floats, non-ASCII text, DEL and integers past 64 bits differ or fail), so it writes those and
    the standard encoder everything else, raising as it always did.
    """
    try:
        if _plain(value):
            encoded = orjson.dumps(value)
            if encoded.isascii() and b"\x7f" not in encoded:
                return encoded
    except (TypeError, RecursionError):  # past 64 bits, too deep, or circular
        pass
    return JSON.encode(value).encode("utf-8")


class ApiError(HTTPError):
    """An error with a message for the client, sent as ``{"errorMessage": message}``."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code)
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The body of every error response."""
    return encode_json({"errorMessage": message})


def store_unavailable() -> ApiError:
    """The 503 every handler answers while the session store is out."""
    return ApiError(503, "Session store unavailable, please retry shortly.", {"Retry-After": STORE_RETRY_AFTER})


def not_logged_in() -> ApiError:
    """The 401 an anonymous request gets where a user is required."""
    return ApiError(401, STATUS_MESSAGES[401])


def body_too_large(limit: int) -> ApiError:
    """The 413 for a body over ``limit`` bytes, whether declared or streamed."""
    return ApiError(413, f"Request body larger than {limit} bytes.")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased media type and parameters."""
    media_type, *rest = value.split(";")
    params = {}
    for item in rest:
        name, _, param = item.partition("=")
        params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


# A \uD800-\uDFFF escape: JSON text may spell a lone surrogate that way, and Python's parser
# returns it in a str that no UTF-8 encoder (a password hash, a log line, orjson) accepts later.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed JSON value (keys included) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _not_json(name: str) -> Any:
    # NaN, Infinity and -Infinity: Python's parser takes them, JSON (RFC 8259) does not.
    raise ValueError(f"{name} is not JSON")


def parse_json_body(body: bytes, content_type: str) -> Any:
    """``body`` parsed as JSON: 415 for another media type or charset, 400 if malformed."""
    media_type, params = parse_media_type(content_type)
    charset = params.get("charset", "utf-8").lower()
    if media_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise ApiError(415, "Content-Type must be application/json.")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "Malformed JSON body.") from None
    if _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(value):
        raise ApiError(400, "Malformed JSON body: a string is not valid Unicode (a lone surrogate).")
    return value
