"""The base handlers every route derives from, importable from one place.

`JsonHandler` (handlers.json_handler) for sessionless routes, `SessionHandler`
(handlers.session_handler) for routes with a session; `ApiError`, `not_logged_in` and
`store_unavailable` (handlers.json_api) for the errors a client should see.
"""

from handlers.json_api import ApiError, not_logged_in, store_unavailable
from handlers.json_handler import JsonHandler
from handlers.session_handler import SessionHandler

__all__ = ["ApiError", "JsonHandler", "SessionHandler", "not_logged_in", "store_unavailable"]
