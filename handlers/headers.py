"""Reading a request's headers on the hot path."""

from __future__ import annotations

from tornado.httputil import HTTPHeaders


def request_header(headers: HTTPHeaders, name: str) -> str | None:
    """The value of header ``name`` in ``headers``, or None: ``headers.get(name)``, cheaper.

    ``HTTPHeaders.get`` answers for a missing header by raising a KeyError inside the mapping and
    catching it, the costliest part of a lookup, and most requests lack most of the headers
    looked for on every request (``Origin``, ``Content-Length``, ``If-None-Match``). Asking
    whether the header is there first raises nothing.
    """
    return headers[name] if name in headers else None  # noqa: SIM401 (get is what this avoids)
