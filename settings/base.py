"""The settings record and the defaults every environment shares.

Each environment module (``dev``, ``prod``, ``test``) states only where it differs from these
defaults; ``settings.loader`` applies environment variables and validates the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MINUTE = 60
HOUR = 60 * MINUTE


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at start-up. Frozen: nothing changes it while it runs."""

    env: str = "dev"
    host: str = "127.0.0.1"
    port: int = 3000
    # Trust X-Real-IP / X-Forwarded-* headers. Only behind a proxy that overwrites them.
    xheaders: bool = False
    # On SIGTERM/SIGINT: stop accepting, then let requests in flight finish for up to this long.
    drain_timeout: float = 10.0
    # "text" or "json" (one JSON object per line).
    log_format: str = "text"

    # Slow clients. header_timeout (s) bounds the wait for a request's complete headers from the
    # moment the server starts waiting for them (the connection opened, or the previous response
    # went out on a kept-alive connection), so a silent or idle connection and headers trickled
    # a byte at a time end alike. body_timeout (s) bounds reading the whole body once the headers
    # are in. nginx's keep-alive to the app must stay shorter than header_timeout (deploy/nginx).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Open client connections per process; at the cap the process stops accepting until one
    # closes (the kernel's listen queue holds the rest). None: RLIMIT_NOFILE's soft limit less a
    # reserve for the store's connections, the listening socket and logs (server.connection_cap).
    max_connections: int | None = None

    # Signing secrets, newest first: the newest signs, every one verifies.
    session_secrets: tuple[str, ...] = ()
    cookie_name: str = "sid"
    cookie_secure: bool = False
    cookie_httponly: bool = True
    cookie_samesite: str = "Lax"
    cookie_domain: str | None = None
    # None: a browser-session cookie. A number: Max-Age in seconds.
    cookie_max_age: int | None = None
    # Longest cookie value accepted before any decoding is attempted.
    cookie_max_length: int = 512

    idle_timeout: int = 30 * MINUTE
    # Idle timeout of a session no one has logged in to (idle_timeout if that is shorter):
    # cookieless clients make one per request that writes, and each holds store memory this long.
    anonymous_idle_timeout: int = 5 * MINUTE
    # New anonymous sessions stored per client address per window; past it the request is still
    # answered, but its new session is not stored (as for a client without cookies).
    new_sessions_per_address: int = 600
    new_sessions_window: int = MINUTE
    absolute_timeout: int = 12 * HOUR
    # last_seen is written at most this often per session, so a read-only request is usually
    # just a read. The idle timeout is enforced to within this granularity (never later); for
    # each kind of session it is at most a quarter of that kind's idle timeout.
    touch_interval: int = 60

    # The session store, by name (stores.STORES: memory, memcached, redis), and the options of each
    # store by its name: store_options["redis"] = {"url": "redis://..."}. Only the chosen store's
    # options are read; the store checks them (its docstring and docs/STORES.md list them), and
    # each can also come from an environment variable <STORE>_<OPTION> (REDIS_URL).
    store: str = "memory"
    store_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    # Largest session record any store keeps (JSON bytes); larger writes are refused (413).
    session_max_size: int = 64 * 1024

    # Exact origins (scheme://host[:port]) allowed to call the API with credentials.
    cors_origins: tuple[str, ...] = ()
    cors_max_age: int = 600

    xsrf_cookie_name: str = "XSRF-TOKEN"
    # The known-device cookie a successful login leaves (handlers/devices.py): a login from that
    # browser to that account skips the account budget and the queue of other logins' hashes.
    device_cookie_name: str = "device"
    device_cookie_max_age: int = 90 * 24 * HOUR
    xsrf_header_name: str = "X-XSRF-TOKEN"

    # Folder (relative to the project) served at / for the demo client; None: not served
    # (in prod nginx serves it).
    static_path: str | None = None

    # Login attempts (right or wrong) allowed per window, counted in the session store, so shared
    # by every process, before any password is hashed; past one, 429 with Retry-After. A window
    # starts at its first attempt. Tight per (account, address) pair, looser per address (many
    # accounts from one host; a NAT shares it), loose per account across addresses, so that an
    # attacker elsewhere locks its owner out only by spending ten addresses' worth of attempts.
    login_pair_budget: int = 10
    login_pair_window: int = 15 * MINUTE
    login_address_budget: int = 100
    login_address_window: int = 15 * MINUTE
    login_account_budget: int = 100
    login_account_window: int = HOUR
    # Attempts on an account from one known device cookie (handlers.devices) per account window,
    # counted in place of the account budget; past it the account budget counts them until then.
    login_device_budget: int = 10
    # Password hashes waiting for one of the hashing threads; past it a login is 503 at once.
    password_queue_size: int = 16

    # None: the two demo users shipped in settings/demo_users.json (refused in prod).
    users_file: str | None = None
    max_body_size: int = 64 * 1024

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


DEFAULTS = Settings()
