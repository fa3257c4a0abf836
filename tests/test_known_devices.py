"""Known devices: a flood against an account or against the hashing queue never locks the owner's
own browser out, and a login refused as busy costs the user none of their budget.

Attackers are clients bound to their own loopback addresses; hashing threads are held busy by a
gate where the order matters, so outcomes are decided by events, not timing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from handlers.app import SessionApplication
from handlers.devices import DeviceCookies
from handlers.json_handler import COOKIE_VALUES_CHECKED
from settings import Settings
from stores.memory import MemoryStore
from stores.users import DEMO_USERS_FILE, UserDirectory
from tests.conftest import LILY, MAX, Browser, FakeClock, body_json, serve
from tests.test_hashing_bounds import Gate, directory, until
from tests.test_login_throttle import attempt

WRONG = {"email": "max@gmail.com", "password": "wrong"}
BUDGETS = {"login_pair_budget": 3, "login_address_budget": 50, "login_account_budget": 7}


@pytest.fixture
def gate() -> Any:
    gate = Gate(1)
    yield gate
    gate.open()
    gate.executor.shutdown(wait=True)


def app_with(http_server: Any, config: Settings, store: MemoryStore, users: UserDirectory, clock: FakeClock):
    return serve(http_server, SessionApplication(config.replace(**BUDGETS), store, users, clock=clock))


@pytest.mark.gen_test(timeout=60)
async def test_an_account_locked_from_many_addresses_still_lets_the_owners_browser_in(
    http_server, http_client, base_url, config, store, users, clock, browser: Browser, make_browser
):
    app_with(http_server, config, store, users, clock)
    assert (await browser.login()).code == 200
    assert "device" in browser.cookies
    assert (await browser.post("/api/logout", {})).code == 200
    # Three addresses spend the account budget (3 + 3 + 1 wrong passwords, then refused).
    for n in range(1, 4):
        for _ in range(3):
            await attempt(http_client, base_url, WRONG, f"127.0.40.{n}")
    assert (await attempt(http_client, base_url, MAX, "127.0.40.9")).code == 429  # a new device: locked
    assert (await make_browser().login()).code == 429
    r = await browser.login()  # the owner's own browser, with its device cookie
    assert (r.code, body_json(r)["user"]["name"]) == (200, "Max Miller")
    # The cookie names one account: it does not open another locked account.
    for n in range(1, 4):
        for _ in range(3):
            await attempt(http_client, base_url, {**LILY, "password": "x"}, f"127.0.41.{n}")
    assert (await browser.login(LILY)).code == 429


@pytest.mark.parametrize("order", ["planted first", "planted last"])
@pytest.mark.gen_test(timeout=60)
async def test_a_planted_device_cookie_does_not_hide_the_owners(
    http_server, http_client, base_url, config, store, users, clock, browser: Browser, order
):
    # A sibling subdomain can add a cookie of the same name (no __Host- prefix outside prod); the
    # browser sends both. Whichever comes first, the owner's own device cookie still counts.
    app_with(http_server, config, store, users, clock)
    assert (await browser.login()).code == 200
    own = browser.cookies.pop("device")
    lily = users.credential("lily@gmail.com")
    assert lily is not None
    lily_device = DeviceCookies(config.session_secrets, 3600).issue("lily@gmail.com", lily, clock())
    # Junk, another account's genuine cookie, and a MAC's length of non-ASCII (once a 500).
    junk = [f"device=junk{i}" for i in range(5)]
    planted = [*junk, f"device={lily_device}", f"device={int(clock())}." + "\u00e9" * 32]
    values = [*planted, f"device={own}"] if order == "planted first" else [f"device={own}", *planted]
    assert (await browser.post("/api/logout", {})).code == 200
    for n in range(1, 4):
        for _ in range(3):
            await attempt(http_client, base_url, WRONG, f"127.0.42.{n}")
    cookie = "; ".join([*values, browser.cookie_header()])
    locked = await browser.post("/api/login", MAX, headers={"Cookie": "; ".join([*planted, browser.cookie_header()])})
    assert locked.code == 429
    r = await browser.post("/api/login", MAX, headers={"Cookie": cookie})
    assert (r.code, body_json(r)["user"]["name"]) == (200, "Max Miller")


@pytest.mark.gen_test(timeout=60)
async def test_a_device_cookie_is_bound_to_its_account_and_password_and_signed(clock: FakeClock, config: Settings):
    devices = DeviceCookies(config.session_secrets, 3600)
    password_hash = "the account's password hash"
    value = devices.issue("max@gmail.com", password_hash, clock())

    def known(value: str, account: str = "max@gmail.com", credential: str | None = password_hash) -> bool:
        return devices.known(value, account, credential, clock())

    assert known(value)
    assert not known(value, "lily@gmail.com")
    assert not known(value, credential="the hash of a new password")  # a password change revokes it
    assert not known(value, credential=None)  # no such account
    assert not known(value[:-1] + ("0" if value[-1] != "0" else "1"))
    issued, _, mac = value.partition(".")
    assert not known(f"{int(issued) + 1}.{mac}")
    # One spelling per value: a copy zero-padded or upper-cased would be another cookie, budget and all.
    for other_spelling in (f"0{value}", f"00{value}", f"{issued}.{mac.upper()}"):
        assert other_spelling != value and not known(other_spelling)
    assert not devices.known(value, "max@gmail.com", password_hash, clock() + 3601)  # too old
    assert not DeviceCookies(("another secret",), 3600).known(value, "max@gmail.com", password_hash, clock())
    rotated = DeviceCookies(("a newer secret", *config.session_secrets), 3600)
    assert rotated.known(value, "max@gmail.com", password_hash, clock())


@pytest.mark.gen_test(timeout=60)
async def test_logins_refused_as_busy_spend_no_budget_and_a_known_device_goes_first(
    http_server, config, store, clock, browser: Browser, make_browser, gate: Gate
):
    # The owner logged in once before: their browser holds a device cookie.
    users = directory(max_waiting=2)
    app_with(http_server, config, store, users, clock)
    assert (await browser.login()).code == 200
    users.close()

    # One hashing thread, held busy; a flood takes it and fills the queue of other logins.
    users = UserDirectory(json.loads(DEMO_USERS_FILE.read_text()), executor=gate.executor, max_waiting=2, threads=1)
    app_with(http_server, config, store, users, clock)
    guesses = [{"email": f"someone{i}@example.com", "password": "guess"} for i in range(3)]
    flood = [asyncio.ensure_future(make_browser().login(guess)) for guess in guesses]
    await until(lambda: users.waiting == 2)
    # A new device is refused as busy, more often than its pair budget allows wrong passwords...
    stranger = make_browser()
    for _ in range(BUDGETS["login_pair_budget"] + 2):
        r = await stranger.login(LILY)
        assert (r.code, r.headers["Retry-After"]) == (503, "1")
    # ... while the owner's known browser is queued ahead of the flood, not refused.
    owner = asyncio.ensure_future(browser.login())
    await until(lambda: users.waiting == 3)
    finished: list[str] = []
    owner.add_done_callback(lambda _: finished.append("owner"))
    for task in flood:
        task.add_done_callback(lambda _: finished.append("flood"))
    gate.open()
    assert (await owner).code == 200
    assert [r.code for r in await asyncio.gather(*flood)] == [401, 401, 401]
    # The thread went to the flood's first login before the owner came; then to the owner first.
    assert finished == ["flood", "owner", "flood", "flood"]
    # The busy refusals cost the stranger nothing: the pair budget is whole.
    assert (await stranger.login(LILY)).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_the_device_cookie_is_httponly_and_lasts_its_max_age(
    http_server, config, store, users, clock, browser: Browser
):
    app_with(http_server, config, store, users, clock)
    assert (await browser.login()).code == 200
    morsel = browser.last_set_cookies["device"]
    assert morsel["httponly"] and morsel["path"] == "/"
    assert morsel["max-age"] == str(config.device_cookie_max_age)
    assert "max@gmail.com" not in morsel.value


def test_counter_names_are_keyed_digests(config: Settings):
    from handlers.throttle import counter_name

    name = counter_name(config, "login-account", "max@gmail.com")
    assert "max@gmail.com" not in name and len(name) == 64
    assert name != counter_name(config.replace(session_secrets=("another secret",)), "login-account", "max@gmail.com")
    assert json.dumps(name)  # plain text for any store


@pytest.mark.gen_test(timeout=60)
async def test_an_accounts_own_device_cookie_cannot_fill_the_known_devices_queue(
    http_server, config, store, clock, make_browser, gate: Gate
):
    config = config.replace(login_pair_budget=100)
    owner, attacker = make_browser(), make_browser()
    users = directory(max_waiting=2)
    serve(http_server, SessionApplication(config, store, users, clock=clock))
    assert (await owner.login(MAX)).code == 200
    assert (await attacker.login(LILY)).code == 200  # the attacker's own account: a known device
    users.close()

    users = UserDirectory(json.loads(DEMO_USERS_FILE.read_text()), executor=gate.executor, max_waiting=2, threads=1)
    serve(http_server, SessionApplication(config, store, users, clock=clock))
    wrong = {**LILY, "password": "wrong"}
    # Copies of the attacker's device cookie: one check takes the thread, one waits ahead of the
    # others; any more for that account wait with everyone else's.
    flood = []
    for _ in range(4):
        copy = make_browser()
        copy.cookies = {"device": attacker.cookies["device"]}
        flood.append(asyncio.ensure_future(copy.login(wrong)))
    await until(lambda: users.waiting == 3)
    mine = asyncio.ensure_future(owner.login(MAX))  # the owner's known browser: still goes first
    await until(lambda: users.waiting == 4 or mine.done())
    assert not mine.done()
    finished: list[str] = []
    mine.add_done_callback(lambda _: finished.append("owner"))
    for task in flood:
        task.add_done_callback(lambda _: finished.append("flood"))
    gate.open()
    assert (await mine).code == 200
    assert [r.code for r in await asyncio.gather(*flood)] == [401] * 4
    # The thread's first check, the account's one place ahead, then the owner, then the rest.
    assert finished == ["flood", "flood", "owner", "flood", "flood"]


@pytest.mark.gen_test(timeout=60)
async def test_a_copied_device_cookie_is_worth_its_own_budget_then_nothing(
    http_server, http_client, base_url, config, store, users, clock, browser: Browser
):
    # Whoever holds a copy of the owner's device cookie (a shared browser, a former password
    # holder) guesses from many addresses: its attempts count against the cookie's own budget,
    # and past it the cookie is no pass through the account budget any more.
    serve(http_server, SessionApplication(config.replace(**BUDGETS, login_device_budget=4), store, users, clock=clock))
    assert (await browser.login()).code == 200
    device = browser.cookies["device"]
    for n in range(1, 4):  # the account budget spent from elsewhere
        for _ in range(3):
            await attempt(http_client, base_url, WRONG, f"127.0.43.{n}")

    async def with_device(credentials: dict[str, str], address: str) -> int:
        response = await http_client.fetch(
            base_url + "/api/login",
            method="POST",
            body=json.dumps(credentials),
            headers={"Content-Type": "application/json", "Origin": base_url, "Cookie": f"device={device}"},
            network_interface=address,
            raise_error=False,
        )
        code: int = response.code
        return code

    codes = [await with_device(WRONG, f"127.0.44.{n}") for n in (1, 1, 1, 2, 2, 2)]
    assert codes == [401, 401, 401, 401, 429, 429]
    assert await with_device(MAX, "127.0.44.3") == 429  # the cookie spent: the locked account
    clock.advance(config.login_account_window + 1)
    assert await with_device(MAX, "127.0.44.3") == 200  # a new window


@pytest.mark.gen_test(timeout=60)
async def test_a_header_repeating_the_device_cookie_costs_a_bounded_number_of_macs(
    http_server, config, store, users, clock, browser: Browser
):
    # 1,000 well-formed values (each would cost a MAC per secret): only the first few are checked.
    app = app_with(http_server, config, store, users, clock)
    macs = []
    real_mac = app.devices._mac

    def counted_mac(*args: Any) -> str:
        macs.append(args)
        return str(real_mac(*args))

    app.devices._mac = counted_mac
    values = "; ".join(f"device={int(clock())}.{'0' * 32}" for _ in range(1000))
    r = await browser.post("/api/login", WRONG, headers={"Cookie": values})
    assert r.code == 401
    assert 1 <= len(macs) <= COOKIE_VALUES_CHECKED * len(config.session_secrets) < 1000, len(macs)
