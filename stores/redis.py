"""The durable store: Redis (or Redis Sentinel) through redis-py's asyncio client, on the IOLoop.

A session is one hash: ``prefix + sha256(session id)`` holding ``v``, a version token (random,
drawn by each writer: `stores.redis_protocol`), and ``r``, the record's JSON behind a MAC bound to
the key (`stores.sealing`: anyone with write access to Redis could otherwise make any session
anyone's). Values are never pickled.

Why a version beside the sealed value, and a script: a save must apply the request's operations
to the newest record and lose no concurrent write, in one round trip. Redis could apply them
itself in a script, but a script cannot compute the MAC (the key stays in this process), so the
server only compares: `SAVE` writes the new sealed value only if ``v`` is still the version
this process loaded, and otherwise answers with the current ``v`` and ``r`` in the same round
trip, so a retry needs no read of its own. A load is one ``HMGET``; a read-and-write request is
a load and one ``EVALSHA``, or the ``EVALSHA`` alone against this process's copy (`stores.copies`).
A touch is the same compare-and-swap with no operations; losing it
means another write refreshed the record already, so there is nothing to retry.

Batches: as in the memcached store, the commands the requests of one loop iteration send go
together, in one send on one connection, their answers read in order; writers of one session in
this process queue behind each other, so only other processes make a save try again.

Counters (`RedisStore.count`): ``prefix + "count:" + sha256(key)``, ``INCR`` and ``EXPIRE`` in
one script, so a counter can never be left without its window. TTLs are whole seconds, as on
memcached. Durability is the server's: with the append-only file (docs/STORES.md) a session
survives a Redis restart. With Sentinel, connections follow the primary through a failover;
replication is asynchronous, so writes acknowledged just before the primary died can be lost.

Outages: a batch's round trip is bounded by ``timeout`` (a new connection by ``connect_timeout``),
never retried (a lost answer may hide an applied write); a failure is `StoreUnavailable` (a 503),
logged once, and the next call tries again: recovery needs no restart.

Over 300 lines on purpose: the protocol (scripts, packing) is `stores.redis_protocol`; what is
left is one class whose every command goes through the same per-iteration batch and connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.retry import Retry

from stores.base import (
    Loaded,
    Operation,
    Record,
    SessionStore,
    StaleCopy,
    StoreContext,
    StoreUnavailable,
    apply_operations,
    counter_digest,
)
from stores.busy_poll import BusyPoll
from stores.copies import Copies, unconfirmed
from stores.options import Options, parse_address
from stores.redis_protocol import (
    COUNT,
    CREATE,
    PING,
    SAVE,
    Script,
    WrongType,
    load_command,
    new_version,
    pack,
    redis_seconds,
    save_command,
)
from stores.sealing import SealedRecords

log = logging.getLogger("stores.redis")

# What a URL's query may set: the database, and on rediss:// the CA that signed Redis's
# certificate and this server's own certificate and key (`RedisStore._check_url`).
URL_QUERY = ("db",)
TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
# A redis:// or rediss:// URL's path: none, or the database's number.
DB_PATH = re.compile(r"(/[0-9]*)?")
URL_FORM = "redis[s]://[user:password@]host[:port][/db], / ? # @ : % in a user name or password percent-encoded"


def tls_problem(files: Mapping[str, str]) -> str | None:
    """What is wrong with the TLS files a rediss:// URL names (``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``), found at start-up rather than at every connection; None if nothing."""
    if "ssl_keyfile" in files and "ssl_certfile" not in files:
        return "ssl_keyfile: only with ssl_certfile"
    try:
        context = ssl.create_default_context(cafile=files.get("ssl_ca_certs"))
    except (OSError, ssl.SSLError):
        return "ssl_ca_certs: not a readable file of CA certificates"
    if "ssl_certfile" in files:
        try:
            context.load_cert_chain(files["ssl_certfile"], files.get("ssl_keyfile"))
        except (OSError, ssl.SSLError):
            return "ssl_certfile, ssl_keyfile: not a readable certificate and its private key"
    return None


class RedisOptions(NamedTuple):
    url: str
    sentinels: tuple[str, ...]
    sentinel_service: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    prefix: str
    timeout: float
    connect_timeout: float
    max_connections: int
    cas_retries: int
    busy_poll: float
    copies: int


