"""The Redis protocol as the Redis store speaks it: its server-side scripts, and commands packed
by hand (one send for a loop iteration's commands, without redis-py's per-command encoder)."""

from __future__ import annotations

import hashlib
import math
import random
from typing import NamedTuple


class Script(NamedTuple):
    """A server-side script of one key and ``arguments`` arguments: its source, and the head of
    the EVALSHA command that calls it by its SHA-1 (the rest is its key and arguments)."""

    source: bytes
    head: bytes
    # The whole command as a %-template: the head, then a length and a value for the key and
    # each argument (`Script.command`).
    template: bytes

    def command(self, key: bytes, *arguments: bytes) -> bytes:
        """EVALSHA of this script on ``key`` with ``arguments``."""
        values: list[int | bytes] = [len(key), key]
        for argument in arguments:
            values += (len(argument), argument)
        return self.template % tuple(values)


def lua(source: str, arguments: int) -> Script:
    sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest().encode("ascii")
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (4 + arguments, sha)
    return Script(source.encode("utf-8"), head, head.replace(b"%", b"%%") + b"$%d\r\n%s\r\n" * (1 + arguments))


# Versions are tokens the writer draws (`new_version`), never a count: after a restore or a
# failover that lost writes, a count would come round to numbers it had already given other
# records, and a copy kept with one of them (`stores.copies`) would pass the comparison.

# KEYS[1] the session; ARGV: sealed record, ttl, its version. 1 stored; 0 the id is taken.
CREATE = lua(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'r', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
""",
    3,
)
# KEYS[1] the session; ARGV: the version loaded, the new sealed record, ttl, the new version. 1
# when stored; nil when the session is gone; {v, r} as stored now when it has changed.
SAVE = lua(
    """
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
if v ~= ARGV[1] then return redis.call('HMGET', KEYS[1], 'v', 'r') end
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'r', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
""",
    4,
)


def save_command(key: bytes, loaded: bytes, value: bytes, seconds: bytes, version: bytes) -> bytes:
    """`SAVE` of ``value`` at ``version`` over ``loaded``: every write's command, packed in one
    step (half the time of the general `Script.command`)."""
    return SAVE.template % (
        len(key),
        key,
        len(loaded),
        loaded,
        len(value),
        value,
        len(seconds),
        seconds,
        len(version),
        version,
    )


# KEYS[1] the counter; ARGV[1] its window. A counter without an expiry (none can be left by
# this script, but a key is only as safe as whoever else writes) gets one too, and a counter
# someone else overwrote with a non-number (or another type) counts again from 1 rather than
# refusing every login it names.
COUNT = lua(
    """
local n = redis.pcall('INCR', KEYS[1])
if type(n) == 'table' and n.err then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
  return 1
end
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
""",
    1,
)


def new_version() -> bytes:
    """A version token for a write: 63 random bits in decimal, unique for every write in practice."""
    return b"%d" % random.getrandbits(63)


def bulk(*parts: bytes) -> bytes:
    """Bulk strings of the Redis protocol, to follow a command's head."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def pack(*parts: bytes) -> bytes:
    """One command in the Redis protocol: an array of bulk strings."""
    return b"*%d\r\n%s" % (len(parts), bulk(*parts))


PING = pack(b"PING")


def load_command(key: bytes) -> bytes:
    """``HMGET key v r``: every load's command, packed in one step."""
    return b"*4\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n$1\r\nv\r\n$1\r\nr\r\n" % (len(key), key)


def redis_seconds(ttl: float) -> bytes:
    """A ttl in whole seconds, at least one (as memcached keeps them), as Redis reads it."""
    return b"%d" % max(1, math.ceil(ttl))


class WrongType(Exception):
    """A key holds another type than the store writes: someone else's value."""
