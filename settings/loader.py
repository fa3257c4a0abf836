"""Loading settings: environment module, then environment variables, then explicit overrides.

Validation collects every problem before refusing, so an operator fixes a configuration in one go.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

from settings.base import Settings
from stores import STORES, check_store_options

log = logging.getLogger("settings")

ENVIRONMENTS = ("dev", "prod", "test")
MIN_PROD_SECRET_BYTES = 32
SAMESITE_VALUES = ("Lax", "Strict", "None")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

# The documented environment variables, the setting each one fills, and how to read it.
ENV_VARIABLES: dict[str, str] = {
    "SESSION_SECRETS": "session_secrets",
    "SESSION_SECRETS_FILE": "session_secrets",
    "CORS_ORIGINS": "cors_origins",
    "HOST": "host",
    "PORT": "port",
    "USERS_FILE": "users_file",
    "SESSION_IDLE_TIMEOUT": "idle_timeout",
    "SESSION_ABSOLUTE_TIMEOUT": "absolute_timeout",
    "SESSION_STORE": "store",
    "LOG_FORMAT": "log_format",
    "DRAIN_TIMEOUT": "drain_timeout",
    "HEADER_TIMEOUT": "header_timeout",
    "BODY_TIMEOUT": "body_timeout",
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
# The variables that hold a whole number.
_INT_VARIABLES = (
    "PORT",
    "SESSION_IDLE_TIMEOUT",
    "SESSION_ABSOLUTE_TIMEOUT",
    "DRAIN_TIMEOUT",
    "HEADER_TIMEOUT",
    "BODY_TIMEOUT",
    "SESSION_ANONYMOUS_IDLE_TIMEOUT",
    "NEW_SESSIONS_PER_ADDRESS",
    "NEW_SESSIONS_WINDOW",
    "LOGIN_PAIR_BUDGET",
    "LOGIN_PAIR_WINDOW",
    "LOGIN_ADDRESS_BUDGET",
    "LOGIN_ADDRESS_WINDOW",
    "LOGIN_ACCOUNT_BUDGET",
    "LOGIN_ACCOUNT_WINDOW",
    "LOGIN_DEVICE_BUDGET",
)


class SettingsError(Exception):
    """A configuration the server refuses to start with. ``problems`` names every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _read_secrets_file(path: str, problems: list[str]) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            # Secrets are used exactly as written; only the line ending is not part of one.
            return tuple(line.rstrip("\r\n") for line in f if line.rstrip("\r\n"))
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
        problems.append(f"SESSION_SECRETS_FILE: cannot read {path!r}: {reason}")
        return ()


def _int_variable(name: str, value: str, problems: list[str]) -> int | None:
    try:
        return int(value)
    except ValueError:
        problems.append(f"{name}: expected a whole number, got {value!r}")
        return None


