"""Record authentication for stores that others can write to (memcached, Redis).

memcached has no authentication by default and is a classic SSRF target: whoever can write a key
could otherwise make any session anyone's. So a shared store keeps each record behind a MAC::

    m1:<64 hex digits of MAC>:<the record's JSON>

The MAC is keyed BLAKE2b-256, a MAC by design (its keyed mode is a PRF, so no HMAC construction
is needed around it). Counted with callgrind, it costs a third of what HMAC-SHA256 costs from
Python (9k instructions against 28k: the one-shot OpenSSL call looks its algorithm up every time).

The MAC covers the storage key as well as the JSON, so a record cannot be copied from one
session's key to another's either. Keys are derived from the server's session secrets, newest
first: the newest seals, every one opens, and a record opened with an older key is reported so it
can be sealed again under the newest. Records are authenticated, not encrypted: whoever can read
the store can read session data.

A browser reads the same record many times between writes, so each storage key's last value
sealed or opened under the newest key is remembered (small values only, a bounded number): the
same bytes again are authentic without computing the MAC again.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from stores.base import Loaded, Record, dump_record, parse_record

_PREFIX = b"m1:"
_PERSON = b"session-record"  # BLAKE2's personalisation: these MACs serve nothing else
_MAC_LENGTH = 64  # hex digits of 32 bytes
_HEADER_LENGTH = len(_PREFIX) + _MAC_LENGTH + 1
# Values remembered as authentic: up to this many storage keys, each value up to this many bytes
# (about 25 MB at most, however an attacker shapes the records).
REMEMBERED_VALUES = 20_000
REMEMBERED_VALUE_SIZE = 1024


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
        # BLAKE2b states keyed once: copying one is cheaper than keying a new one per MAC.
        self._keyed = [hashlib.blake2b(key=bytes(key), digest_size=32, person=_PERSON) for key in keys]
        # storage key -> its last value known to be authentic (sealed or opened under the newest key)
        self._authentic: dict[str, bytes] = {}

    @staticmethod
    def _mac(keyed: Any, storage_key: str, payload: bytes) -> bytes:
        mac = keyed.copy()
        # The storage key, then the JSON, separated by a byte neither contains.
        mac.update(b"%s\n%s" % (storage_key.encode("ascii"), payload))
        return mac.hexdigest().encode("ascii")  # type: ignore[no-any-return]

    def _remember(self, storage_key: str, value: bytes) -> None:
        if len(value) > REMEMBERED_VALUE_SIZE:
            self._authentic.pop(storage_key, None)
            return
        if len(self._authentic) >= REMEMBERED_VALUES and storage_key not in self._authentic:
            # Drop the oldest tenth at once, so this is rare and cheap. (pop: a worker thread
            # retrying a compare-and-swap may be dropping the same entries.)
            for old in list(itertools.islice(iter(self._authentic), REMEMBERED_VALUES // 10)):
                self._authentic.pop(old, None)
        self._authentic[storage_key] = value

    def seal(self, storage_key: str, payload: bytes) -> bytes:
        """``payload`` with a MAC, under the newest key, bound to ``storage_key``."""
        value = b"%s%s:%s" % (_PREFIX, self._mac(self._keyed[0], storage_key, payload), payload)
        self._remember(storage_key, value)
        return value

    def open(self, storage_key: str, value: bytes) -> Opened | None:
        """The payload of a value sealed by us for ``storage_key``; None for anything else."""
        if self._authentic.get(storage_key) == value:
            return Opened(value[_HEADER_LENGTH:], False)
        if len(value) < _HEADER_LENGTH or not value.startswith(_PREFIX) or value[_HEADER_LENGTH - 1] != ord(":"):
            return None
        mac = value[len(_PREFIX) : _HEADER_LENGTH - 1]
        payload = value[_HEADER_LENGTH:]
        for position, keyed in enumerate(self._keyed):
            if hmac.compare_digest(mac, self._mac(keyed, storage_key, payload)):
                if position == 0:
                    self._remember(storage_key, value)
                return Opened(payload, position > 0)
        return None


class SealedRecords:
    """Records as a shared store keeps them: compact JSON sealed under the newest key, and read
    back only if authentic, within the size limit and shaped like a record."""

    def __init__(self, keys: Sequence[bytes], max_record_size: int, store_name: str) -> None:
        self.seal = RecordSeal(keys)
        self.max_record_size = max_record_size
        # The longest value a record within the limit is sealed into.
        self.max_value_size = _HEADER_LENGTH + max_record_size
        self.store_name = store_name
        self._log = logging.getLogger(f"stores.{store_name}")

    def encode(self, storage_key: str, record: Record) -> bytes:
        """``record`` sealed for ``storage_key``; `StoreValueError` if not JSON or too large."""
        return self.seal.seal(storage_key, dump_record(record, self.max_record_size))

    def decode(self, storage_key: str, value: bytes | None, version: Any = None) -> Loaded | None:
        """The record in ``value`` with ``version`` beside it, or None for anything we did not write."""
        if value is None:
            return None
        if len(value) > self.max_value_size:
            # Never ours (a sealed record is never this long): no MAC computed over megabytes.
            self._log.warning(
                "%s value over the size limit; read as no session", self.store_name, extra={"event": "store.forged"}
            )
            return None
        opened = self.seal.open(storage_key, value)
        if opened is None:
            # Not written by a server holding our secrets (or corrupted): never a session. A
            # warning, not an error: it is what someone with write access to the store sees.
            self._log.warning(
                "%s value failed authentication; read as no session",
                self.store_name,
                extra={"event": "store.forged"},
            )
            return None
        record = parse_record(opened.payload)
        return None if record is None else Loaded(record, version, opened.stale_key)
