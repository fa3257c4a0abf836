"""The test suite's environment: memory store, short timeouts the tests drive with a fake clock."""

from settings.base import DEFAULTS

SETTINGS = DEFAULTS.replace(
    env="test",
    port=0,
    cors_origins=("http://localhost:4736",),
    store="memory",
    store_options={"memory": {"max_sessions": 1_000}},
    # Every test browser comes from 127.0.0.1: tests of the budget set their own.
    new_sessions_per_address=1_000_000,
)