def _from_environ(environ: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if environ.get("SESSION_SECRETS") and environ.get("SESSION_SECRETS_FILE"):
        problems.append("SESSION_SECRETS and SESSION_SECRETS_FILE are both set: use one")
    if environ.get("SESSION_SECRETS"):
        # Comma-separated; each entry is the HMAC key exactly as written (no trimming).
        changes["session_secrets"] = tuple(s for s in environ["SESSION_SECRETS"].split(",") if s)
    elif environ.get("SESSION_SECRETS_FILE"):
        changes["session_secrets"] = _read_secrets_file(environ["SESSION_SECRETS_FILE"], problems)
    if "CORS_ORIGINS" in environ:
        changes["cors_origins"] = _split_list(environ["CORS_ORIGINS"])
    for name in ("HOST", "USERS_FILE", "SESSION_STORE", "LOG_FORMAT"):
        if environ.get(name):
            changes[ENV_VARIABLES[name]] = environ[name]
    for name in _INT_VARIABLES:
        if environ.get(name):
            number = _int_variable(name, environ[name], problems)
            if number is not None:
                changes[ENV_VARIABLES[name]] = number
    return changes


def store_variables(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Store options from the environment: ``<STORE>_<OPTION>`` (REDIS_URL) -> {store: {option: text}}.

    Settings know no store's options: the chosen store checks what it is given, and refuses an
    option it does not have (a misspelt variable is named, not ignored).
    """
    found: dict[str, dict[str, str]] = {}
    for store in STORES:
        prefix = f"{store.upper()}_"
        for name, value in environ.items():
            if name.startswith(prefix) and value:
                found.setdefault(store, {})[name[len(prefix) :].lower()] = value
    return found


def _merged_store_options(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Store options layer over layer, option by option (a later layer's value wins)."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for store, options in layer.items():
            merged.setdefault(store, {}).update(options)
    return merged


def key_version(secret: str) -> int:
    """A stable key version for a secret, derived from the secret itself.

    Deriving it (rather than numbering by position) keeps every issued cookie verifiable when a
    secret is prepended or the oldest one is dropped. The value reveals nothing usable: it is an
    HMAC of a constant under the secret, and an attacker holding a signed cookie could already
    test guesses against its signature.
    """
    digest = hmac.digest(secret.encode("utf-8"), b"key-version", "sha256")
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _validate(s: Settings, problems: list[str]) -> None:
    _validate_timeouts_and_budgets(s, problems)
    _validate_server(s, problems)
    _validate_cookies_and_secrets(s, problems)


def _validate_timeouts_and_budgets(s: Settings, problems: list[str]) -> None:
    if s.idle_timeout <= 0:
        problems.append("idle_timeout (SESSION_IDLE_TIMEOUT): must be positive")
    if s.absolute_timeout <= 0:
        problems.append("absolute_timeout (SESSION_ABSOLUTE_TIMEOUT): must be positive")
    if 0 < s.absolute_timeout < s.idle_timeout:
        problems.append(
            "idle_timeout (SESSION_IDLE_TIMEOUT): longer than absolute_timeout "
            "(SESSION_ABSOLUTE_TIMEOUT), so it would never apply"
        )
    if s.anonymous_idle_timeout <= 0:
        problems.append("anonymous_idle_timeout (SESSION_ANONYMOUS_IDLE_TIMEOUT): must be positive")
    for budget, window in (
        ("new_sessions_per_address", "new_sessions_window"),
        ("login_pair_budget", "login_pair_window"),
        ("login_address_budget", "login_address_window"),
        ("login_account_budget", "login_account_window"),
        ("login_device_budget", "login_account_window"),
    ):
        if getattr(s, budget) <= 0 or getattr(s, window) <= 0:
            problems.append(f"{budget} / {window} ({budget.upper()}, {window.upper()}): must be positive")
    if s.password_queue_size < 0:
        problems.append("password_queue_size: must not be negative")
    if s.touch_interval <= 0:
        problems.append("touch_interval: must be positive")


def _validate_server(s: Settings, problems: list[str]) -> None:
    if not 0 <= s.port <= 65535:
        problems.append(f"port (PORT): {s.port} is not a TCP port")
    if s.log_format not in ("text", "json"):
        problems.append(f"log_format (LOG_FORMAT): {s.log_format!r} is not text or json")
    if s.drain_timeout < 0:
        problems.append("drain_timeout (DRAIN_TIMEOUT): must not be negative")
    if s.header_timeout <= 0:
        problems.append("header_timeout (HEADER_TIMEOUT): must be positive")
    if s.body_timeout <= 0:
        problems.append("body_timeout (BODY_TIMEOUT): must be positive")
    if s.max_connections is not None and s.max_connections <= 0:
        problems.append("max_connections: must be positive (or None, to follow RLIMIT_NOFILE)")
    if s.store not in STORES:
        problems.append(f"store (SESSION_STORE): {s.store!r} is not one of {', '.join(STORES)}")
    else:
        problems.extend(check_store_options(s.store, s.store_options.get(s.store, {})))
    if s.session_max_size <= 0:
        problems.append("session_max_size: must be positive")
    if s.max_body_size <= 0:
        problems.append("max_body_size: must be positive")
    for origin in s.cors_origins:
        if origin in ("*", "null"):
            problems.append(f"cors_origins (CORS_ORIGINS): {origin!r} is never allowed with credentials")
        elif not _ORIGIN.match(origin):
            problems.append(f"cors_origins (CORS_ORIGINS): {origin!r} is not an origin (scheme://host[:port], no path)")
        elif (sent := _as_browsers_send(origin)) != origin:
            # The allowlist is compared exactly: this entry would never match, silently.
            problems.append(f"cors_origins (CORS_ORIGINS): browsers send {origin!r} as {sent!r}: write that")


def _as_browsers_send(origin: str) -> str:
    """An origin as a browser's Origin header spells it: lower case, no default port, no leading zeros."""
    scheme, _, rest = origin.lower().partition("://")
    host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    if not colon or not port.isdigit():
        return f"{scheme}://{rest}"
    port = str(int(port))
    default = {"http": "80", "https": "443"}[scheme]
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


def _validate_cookies_and_secrets(s: Settings, problems: list[str]) -> None:
    if s.cookie_samesite not in SAMESITE_VALUES:
        problems.append(f"cookie_samesite: {s.cookie_samesite!r} is not one of {', '.join(SAMESITE_VALUES)}")
    if s.cookie_samesite == "None" and not s.cookie_secure:
        problems.append("cookie_samesite: SameSite=None requires cookie_secure (browsers drop it otherwise)")
    for name in (s.cookie_name, s.xsrf_cookie_name, s.device_cookie_name):
        if not _COOKIE_NAME.match(name):
            problems.append(f"cookie name {name!r}: not a valid cookie name")
    for field, name in (("cookie_name", s.cookie_name), ("device_cookie_name", s.device_cookie_name)):
        if name.startswith("__Host-") and (not s.cookie_secure or s.cookie_domain):
            problems.append(f"{field}: the __Host- prefix needs cookie_secure and no cookie_domain")
    if s.device_cookie_max_age <= 0:
        problems.append("device_cookie_max_age: must be positive")
    if not s.session_secrets:
        problems.append("session_secrets (SESSION_SECRETS or SESSION_SECRETS_FILE): at least one secret is required")
    if len(set(s.session_secrets)) != len(s.session_secrets):
        problems.append("session_secrets (SESSION_SECRETS): the same secret is listed twice")
    elif len({key_version(x) for x in s.session_secrets}) != len(s.session_secrets):
        problems.append("session_secrets (SESSION_SECRETS): two secrets share a key version; replace one")


def _validate_prod(s: Settings, problems: list[str]) -> None:
    short = [i for i, x in enumerate(s.session_secrets) if len(x.encode("utf-8")) < MIN_PROD_SECRET_BYTES]
    if short:
        positions = ", ".join(str(i + 1) for i in short)
        problems.append(
            f"session_secrets (SESSION_SECRETS): secret(s) at position {positions} shorter than "
            f"{MIN_PROD_SECRET_BYTES} bytes"
        )
    if not s.cookie_secure:
        problems.append("cookie_secure: must be on in prod (the cookie would travel over plain HTTP)")
    if s.store == "memory":
        problems.append(
            "store (SESSION_STORE): the memory store is for development only (lost on restart, not shared between "
            "processes); use the memcached store (MEMCACHED_SERVERS) or the redis store (REDIS_URL)"
        )
    if not s.users_file:
        problems.append("users_file (USERS_FILE): prod needs its own users; the demo users are refused")
    if not _is_loopback(s.host):
        problems.append(
            f"host (HOST): {s.host!r} is not a loopback address; in prod the app listens on loopback "
            "behind nginx, which overwrites the forwarding headers the app trusts"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(
    env: str,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build and validate the settings for ``env``.

    Order: the environment module, then documented environment variables from ``environ``
    (``os.environ`` by default), then ``overrides`` (command-line flags, tests).
    Raises `SettingsError` naming every problem at once.
    """
    if env not in ENVIRONMENTS:
        raise SettingsError([f"env: {env!r} is not one of {', '.join(ENVIRONMENTS)}"])
    module = importlib.import_module(f"settings.{env}")
    base: Settings = module.SETTINGS
    problems: list[str] = []
    variables = os.environ if environ is None else environ
    changes = _from_environ(variables, problems)
    changes.update(overrides)
    changes["store_options"] = _merged_store_options(
        base.store_options, store_variables(variables), overrides.get("store_options", {})
    )
    try:
        result = base.replace(**changes)
    except TypeError as e:
        raise SettingsError([str(e)]) from None
    if not result.session_secrets and env in ("dev", "test") and not variables.get("SESSION_SECRETS_FILE"):
        # Convenience for a laptop: a random secret for this process only. Sessions do not
        # survive a restart; set SESSION_SECRETS to keep them.
        log.warning("no SESSION_SECRETS set: using a random secret; sessions end when the server stops")
        result = result.replace(session_secrets=(secrets.token_urlsafe(32),))
    _validate(result, problems)
    if env == "prod":
        _validate_prod(result, problems)
    if problems:
        raise SettingsError(problems)
    ignored = [
        f"{store.upper()}_{option.upper()}"
        for store, options in sorted(store_variables(variables).items())
        if store != result.store
        for option in sorted(options)
    ]
    if ignored:
        # Likely a store meant but not chosen (REDIS_URL without SESSION_STORE=redis, say).
        log.warning("%s set, but the store is %s (SESSION_STORE): ignored", ", ".join(ignored), result.store)
    return result
