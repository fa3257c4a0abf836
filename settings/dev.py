"""Development on a laptop: memory store, plain HTTP, the reference Angular dev server allowed."""

from settings.base import DEFAULTS

SETTINGS = DEFAULTS.replace(
    env="dev",
    cors_origins=("http://localhost:4736",),
    store="memory",
    static_path="static",
)
