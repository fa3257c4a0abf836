"""The test suite's environment: memory store, short timeouts the tests drive with a fake clock."""

from settings.base import DEFAULTS

SETTINGS = DEFAULTS.replace(
    env="test",
    port=0,
    cors_origins=("http://localhost:4736",),
    store="memory",
    memory_max_sessions=1_000,
)
