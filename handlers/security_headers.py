"""The headers every response carries, errors and static files included."""

from __future__ import annotations

from tornado.httputil import HTTPHeaders
from tornado.web import OutputTransform


class SecurityHeaders(OutputTransform):
    """Applied to every response: no version in Server, nosniff, no framing, same-origin referrers."""

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        if "Server" in headers:
            del headers["Server"]
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        return status_code, headers, chunk
