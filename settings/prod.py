"""Production behind nginx with TLS: Secure __Host- cookie, memcached, proxy headers trusted.

Secrets, users, allowed origins and memcached servers come from the environment.
"""

from settings.base import DEFAULTS, HOUR, MINUTE

SETTINGS = DEFAULTS.replace(
    env="prod",
    host="127.0.0.1",
    port=8000,
    xheaders=True,
    cookie_name="__Host-sid",
    device_cookie_name="__Host-device",
    cookie_secure=True,
    cookie_samesite="Lax",
    idle_timeout=30 * MINUTE,
    absolute_timeout=12 * HOUR,
    store="memcached",
)
