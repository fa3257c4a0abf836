"""The application: routes, and the objects every handler reaches through ``self.app``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tornado.routing import Rule
from tornado.web import Application

from handlers.account import BalanceHandler
from handlers.auth import LoginHandler, LogoutHandler
from handlers.devices import DeviceCookies
from handlers.health import LivenessHandler, NotFoundHandler, ReadinessHandler
from handlers.logging_setup import log_request
from handlers.pages import DemoClientConfigHandler, DemoClientHandler, PageCounterHandler
from handlers.security_headers import SecurityHeaders
from handlers.session_manager import SessionManager
from settings import Settings
from stores.base import SessionStore
from stores.users import UserDirectory

ROOT = Path(__file__).resolve().parent.parent
# Routes as Tornado's Application takes them: (pattern, handler[, kwargs[, name]]) or a Rule.
Routes = Sequence[Rule | tuple[Any, ...]]

API_ROUTES: Routes = [
    (r"/api", PageCounterHandler),
    (r"/api/login", LoginHandler),
    (r"/api/logout", LogoutHandler),
    (r"/api/balance", BalanceHandler),
    (r"/livez", LivenessHandler),
    (r"/readyz", ReadinessHandler),
]


class SessionApplication(Application):
    """A Tornado application that carries the session layer.

    ``config`` is the validated `Settings`, ``sessions`` the `SessionManager`, ``store`` the
    session store and ``users`` the `UserDirectory`. Add your own routes with ``extra_routes``.
    """

    def __init__(
        self,
        config: Settings,
        store: SessionStore,
        users: UserDirectory,
        clock: Callable[[], float] = time.time,
        extra_routes: Routes | None = None,
        **tornado_settings: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.users = users
        self.clock = clock
        self.sessions = SessionManager(config, store, clock)
        self.devices = DeviceCookies(config.session_secrets, config.device_cookie_max_age)
        self.in_flight = 0
        # Set when the process stops: every answer from then on closes its connection.
        self.draining = False
        routes: list[Any] = [*(extra_routes or []), *API_ROUTES]
        if config.static_path:
            # The client's own files at the top level (index.html, app.js, ...), as nginx serves
            # them in prod; anything else stays a JSON 404.
            static = {"path": str(ROOT / config.static_path), "default_filename": "index.html"}
            routes.append((r"/config\.js", DemoClientConfigHandler))
            routes.append((r"/((?:[\w-]+\.(?:html|js|css|svg|png|ico))?)", DemoClientHandler, static))
        super().__init__(
            routes,
            default_handler_class=NotFoundHandler,
            transforms=[SecurityHeaders],
            log_function=log_request,
            **tornado_settings,
        )
