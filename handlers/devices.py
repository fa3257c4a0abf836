"""Known devices: a browser that has logged in to an account before keeps logging in to it.

The account budget (see `handlers.throttle`) stops many addresses guessing one account, and so
would also stop its owner logging in from anywhere. OWASP's answer is a device cookie: after a
successful login the browser gets a signed, HttpOnly cookie naming (a keyed digest of) that
account. A login attempt for the account that carries it is counted against that cookie's own
budget (``login_device_budget`` an account window) in place of the account budget, and waits for
a hashing thread ahead of attempts without one: an attacker who floods the account or the
hashing queue from elsewhere never locks the owner's own browser out. Past its budget a cookie
no longer spares the account budget until the window ends (OWASP's device lockout): a copy of
it, taken from a shared browser, is worth a few guesses an hour; minting more takes the
password. (It still waits in the known devices' queue, one login per account at a time.)
The pair budget (account and address) applies to it throughout.

A value is ``<issued at>.<MAC>``: the MAC (HMAC-SHA256, truncated to 128 bits) covers the
account, its password's stored hash (a new password revokes every cookie issued before it:
someone who once knew the password keeps nothing) and the time, under a key derived from each
session secret (the newest signs, every one verifies); a value older than
``device_cookie_max_age`` no longer counts.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

_MAC_HEX = 32


class DeviceCookies:
    """Issues and checks device cookie values for the server's session secrets."""

    def __init__(self, secrets: Sequence[str], max_age: int) -> None:
        self._keys = [hmac.digest(s.encode("utf-8"), b"device-cookie", "sha256") for s in secrets]
        self.max_age = max_age

    @staticmethod
    def _mac(key: bytes, account: str, credential: str, issued_at: int) -> str:
        message = f"{issued_at}\0{account}\0{credential}".encode("utf-8", "surrogatepass")
        return hmac.digest(key, message, "sha256").hex()[:_MAC_HEX]

    def issue(self, account: str, credential: str, now: float) -> str:
        """A value naming ``account`` (normalised email) and its ``credential`` (its password's
        stored hash: a new password revokes every cookie issued before), issued at ``now``."""
        issued_at = int(now)
        return f"{issued_at}.{self._mac(self._keys[0], account, credential, issued_at)}"

    @staticmethod
    def well_formed(value: str | None) -> bool:
        """Whether ``value`` is spelled as `issue` spells a value (no HMAC computed): one spelling
        per value, so a copy cannot pass for several cookies (leading zeros), each with a budget."""
        # ASCII only: compare_digest refuses non-ASCII str (Tornado reads headers as latin-1).
        if not value or len(value) > 64 or not value.isascii():
            return False
        issued, _, mac = value.partition(".")
        # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
        if not issued.isdigit() or issued != str(int(issued)) or len(mac) != _MAC_HEX:
            return False
        return all(c in "0123456789abcdef" for c in mac)

    def known(self, value: str | None, account: str, credential: str | None, now: float) -> bool:
        """Whether ``value`` is a device cookie we issued for ``account`` while its password was
        the one ``credential`` hashes (None: no such account), and still within its age."""
        if value is None or credential is None or not self.well_formed(value):
            return False
        issued, _, mac = value.partition(".")
        issued_at = int(issued)
        if not 0 <= now - issued_at <= self.max_age:
            return False
        return any(hmac.compare_digest(mac, self._mac(key, account, credential, issued_at)) for key in self._keys)