class RedisStore(SessionStore):
    """Session records in Redis. See the module docstring for the design.

    Options (environment variables ``REDIS_<OPTION>``): ``url`` (redis://, rediss:// or unix://
    (a socket on this host), with an ACL user and password and a database as redis-py reads them;
    redis://127.0.0.1:6379/0),
    ``sentinels`` (host:port, comma-separated: the primary is found through them, the url's host
    is then unused) with ``sentinel_service`` (the name they monitor) and, for sentinels that ask
    for them, ``sentinel_username`` and ``sentinel_password``, ``prefix`` ("session:"),
    ``timeout`` and ``connect_timeout`` (0.5 s), ``max_connections`` (64: the pool's bound; a
    request waits up to ``timeout`` for one), ``cas_retries`` (64 compare-and-swap rounds before
    an update gives up with a 503), ``busy_poll`` (200 µs: how long the loop polls without
    sleeping after a batch is sent, while answers are due; 0 turns it off; `stores.busy_poll`),
    ``copies`` (10,000: records kept as this process last wrote them, for `SessionStore.copy`; 0: none).
    """

    name = "redis"
    options = RedisOptions._fields

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> RedisOptions:
        read = Options(cls.name, options, cls.options)
        url = read.text("url", "redis://127.0.0.1:6379/0") or ""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            read.require(False, "url", "a redis://, rediss:// or unix:// URL")
        else:
            cls._check_url(read, url)
        sentinels = read.addresses("sentinels")
        service = read.text("sentinel_service")
        read.require(
            bool(sentinels) == bool(service), "sentinel_service", "set both or neither of sentinels, sentinel_service"
        )
        # The sentinels name the primary by its address: there is no socket path to follow.
        unix_with_sentinels = bool(sentinels) and url.startswith("unix://")
        read.require(not unix_with_sentinels, "url", "with sentinels, a redis:// or rediss:// URL")
        # The sentinels' own credentials (requirepass, or an ACL user on Redis 6.2+); the URL's are
        # the primary's.
        sentinel_username = read.text("sentinel_username")
        sentinel_password = read.text("sentinel_password")
        read.require(bool(sentinels) or not sentinel_password, "sentinel_password", "only with sentinels")
        read.require(not sentinel_username or bool(sentinel_password), "sentinel_username", "needs sentinel_password")
        checked = RedisOptions(
            url=url,
            sentinels=sentinels,
            sentinel_service=service,
            sentinel_username=sentinel_username,
            sentinel_password=sentinel_password,
            prefix=read.key_prefix("prefix", "session:"),
            timeout=read.number("timeout", 0.5),
            connect_timeout=read.number("connect_timeout", 0.5),
            max_connections=int(read.number("max_connections", 64, whole=True)),
            cas_retries=int(read.number("cas_retries", 64, whole=True)),
            busy_poll=read.busy_poll(),
            copies=int(read.number("copies", 10_000, whole=True, zero=True)),
        )
        read.done()
        return checked

    @staticmethod
    def _check_url(read: Options, url: str) -> None:
        """What redis-py would make of ``url``, checked now: it hands any query option to its
        connections, where an unknown one fails every request and some (``ssl_cert_reqs=none``,
        ``socket_timeout``) quietly undo TLS checks or this store's own options; and a password with
        an unencoded ``/ # ?`` leaves a URL of another host, or none, and no password. Messages
        never repeat the URL: a password that breaks it would show in them."""
        try:
            parsed = parse_url(url)
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError:
            parsed, parts = {}, None
        unix = url.startswith("unix://")
        if parts is None or "#" in url or (not unix and not (parts.hostname and DB_PATH.fullmatch(parts.path))):
            read.require(False, "url", f"not a URL redis-py reads ({URL_FORM})")
            return
        read.require(bool(parsed.get("path")) or not unix, "url", "unix:// needs the socket's path")
        taken = URL_QUERY + (TLS_QUERY if url.startswith("rediss://") else ())
        query = {name: values[0] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        if not set(query) <= set(taken):
            read.require(False, "url", f"a query option this store does not take (it takes {', '.join(taken)})")
        read.require(query.get("db", "0").isdigit(), "url", "db: a whole number")
        problem = tls_problem({name: path for name, path in query.items() if name in TLS_QUERY and name in taken})
        read.require(problem is None, "url", problem or "")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: StoreContext) -> RedisStore:
        return cls(cls.check_options(options), context)

    def __init__(self, options: RedisOptions, context: StoreContext) -> None:
        self.prefix = options.prefix
        # A short-lived key of its own, under the prefix an ACL user is allowed (docs/STORES.md).
        self._ready_probe = pack(b"SET", f"{self.prefix}ready".encode("ascii"), b"1", b"PX", b"10000")
        self.max_record_size = context.max_record_size
        self.cas_retries = options.cas_retries
        self.max_connections = options.max_connections
        self.timeout = options.timeout
        self.connect_timeout = options.connect_timeout
        self._records = SealedRecords(context.record_keys, context.max_record_size, "redis")
        self._failing = False
        # Forgotten at every failure: after a failover the new primary may lack this process's
        # last writes (replication is asynchronous), and a copy of one would only cost a lost write.
        self._copies = Copies(options.copies)
        self._queues: dict[str, _Queue] = {}
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        # Connections between batches, most recently used last (all of them from the pool, so
        # bounded by max_connections).
        self._idle: list[AbstractConnection] = []
        self._in_flight = 0  # batches sent and not yet answered
        self._busy_poll = BusyPoll(options.busy_poll / 1e6, lambda: self._in_flight > 0)
        self._sentinel: Sentinel | None = None
        common: dict[str, Any] = {
            # None: every exchange on these connections (connecting included) runs inside
            # _send's own deadlines. With a socket timeout, redis-py sends each batch through
            # asyncio.wait_for: a task, a timer and two more loop iterations before the answer.
            "socket_timeout": None,
            "socket_connect_timeout": options.connect_timeout,
            # No retry: a write whose answer was lost may have been applied, and sent again it
            # could count twice. A connection the server closed (a restart) is found closed
            # before use and replaced (see _connection).
            "retry": Retry(NoBackoff(), 0),
            "max_connections": options.max_connections,
        }
        if options.sentinels:
            assert options.sentinel_service is not None
            # The URL's credentials, database and TLS apply to the primary the sentinels name.
            url: dict[str, Any] = {
                k: v for k, v in parse_url(options.url).items() if k not in ("host", "port", "connection_class")
            }
            if options.url.startswith("rediss://"):
                url["ssl"] = True
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                [parse_address(s) for s in options.sentinels],
                sentinel_kwargs={
                    "socket_timeout": options.timeout,
                    "socket_connect_timeout": options.connect_timeout,
                    # redis-py's default retries each sentinel 3 times with backoff: an outage
                    # answered in 13-15 s instead of within the timeouts.
                    "retry": Retry(NoBackoff(), 0),
                    "username": options.sentinel_username,
                    "password": options.sentinel_password,
                },
            )
            self.client: Redis = self._sentinel.master_for(options.sentinel_service, **url, **common)
        else:
            pool = BlockingConnectionPool.from_url(options.url, timeout=options.timeout, **common)
            self.client = Redis(connection_pool=pool)

    @property
    def connections(self) -> int:
        return self.max_connections

    async def start(self) -> None:
        """Nothing to start: connections open on first use, and reopen after a failure."""

    async def close(self) -> None:
        while self._idle:
            await self.client.connection_pool.release(self._idle.pop())
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()

    # Keys and values -----------------------------------------------------------------------

    def key(self, session_id: str) -> str:
        """The Redis key for a session id: the prefix and the id's hex SHA-256."""
        return self.prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()

    def counter_key(self, key: str) -> str:
        """The Redis key for a counter: the prefix, ``count:`` and the key's hex SHA-256."""
        return f"{self.prefix}count:{counter_digest(key)}"

    def _decode(self, key: str, version: Any, raw: Any) -> Loaded | None:
        if not isinstance(version, bytes) or not isinstance(raw, bytes):
            return None
        return self._records.decode(key, raw, version)

    def _encode(self, key: str, record: Record) -> bytes:
        return self._records.encode(key, record)

    # Health --------------------------------------------------------------------------------

    # Batches: the commands of one loop iteration, in one send on one pooled connection ------

    async def _reply(self, packed: bytes) -> Any:
        """One command's reply, an error reply as it came; sent with the others of this loop
        iteration. A failed connection is `StoreUnavailable`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._pending is None:
            self._pending = []
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((packed, future))
        return await future

    async def _command(self, packed: bytes) -> Any:
        """One command, sent with the others of this loop iteration; failures are
        `StoreUnavailable` (logged once per outage), a key of another type `WrongType`."""
        result = await self._reply(packed)
        if isinstance(result, ResponseError) and not isinstance(result, NoScriptError):
            if "WRONGTYPE" in str(result):
                raise WrongType  # a key someone else wrote: no session
            raise self._failed(result) from result
        return result

    async def _script(self, script: Script, packed: bytes) -> Any:
        """Run ``script`` by its digest (``packed``, its EVALSHA command); loaded and sent again
        if the server lacks it (a restart empties Redis's script cache)."""
        return await self._script_answer(script, packed, await self._command(packed))

    async def _script_answer(self, script: Script, packed: bytes, answer: Any) -> Any:
        """``answer`` to ``packed`` (an EVALSHA of ``script``) as `_script` returns it: on
        NOSCRIPT the script is loaded and sent again, and errors are an outage."""
        if isinstance(answer, NoScriptError):
            try:
                await self._command(pack(b"SCRIPT", b"LOAD", script.source))
            except WrongType:  # no command here touches a key: not Redis
                raise self._unexpected() from None
            answer = await self._command(packed)
        if isinstance(answer, RedisError):
            raise self._failed(answer) from answer
        return answer

    def _flush(self) -> None:
        batch, self._pending = self._pending or [], None
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        """The batch's commands in one send on one pooled connection, then their answers in order.

        Commands are packed here rather than by redis-py's pipeline: a handful of fixed shapes,
        and packing was a fifth of the store's CPU per request.
        """
        pool = self.client.connection_pool
        try:
            # Bounded as a whole: with Sentinel, finding the primary asks the sentinels first.
            async with asyncio.timeout(self.connect_timeout + self.timeout):
                connection = await self._connection()
        except (RedisError, OSError, TimeoutError) as e:
            self._fail(batch, self._failed(e))
            return
        except Exception as e:  # a bug, or an option redis-py refuses only now: an outage, logged whole
            if not self._failing:  # once an outage, as _failed logs: requests choose how often this runs
                log.exception("redis: no connection")
            self._fail(batch, self._failed(e))
            return
        except BaseException:  # cancelled at close: no request may hang on it
            self._fail(batch, StoreUnavailable("redis: closed"))
            raise
        answers: list[Any] = []
        try:
            # One deadline for the whole batch rather than one per answer (redis-py's own read
            # timeout sets a timer for each): the batch's answers arrive together anyway.
            async with asyncio.timeout(self.timeout):
                await connection.send_packed_command(b"".join(packed for packed, _ in batch), check_health=False)
                self._in_flight += 1
                self._busy_poll.sent(asyncio.get_running_loop())
                try:
                    for _ in batch:
                        try:
                            answers.append(await connection.read_response(timeout=math.inf))
                        except ResponseError as e:  # one command's error: the connection stays in step
                            answers.append(e)
                finally:
                    self._in_flight -= 1
        except (RedisError, TimeoutError) as e:  # redis-py closes the connection on these
            await connection.disconnect()
            await pool.release(connection)
            self._fail(batch, self._failed(e))
            return
        except BaseException as e:  # a bug, or cancelled at close: no request may hang on it
            self._fail(batch, StoreUnavailable(f"redis: {e.__class__.__name__}"))
            await connection.disconnect()
            await pool.release(connection)
            raise
        # Kept for the next batch rather than given back: taking a connection from the pool and
        # giving it back cost about as much as a small batch's own commands.
        self._idle.append(connection)
        if self._failing:
            self._failing = False
            log.warning("redis available again")
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                # Errors of one command (NOSCRIPT, WRONGTYPE) are its answer, for its caller to read.
                future.set_result(answer)

    async def _connection(self) -> AbstractConnection:
        """A connection for one batch: the one the last batch used, if it is still in step and
        open (Redis sends nothing unasked: anything to read is its end of the connection, after a
        restart say), or one from the pool."""
        pool = self.client.connection_pool
        while self._idle:
            connection = self._idle.pop()
            with contextlib.suppress(RedisError):
                if not await connection.can_read():
                    return connection
            await connection.disconnect()
            await pool.release(connection)
        fresh: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        return fresh

    @staticmethod
    def _fail(batch: list[tuple[bytes, asyncio.Future[Any]]], failure: StoreUnavailable) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(str(failure)))

    def _failed(self, error: Exception) -> StoreUnavailable:
        self._copies.clear()
        if not self._failing:
            self._failing = True
            log.error("redis unavailable: %s", error.__class__.__name__)
        return StoreUnavailable(f"redis: {error.__class__.__name__}")

    def _unexpected(self) -> StoreUnavailable:
        """A reply of a shape no command here gets from Redis (a proxy or server that is not
        Redis): an outage, a 503, never a crash."""
        return self._failed(ResponseError("a reply of an unexpected shape"))

    def _pair(self, reply: Any) -> tuple[Any, Any]:
        """``[v, r]`` as HMGET (or the save script, on a lost race) answers it."""
        if type(reply) is not list or len(reply) != 2:
            raise self._unexpected()
        return reply[0], reply[1]

    async def ready(self) -> bool:
        """True when Redis answers and is not a read-only replica: a replica answers PING, but
        every login, counter and logout on it is a 503, so a load balancer must send it nothing.
        Other refused writes (out of memory, too few replicas) leave reads working: ready."""
        try:
            reply = await self._reply(self._ready_probe)
            if isinstance(reply, ResponseError):
                if isinstance(reply, ReadOnlyError):  # READONLY: a replica
                    return False
                reply = await self._command(PING)
                return reply in (b"PONG", "PONG")
            return reply in (b"OK", "OK")
        except (StoreUnavailable, WrongType):
            return False

    # Sessions ------------------------------------------------------------------------------

    async def load(self, session_id: str) -> Loaded | None:
        key = self.key(session_id)
        try:
            reply = await self._command(load_command(key.encode("ascii")))
        except WrongType:
            return None
        version, raw = self._pair(reply)
        loaded = self._decode(key, version, raw)
        self._copies.refresh(key, raw if loaded is not None else None, version)
        return loaded

    def copy(self, session_id: str) -> Loaded | None:
        key = self.key(session_id)
        kept = self._copies.get(key)
        if kept is None:
            return None
        copy = unconfirmed(self._decode(key, kept[1], kept[0]))
        if copy is None:
            self._copies.drop(key)
        return copy

    async def create(self, session_id: str, record: Record, ttl: float) -> bool:
        key = self.key(session_id)
        value = self._encode(key, record)
        self._copies.drop(key)
        try:
            packed = CREATE.command(key.encode("ascii"), value, redis_seconds(ttl), new_version())
            stored = await self._script(CREATE, packed)
        except WrongType:
            return False
        if type(stored) is not int or stored not in (0, 1):
            raise self._unexpected()
        return stored == 1

    async def update(
        self,
        session_id: str,
        operations: Sequence[Operation],
        now: float,
        ttl: float,
        loaded: Loaded | None = None,
    ) -> Record | None:
        key = self.key(session_id)
        queue = self._queues.get(key)
        if queue is None:  # no writer of this session at work here: go straight on
            queue = self._queues[key] = _Queue()
        else:
            await self._wait_turn(key, queue)
        try:
            if loaded is not None and not loaded.confirmed:
                return await self._write_copy(queue, key, operations, now, ttl, loaded)
            # The writer before this one in the queue left the version it stored: start
            # from it rather than lose a round trip to a version known to be stale.
            current = queue.latest or loaded
            if current is None or current.version is None:
                current = await self.load(session_id)
            for _ in range(self.cas_retries):
                if current is None:
                    return None
                merged = apply_operations(current.record, operations, now)
                value = self._encode(key, merged)
                answer, version = await self._compare_and_swap(key, current.version, value, ttl)
                if answer is None:
                    return None
                if type(answer) is int:
                    queue.latest = self._stored(key, merged, version, value)
                    return merged
                # Another process came first: its record came back with the answer.
                current = self._decode(key, *self._pair(answer))
            raise StoreUnavailable("session updated too often at once")
        finally:
            self._next_turn(key, queue)

    async def _wait_turn(self, key: str, queue: _Queue) -> None:
        """Wait in the session's queue until the writers before this one are done."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.waiting.append(turn)
        try:
            await turn
        except BaseException:  # cancelled (or the coroutine closed) while it waited
            if turn.done() and not turn.cancelled():  # given the turn meanwhile: pass it on
                self._next_turn(key, queue)
            else:
                turn.cancel()  # no longer waiting: the hand-off skips it
            raise

    def _next_turn(self, key: str, queue: _Queue) -> None:
        """The writer at work is done: the next one waiting (a cancelled one no longer waits)
        goes on, or the queue goes when nobody waits."""
        while queue.waiting:
            turn = queue.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del self._queues[key]

    async def _write_copy(
        self, queue: _Queue, key: str, operations: Sequence[Operation], now: float, ttl: float, copy: Loaded
    ) -> Record:
        """`update` against this process's copy: stored, or `StaleCopy` (changed or gone)."""
        if queue.latest is not None and queue.latest.version != copy.version:
            self._copies.lost(key, copy.version)  # the copy kept now is that later write's
            # Another request of this process wrote after the copy was made: start from its write.
            raise StaleCopy(key, found=True, current=queue.latest)
        merged = apply_operations(copy.record, operations, now)
        value = self._encode(key, merged)
        answer, version = await self._compare_and_swap(key, copy.version, value, ttl)
        if type(answer) is int:
            queue.latest = self._stored(key, merged, version, value)
            return merged
        raise self._stale(key, answer, copy.version)

    def _stale(self, key: str, answer: Any, version: Any) -> StaleCopy:
        """A write against a copy (at ``version``) lost: the script answered with what is stored
        now ([v, r]), or nil (gone), so the request starts again without loading it."""
        self._copies.lost(key, version)
        current = None if answer is None else self._decode(key, *self._pair(answer))
        return StaleCopy(key, found=True, current=current)

    def _stored(self, key: str, record: Record, version: bytes, value: bytes) -> Loaded:
        """What a stored compare-and-swap left (``value``, as sealed): kept as this process's copy."""
        self._copies.keep(key, value, version)
        return Loaded(record, version)

    async def _compare_and_swap(self, key: str, version: Any, value: bytes, ttl: float) -> tuple[Any, bytes]:
        """(the answer, the version written if it was stored): the answer is an integer (stored),
        None (gone), or [v, r] as stored now (changed meanwhile)."""
        written = new_version()
        packed = save_command(key.encode("ascii"), version, value, redis_seconds(ttl), written)
        try:
            answer = await self._command(packed)  # as _script, without its layer for every save
            if isinstance(answer, RedisError):
                answer = await self._script_answer(SAVE, packed, answer)
        except WrongType:
            return None, written
        return answer, written

    async def touch(self, session_id: str, now: float, ttl: float, loaded: Loaded | None = None) -> bool:
        if loaded is None or loaded.version is None:
            return await self.update(session_id, (), now, ttl) is not None
        # Lost to a write after the load: that write refreshed last_seen and the TTL already.
        key = self.key(session_id)
        touched = apply_operations(loaded.record, (), now)
        value = self._encode(key, touched)
        answer, version = await self._compare_and_swap(key, loaded.version, value, ttl)
        if type(answer) is int:
            self._stored(key, touched, version, value)
            return True
        if not loaded.confirmed:
            raise self._stale(key, answer, loaded.version)
        self._copies.lost(key, loaded.version)
        if answer is not None:
            self._pair(answer)  # changed meanwhile (alive), or not Redis's answer
        return answer is not None

    async def delete(self, session_id: str) -> None:
        key = self.key(session_id)
        self._copies.drop(key)
        try:
            await self._command(pack(b"UNLINK", key.encode("ascii")))
        except WrongType:  # UNLINK takes any type: not Redis
            raise self._unexpected() from None

    async def count(self, key: str, window: float) -> int:
        try:
            packed = COUNT.command(self.counter_key(key).encode("ascii"), redis_seconds(window))
            count = await self._script(COUNT, packed)
        except WrongType:
            raise StoreUnavailable("a counter key holds something else") from None
        if type(count) is not int:
            raise self._unexpected()
        return count


class _Queue:
    """The updates of one session in this process, one at a time, in order of arrival.

    Writers of one session in one process would otherwise all race for the same version, and
    all but one lose every round: in a queue each writes once, and only writers in other
    processes can make it try again. The writer at work holds no future of its own: a session
    written by one request at a time (nearly always) costs a dictionary entry, no lock.
    """

    __slots__ = ("latest", "waiting")

    def __init__(self) -> None:
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.latest: Loaded | None = None
