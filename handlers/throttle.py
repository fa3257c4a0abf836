"""Login throttling: how many login attempts an address, an account and the pair of them may make.

Every attempt, right or wrong, is counted before its password is hashed, in the session store's
counters (`SessionStore.count`), so every process behind the same store shares the counts. Three
budgets, each over a fixed window that starts at its first attempt:

- per (account, address) pair: tight, for one attacker guessing one account;
- per address, across accounts: looser, for one host trying many accounts (credential stuffing);
- per account, across addresses: loose, for many hosts guessing one account. It is loose on
  purpose: past it the account's owner cannot log in either, from anywhere new, until the window
  ends; a single attacker address spends only its pair budget on the account, so locking the
  owner out takes many addresses.

The account is the normalised email, whether or not such an account exists, so a 429 says
nothing about which accounts exist. Counters are checked in an order that keeps what a client can
make the store hold bounded: the address first, so one address creates at most its budget of pair
and account counters per window. The pair and the account are counted only once a hashing thread
is the attempt's (`check_account_budgets`): an attempt refused because too many logins are being
checked (503) costs the user nothing. An attempt from a known device (`handlers.devices`) is
counted against that device cookie's own budget instead of the account's; past it, the cookie
spares it no more until the window ends (OWASP's device-cookie lockout), so whoever
holds a copy of one gets a few guesses an hour, not the account budget's freedom.

Counter names are keyed digests (HMAC under a key from the session secrets): whoever can write
to a shared store cannot compute which counter is whose account.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from settings import Settings
from stores.base import SessionStore
from stores.users import normalise_email

TOO_MANY_ATTEMPTS = "Too many login attempts, please retry later."
# An IPv6 client is usually given a whole /64 and can pick any address in it: budgets per address
# count the /64, or one host would have 2^64 budgets.
IPV6_CLIENT_PREFIX = 64


def client_block(address: str) -> str:
    """What a per-address budget counts for ``address``: itself (IPv4), or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Refused:
    """An attempt past a budget: the client may try again after ``retry_after`` seconds.

    ``first`` is true for the first attempt refused in the window: the one worth a log line.
    """

    budget: str
    retry_after: int
    first: bool


def counter_name(settings: Settings, *parts: str) -> str:
    """A counter's name for the store: a keyed digest of ``parts`` (the kind first)."""
    key = hmac.digest(settings.session_secrets[0].encode("utf-8"), b"budget-counter", "sha256")
    # The kind leads and no part holds a NUL: names of two kinds or pairs never meet.
    return hmac.digest(key, "\0".join(parts).encode("utf-8", "surrogatepass"), "sha256").hex()


async def _spend(store: SessionStore, budgets: tuple[tuple[str, str, int, int], ...]) -> Refused | None:
    for name, key, budget, window in budgets:
        count = await store.count(key, window)
        if count > budget:
            # The window's end is not known here, only that it is at most this far off.
            return Refused(name, window, first=count == budget + 1)
    return None


async def check_address_budget(store: SessionStore, settings: Settings, address: str) -> Refused | None:
    """Count one login attempt from ``address``; a `Refused` past the address budget.

    Raises `StoreUnavailable` when a count cannot be made: the caller refuses the login.
    """
    key = counter_name(settings, "login-address", client_block(address))
    return await _spend(store, (("address", key, settings.login_address_budget, settings.login_address_window),))


async def check_account_budgets(
    store: SessionStore, settings: Settings, address: str, email: str, *, device: str | None
) -> Refused | None:
    """Count one attempt on ``email``'s account from ``address``: the pair, then the account,
    or, for an attempt with a known ``device`` cookie (its value) within its own budget, that
    device's budget in the account's place. A `Refused` past the pair or the account budget.

    Raises `StoreUnavailable` when a count cannot be made: the caller refuses the login.
    """
    account = normalise_email(email)
    pair = counter_name(settings, "login-pair", client_block(address), account)
    refused = await _spend(store, (("pair", pair, settings.login_pair_budget, settings.login_pair_window),))
    if refused is not None:
        return refused
    if device is not None:
        name = counter_name(settings, "login-device", account, device)
        if await store.count(name, settings.login_account_window) <= settings.login_device_budget:
            return None
    across = counter_name(settings, "login-account", account)
    return await _spend(store, (("account", across, settings.login_account_budget, settings.login_account_window),))
