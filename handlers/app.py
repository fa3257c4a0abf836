"""The application: routes, and the objects every handler reaches through ``self.app``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tornado.routing import _RuleList
from tornado.web import Application

from handlers.access import log_request
from handlers.account import BalanceHandler
from handlers.auth import LoginHandler, LogoutHandler
from handlers.base import SecurityHeaders
from handlers.health import LivenessHandler, NotFoundHandler, ReadinessHandler
from handlers.pages import PageCounterHandler
from handlers.session import SessionManager
from settings import Settings
from stores.base import SessionStore
from stores.users import UserDirectory

API_ROUTES: _RuleList = [
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
        extra_routes: _RuleList | None = None,
        **tornado_settings: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.users = users
        self.clock = clock
        self.sessions = SessionManager(config, store, clock)
        self.in_flight = 0
        super().__init__(
            [*(extra_routes or []), *API_ROUTES],
            default_handler_class=NotFoundHandler,
            transforms=[SecurityHeaders],
            log_function=log_request,
            **tornado_settings,
        )
