"""CORS: which origins are this server's own or allowed, and the headers each answer carries.

The allowlist is exact-match (``Settings.cors_origins``). An allowed ``Origin`` gets itself back
with credentials allowed, on error responses too; a preflight is answered before any session is
touched; a preflight from any other origin is refused without an ``Access-Control-Allow-*`` header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers.headers import request_header
from handlers.json_api import ApiError

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from settings import Settings

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalise_origin(origin: str) -> str:
    """Lower-case, without the scheme's default port: http://Host:80 and http://host compare equal."""
    origin = origin.lower()
    scheme = origin.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    if default and origin.endswith(default):
        return origin[: -len(default)]
    return origin


def own_origin(handler: RequestHandler) -> str:
    """This server's origin as the browser sees it (the forwarded scheme behind a proxy)."""
    return normalise_origin(f"{handler.request.protocol}://{handler.request.host}")


def add_cors_headers(handler: RequestHandler, config: Settings) -> None:
    """Let an allowed origin read this answer (every answer, errors included)."""
    origin = request_header(handler.request.headers, "Origin")
    if origin is not None and origin in config.cors_origins:
        handler.set_header("Access-Control-Allow-Origin", origin)
        handler.set_header("Access-Control-Allow-Credentials", "true")


def answer_options(handler: RequestHandler, config: Settings, methods: list[str]) -> None:
    """Answer a CORS preflight (204 with what is allowed) or a plain OPTIONS (204 with Allow)."""
    listed = ", ".join(methods)
    origin = request_header(handler.request.headers, "Origin")
    if origin is None:
        handler.set_header("Allow", f"{listed}, OPTIONS")
    elif origin not in config.cors_origins:
        raise ApiError(403, "Origin not allowed.")
    else:
        handler.set_header("Access-Control-Allow-Methods", listed)
        handler.set_header("Access-Control-Allow-Headers", f"Content-Type, {config.xsrf_header_name}")
        handler.set_header("Access-Control-Max-Age", str(config.cors_max_age))
    handler.set_status(204)
