"""Record authentication for stores that others can write to (memcached, Redis).

memcached has no authentication by default and is a classic SSRF target: whoever can write a key
could otherwise make any session anyone's. So a shared store keeps each record behind a MAC::

    m1:<43 characters of unpadded base64url HMAC-SHA256>:<the record's JSON>

The MAC covers the storage key as well as the JSON, so a record cannot be copied from one
session's key to another's either. Keys are derived from the server's session secrets, newest
first: the newest seals, every one opens, and a record opened with an older key is reported so it
can be sealed again under the newest. Records are authenticated, not encrypted: whoever can read
the store can read session data.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from typing import NamedTuple

_PREFIX = b"m1:"
_MAC_LENGTH = 43  # unpadded base64url of 32 bytes
_HEADER_LENGTH = len(_PREFIX) + _MAC_LENGTH + 1


def record_keys(secrets: Sequence[str]) -> list[bytes]:
    """The record MAC keys for the server's session secrets (newest first), one per secret.

    Derived with their own label, so a record MAC never doubles as a cookie signature or an XSRF
    token made from the same secret.
    """
    return [hmac.digest(secret.encode("utf-8"), b"store-record-mac", "sha256") for secret in secrets]


class Opened(NamedTuple):
    """An authenticated record's JSON, and whether it was sealed with a key older than the newest."""

    payload: bytes
    stale_key: bool


class RecordSeal:
    """Seals records under the newest key and opens records sealed under any of ``keys``."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a record seal needs at least one key")
        self._keys = [bytes(key) for key in keys]

    @staticmethod
    def _mac(key: bytes, storage_key: str, payload: bytes) -> bytes:
        # The storage key and the JSON, separated by a byte neither contains.
        digest = hmac.digest(key, storage_key.encode("ascii") + b"\n" + payload, "sha256")
        return base64.urlsafe_b64encode(digest)[:_MAC_LENGTH]

    def seal(self, storage_key: str, payload: bytes) -> bytes:
        """``payload`` with a MAC, under the newest key, bound to ``storage_key``."""
        return _PREFIX + self._mac(self._keys[0], storage_key, payload) + b":" + payload

    def open(self, storage_key: str, value: bytes) -> Opened | None:
        """The payload of a value sealed by us for ``storage_key``; None for anything else."""
        if len(value) < _HEADER_LENGTH or not value.startswith(_PREFIX) or value[_HEADER_LENGTH - 1] != ord(":"):
            return None
        mac = value[len(_PREFIX) : _HEADER_LENGTH - 1]
        payload = value[_HEADER_LENGTH:]
        for position, key in enumerate(self._keys):
            if hmac.compare_digest(mac, self._mac(key, storage_key, payload)):
                return Opened(payload, position > 0)
        return None
