"""The budgets' settings: read from their environment variables, refused when not positive."""

from __future__ import annotations

import pytest

from settings import SettingsError, load_settings
from settings.loader import ENV_VARIABLES
from tests.conftest import test_secret
from tests.services import ROOT

BUDGET_VARIABLES = {
    "SESSION_ANONYMOUS_IDLE_TIMEOUT": "anonymous_idle_timeout",
    "NEW_SESSIONS_PER_ADDRESS": "new_sessions_per_address",
    "NEW_SESSIONS_WINDOW": "new_sessions_window",
    "LOGIN_PAIR_BUDGET": "login_pair_budget",
    "LOGIN_PAIR_WINDOW": "login_pair_window",
    "LOGIN_ADDRESS_BUDGET": "login_address_budget",
    "LOGIN_ADDRESS_WINDOW": "login_address_window",
    "LOGIN_ACCOUNT_BUDGET": "login_account_budget",
    "LOGIN_ACCOUNT_WINDOW": "login_account_window",
    "LOGIN_DEVICE_BUDGET": "login_device_budget",
}


def test_every_budget_and_window_has_a_documented_default_and_an_env_variable():
    dev = load_settings("dev", environ={})
    assert (dev.login_pair_budget, dev.login_pair_window) == (10, 900)
    assert (dev.login_address_budget, dev.login_address_window) == (100, 900)
    assert (dev.login_account_budget, dev.login_account_window) == (100, 3600)
    assert (dev.new_sessions_per_address, dev.new_sessions_window, dev.anonymous_idle_timeout) == (600, 60, 300)
    assert dev.password_queue_size == 16
    environ = {name: str(7 + i) for i, name in enumerate(BUDGET_VARIABLES)}
    loaded = load_settings("dev", environ=environ)
    for name, field in BUDGET_VARIABLES.items():
        assert ENV_VARIABLES[name] == field
        assert getattr(loaded, field) == int(environ[name])
    settings_doc = (ROOT / "docs" / "SETTINGS.md").read_text(encoding="utf-8")  # the README's full table
    assert all(f"`{name}`" in settings_doc for name in BUDGET_VARIABLES)


@pytest.mark.parametrize("name", sorted(BUDGET_VARIABLES))
def test_a_budget_or_window_that_is_not_positive_is_refused_by_name(name):
    with pytest.raises(SettingsError) as refused:
        load_settings("dev", environ={name: "0"}, session_secrets=(test_secret(),))
    assert any(name in problem for problem in refused.value.problems)


def test_a_negative_queue_is_refused():
    with pytest.raises(SettingsError, match="password_queue_size"):
        load_settings("dev", environ={}, password_queue_size=-1)
