"""Login throttling through HTTP: budgets per (account, address), per address and per account.

Addresses are real: each attacker is a client bound to its own loopback address (127.0.0.0/8),
so the server sees it as ``remote_ip``. The fake clock ends windows.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from handlers.app import SessionApplication
from handlers.throttle import client_block
from settings import Settings
from stores.memory import MemoryStore
from stores.users import UserDirectory
from tests.conftest import MAX, Browser, FakeClock, body_json, serve

WRONG = {"email": "max@gmail.com", "password": "wrong"}
BUDGETS = {
    "login_pair_budget": 3,
    "login_pair_window": 600,
    "login_address_budget": 8,
    "login_address_window": 900,
    "login_account_budget": 7,
    "login_account_window": 1200,
}


@pytest.fixture
def throttled(http_server: Any, config: Settings, store: MemoryStore, users: UserDirectory, clock: FakeClock):
    return serve(http_server, SessionApplication(config.replace(**BUDGETS), store, users, clock=clock))


async def attempt(
    http_client: AsyncHTTPClient, base_url: str, credentials: dict[str, str], address: str = "127.0.0.1"
) -> HTTPResponse:
    """One login POST from ``address``, without cookies (as a guessing script sends it)."""
    return await http_client.fetch(
        base_url + "/api/login",
        method="POST",
        body=json.dumps(credentials),
        headers={"Content-Type": "application/json", "Origin": base_url},
        network_interface=address,
        raise_error=False,
    )


def assert_throttled(response: HTTPResponse, window: int) -> None:
    assert response.code == 429
    assert body_json(response) == {"errorMessage": "Too many login attempts, please retry later."}
    assert response.headers["Retry-After"] == str(window)


@pytest.mark.gen_test
async def test_a_user_who_mistypes_a_few_times_is_not_slowed(throttled, browser: Browser):
    for _ in range(BUDGETS["login_pair_budget"] - 1):
        assert (await browser.post("/api/login", WRONG)).code == 401
    assert (await browser.login()).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_past_the_pair_budget_every_attempt_is_429_before_hashing(
    throttled, http_client, base_url, users: UserDirectory
):
    for _ in range(BUDGETS["login_pair_budget"]):
        assert (await attempt(http_client, base_url, WRONG)).code == 401
    hashed = users.hashes_run
    # Even the right password: the budget is spent, and nothing is hashed any more.
    for credentials in (WRONG, MAX, WRONG):
        assert_throttled(await attempt(http_client, base_url, credentials), BUDGETS["login_pair_window"])
    assert users.hashes_run == hashed


@pytest.mark.gen_test(timeout=60)
async def test_an_unknown_email_is_throttled_exactly_like_a_real_one(throttled, http_client, base_url):
    answers = {}
    for email, address in (("max@gmail.com", "127.0.0.4"), ("ghost@example.com", "127.0.0.5")):
        credentials = {"email": email, "password": "wrong"}
        answers[email] = [
            (r.code, r.headers.get("Retry-After"), r.body)
            for r in [await attempt(http_client, base_url, credentials, address) for _ in range(5)]
        ]
    assert answers["max@gmail.com"] == answers["ghost@example.com"]
    assert [code for code, _, _ in answers["ghost@example.com"]] == [401, 401, 401, 429, 429]


@pytest.mark.gen_test(timeout=60)
async def test_the_window_ends_and_the_account_is_usable_again(throttled, http_client, base_url, clock: FakeClock):
    for _ in range(BUDGETS["login_pair_budget"] + 1):
        await attempt(http_client, base_url, WRONG)
    assert (await attempt(http_client, base_url, MAX)).code == 429
    clock.advance(BUDGETS["login_pair_window"] - 1)
    assert (await attempt(http_client, base_url, MAX)).code == 429
    clock.advance(1)
    assert (await attempt(http_client, base_url, MAX)).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_email_case_and_spaces_do_not_buy_more_guesses(throttled, http_client, base_url):
    variants = ["max@gmail.com", "MAX@gmail.com", " max@GMAIL.com", "Max@Gmail.Com "]
    codes = [(await attempt(http_client, base_url, {"email": e, "password": "x"})).code for e in variants]
    assert codes == [401, 401, 401, 429]


@pytest.mark.gen_test(timeout=60)
async def test_an_attacker_elsewhere_does_not_lock_the_owner_out(throttled, http_client, base_url, browser: Browser):
    # One attacker address hammering the owner's account spends only its own pair budget.
    for _ in range(3 * BUDGETS["login_pair_budget"]):
        await attempt(http_client, base_url, WRONG, "127.0.0.2")
    assert (await attempt(http_client, base_url, WRONG, "127.0.0.2")).code == 429
    assert (await browser.login()).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_many_addresses_spend_the_account_budget_until_its_window_ends(
    throttled, http_client, base_url, clock: FakeClock, users: UserDirectory
):
    # The trade the README states: the account budget, across addresses, stops a distributed
    # attack, and while it is spent the owner cannot log in from an address of their own either.
    codes = []
    for i in range(2, 6):
        for _ in range(2):
            codes.append((await attempt(http_client, base_url, WRONG, f"127.0.0.{i}")).code)
    assert codes == [401] * BUDGETS["login_account_budget"] + [429]
    hashed = users.hashes_run
    assert_throttled(await attempt(http_client, base_url, MAX, "127.0.0.9"), BUDGETS["login_account_window"])
    assert users.hashes_run == hashed
    # Other accounts are untouched.
    assert (
        await attempt(http_client, base_url, {"email": "lily@gmail.com", "password": "1235"}, "127.0.0.9")
    ).code == 200
    clock.advance(BUDGETS["login_account_window"])
    assert (await attempt(http_client, base_url, MAX, "127.0.0.9")).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_one_address_trying_many_accounts_is_stopped_by_its_address_budget(throttled, http_client, base_url):
    codes = [
        (await attempt(http_client, base_url, {"email": f"user{i}@example.com", "password": "x"})).code
        for i in range(BUDGETS["login_address_budget"] + 2)
    ]
    assert codes == [401] * BUDGETS["login_address_budget"] + [429, 429]
    # The address budget covers any account, real or not; another address is not affected.
    assert_throttled(await attempt(http_client, base_url, MAX), BUDGETS["login_address_window"])
    assert (await attempt(http_client, base_url, MAX, "127.0.0.3")).code == 200


@pytest.mark.gen_test
async def test_throttled_answers_are_logged_once_per_window(throttled, http_client, base_url, caplog):
    for _ in range(BUDGETS["login_pair_budget"] + 4):
        await attempt(http_client, base_url, WRONG)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "login.throttled"]
    assert len(lines) == 1
    assert "pair budget" in lines[0].getMessage()
    assert "max@gmail.com" not in lines[0].getMessage()


def test_an_ipv6_client_is_budgeted_by_its_64_not_by_each_address():
    # Any address of one /64 is one client; an IPv4 address (mapped or not) is itself.
    assert client_block("2001:db8:1:2:aaaa::1") == client_block("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_block("2001:db8:1:3::1") != client_block("2001:db8:1:2::1")
    assert client_block("::ffff:192.0.2.7") == client_block("192.0.2.7") == "192.0.2.7"
