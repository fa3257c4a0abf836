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
and account counters per window.
"""

from __future__ import annotations

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


async def check_login_attempt(store: SessionStore, settings: Settings, address: str, email: str) -> Refused | None:
    """Count one login attempt from ``address`` for ``email``; a `Refused` past any budget.

    Raises `StoreUnavailable` when a count cannot be made: the caller refuses the login.
    """
    account = normalise_email(email)
    address = client_block(address)
    # The kind leads each key and an address holds no NUL: keys of two kinds or pairs never meet.
    budgets = (
        ("address", f"login\0address\0{address}", settings.login_address_budget, settings.login_address_window),
        ("pair", f"login\0pair\0{address}\0{account}", settings.login_pair_budget, settings.login_pair_window),
        ("account", f"login\0account\0{account}", settings.login_account_budget, settings.login_account_window),
    )
    for name, key, budget, window in budgets:
        count = await store.count(key, window)
        if count > budget:
            # The window's end is not known here, only that it is at most this far off.
            return Refused(name, window, first=count == budget + 1)
    return None
