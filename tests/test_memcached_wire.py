"""The memcached store's pipelined connection (`stores.memcached_wire`), against a real memcached."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from stores.busy_poll import BusyPoll
from stores.memcached import MemcachedStore
from stores.memcached_client import CasWrite, Exchanged
from stores.memcached_wire import MAX_LINE, MAX_VALUE, Landed, Wire, _Batch, _Connection
from tests.services import Memcached

# Values that look like protocol, empty, binary, and larger than one receive.
TRICKY_VALUES = [b"", b"END", b"\r\nEND\r\n", b"VALUE k 0 1 1\r\n", bytes(range(256)), b"x" * 70_000]


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    with Memcached() as server:
        yield server


def raw_client(memcached: Memcached) -> Client:
    return Client(("127.0.0.1", memcached.port), default_noreply=False)


async def exchange(wire: Wire, writes: Sequence[CasWrite], keys: Sequence[str]) -> Exchanged:
    """One batch on ``wire``, awaited: its answers, or its failure raised."""
    landed: asyncio.Future[Exchanged] = asyncio.get_running_loop().create_future()

    def done(answer: Exchanged | None, error: BaseException | None) -> None:
        if error is not None:
            landed.set_exception(error)
        else:
            assert answer is not None
            landed.set_result(answer)

    wire.exchange(writes, keys, done)
    return await landed


def collector(results: list[Exchanged | BaseException | None]) -> Landed:
    """A batch's report that appends its answer (or its error) to ``results``."""
    return lambda answer, error: results.append(error or answer)


@pytest.mark.gen_test
async def test_answers_read_the_same_however_the_bytes_arrive():
    answer = b"STORED\r\nEXISTS\r\nNOT_FOUND\r\nSERVER_ERROR out of memory storing object\r\n"
    answer += b"".join(b"VALUE k%d 0 %d %d\r\n%s\r\n" % (i, len(v), 100 + i, v) for i, v in enumerate(TRICKY_VALUES))
    answer += b"END\r\n"
    loop = asyncio.get_running_loop()
    for size in (1, 2, 3, 5, 8, 13, 4096, len(answer)):
        left, right = socket.socketpair()
        with right:
            _, connection = await loop.create_connection(lambda: _Connection(loop, 5.0), sock=left)
            results: list[Exchanged | BaseException | None] = []
            # Two batches pipelined: the second's answer is an empty gets.
            keys = [f"k{i}" for i in range(len(TRICKY_VALUES))]
            for writes, asked in ((4, ["absent", *keys]), (0, ["k0"])):
                connection.send(b"", _Batch(writes, asked, collector(results), 0.0))
            # The answer arrives in pieces of ``size`` bytes; then the second batch's END.
            for start in range(0, len(answer), size):
                connection.data_received(answer[start : start + size])
            assert len(results) == 1
            connection.data_received(b"END\r\n")
            first, second = results
            assert isinstance(first, Exchanged) and isinstance(second, Exchanged)
            assert first.written[:3] == [True, False, None] and isinstance(first.written[3], Exception)
            assert first.found == {f"k{i}": (v, b"%d" % (100 + i)) for i, v in enumerate(TRICKY_VALUES)}
            assert second == Exchanged([], {})
            connection.fail(ConnectionResetError())


@pytest.mark.gen_test
async def test_answers_out_of_step_fail_every_waiting_batch():
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with right:
        _, connection = await loop.create_connection(lambda: _Connection(loop, 5.0), sock=left)
        results: list[Exchanged | BaseException | None] = []
        for _ in range(2):
            connection.send(b"", _Batch(0, ["k"], collector(results), 0.0))
        connection.data_received(b"VALUE k 0 not-a-size 1\r\n")
        assert len(results) == 2 and all(isinstance(r, MemcacheError) for r in results)
        assert connection.closed


@contextlib.asynccontextmanager
async def one_batch(
    writes: int, keys: Sequence[str], max_value: int = MAX_VALUE
) -> AsyncIterator[tuple[_Connection, list[Exchanged | BaseException | None]]]:
    """A connection on a socket pair with one batch sent: its answer is fed by hand."""
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with right:
        _, connection = await loop.create_connection(lambda: _Connection(loop, 5.0, max_value=max_value), sock=left)
        results: list[Exchanged | BaseException | None] = []
        connection.send(b"", _Batch(writes, keys, collector(results), 0.0))
        try:
            yield connection, results
        finally:
            connection.fail(ConnectionResetError())


@pytest.mark.parametrize(
    "answer",
    [b"VALUE other 0 1 1\r\nx\r\nEND\r\n", b"VALUE b 0 1 1\r\nx\r\nVALUE a 0 1 2\r\ny\r\nEND\r\n"],
    ids=["a key not asked", "keys out of order"],
)
@pytest.mark.gen_test
async def test_an_answer_for_keys_not_asked_in_that_order_fails_the_connection(answer: bytes):
    # Another batch's answer (a relay that reorders, a desynchronised stream) is never read as
    # this batch's: a missing key here would read as "no session" and log its user out.
    async with one_batch(0, ["a", "b"]) as (connection, results):
        connection.data_received(answer)
        assert len(results) == 1 and isinstance(results[0], MemcacheError)
        assert connection.closed


@pytest.mark.parametrize("writes", [0, 1], ids=["a VALUE line", "a status line"])
@pytest.mark.gen_test
async def test_an_answer_line_that_never_ends_fails_the_connection_at_its_bound(writes: int):
    # A broken or hostile server sends a line without CRLF: kept and searched on every read, it
    # would stall the loop for everyone until the timeout. Past the longest line memcached sends,
    # the connection fails (503) at once.
    async with one_batch(writes, ["k"]) as (connection, results):
        connection.data_received(b"A" * MAX_LINE)
        assert results == [] and not connection.closed  # long, but not past the bound yet
        connection.data_received(b"A" * 100)
        assert len(results) == 1 and isinstance(results[0], MemcacheError) and connection.closed


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000, 65536])
@pytest.mark.gen_test
async def test_a_value_over_the_limit_is_passed_over_as_it_arrives(piece: int):
    async with one_batch(0, ["big", "small"], max_value=100) as (connection, results):
        # Its data holds what would read as the answer's end, were it parsed.
        data = b"\r\nEND\r\n" + b"x" * (100_000 if piece >= 1000 else 300)
        huge = b"VALUE big 0 %d 7\r\n%s\r\nVALUE small 0 2 8\r\nok\r\nEND\r\n" % (len(data), data)
        for start in range(0, len(huge), piece):
            connection.data_received(huge[start : start + piece])
            # Nothing of the value is kept between pieces (beyond a header not yet whole).
            assert len(connection.buffer) - connection.position <= max(piece, 64)
        assert results == [Exchanged([], {"small": (b"ok", b"8")})]
        assert not connection.closed


@pytest.mark.gen_test
async def test_a_batch_reads_what_pymemcache_reads(memcached: Memcached):
    keys = [f"session:{i}" for i in range(len(TRICKY_VALUES))]
    client = raw_client(memcached)
    for key, value in zip(keys, TRICKY_VALUES, strict=True):
        client.set(key, value, 60)
    wire = Wire("127.0.0.1", memcached.port, connect_timeout=1, timeout=1)
    try:
        written, found = await exchange(wire, [], [*keys, "session:missing"])
        assert written == [] and found == client.gets_many([*keys, "session:missing"])
        found_before = found
        # Writes go first in the same send, so the gets sees them; a stale token loses.
        token = found[keys[0]][1]
        writes = [(keys[0], b"new", token, 60), (keys[1], b"lost", b"1", 60), ("session:missing", b"x", b"1", 60)]
        written, found = await exchange(wire, writes, keys[:2])
        assert written == [True, False, None]
        assert found[keys[0]][0] == b"new" and found[keys[1]][0] == TRICKY_VALUES[1]
        # A write the server misreads (a token that is no number) gets two answers, CLIENT_ERROR and
        # ERROR: the batch fails rather than pairing answers with the wrong questions, and the next
        # batch reads its own answers (on a new connection).
        with pytest.raises(MemcacheError):
            await exchange(wire, [(keys[2], b"v", b"not-a-number", 60)], keys[:1])
        answer = await exchange(wire, [], keys[2:4])
        assert answer.found == {k: v for k, v in found_before.items() if k in keys[2:4]}
    finally:
        wire.close()
        client.close()


@pytest.mark.gen_test
async def test_batches_are_pipelined_and_answered_in_order(memcached: Memcached):
    client = raw_client(memcached)
    keys = [f"session:p{i}" for i in range(50)]
    for i, key in enumerate(keys):
        client.set(key, b"%d" % i, 60)
    wire = Wire("127.0.0.1", memcached.port, connect_timeout=1, timeout=1)
    try:
        # Fifty batches sent before any answer is read: each gets its own key's value back.
        answers = await asyncio.gather(*(exchange(wire, [], [key]) for key in keys))
        assert [a.found[key][0] for a, key in zip(answers, keys, strict=True)] == [b"%d" % i for i in range(50)]
        # All on one connection.
        assert int(client.stats()[b"curr_connections"]) <= 3
    finally:
        wire.close()
        client.close()


@pytest.mark.gen_test(timeout=30)
async def test_an_unanswered_batch_fails_within_the_timeout_and_the_wire_recovers(memcached: Memcached):
    client = raw_client(memcached)
    client.set("session:k", b"v", 60)
    client.close()
    wire = Wire("127.0.0.1", memcached.port, connect_timeout=0.3, timeout=0.3)
    try:
        assert (await exchange(wire, [], ["session:k"])).found["session:k"][0] == b"v"
        memcached.pause()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = [exchange(wire, [], ["session:k"]) for _ in range(3)]
        failures = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(f, TimeoutError) for f in failures)
        # Bounded by the timeout (the loop's own clock; the margin is for a loaded machine).
        assert loop.time() - started < 0.3 + 2.0
        memcached.resume()
        assert (await exchange(wire, [], ["session:k"])).found["session:k"][0] == b"v"
    finally:
        memcached.resume()
        wire.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_connection_fails_the_batch_and_a_restart_is_found(memcached: Memcached):
    wire = Wire("127.0.0.1", memcached.port, connect_timeout=0.3, timeout=0.3)
    try:
        assert (await exchange(wire, [], ["session:none"])).found == {}
        memcached.stop()
        # The closed connection's end (or the refused new one) fails the batch; then refused.
        with pytest.raises((OSError, MemcacheError)):
            await exchange(wire, [], ["session:none"])
        with pytest.raises(ConnectionRefusedError):
            await exchange(wire, [], ["session:none"])
        memcached.start()
        assert (await exchange(wire, [], ["session:none"])).found == {}
    finally:
        wire.close()


class StepClock:
    """A clock for busy polling that moves only when told, and counts how often it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def loop_turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def polled_connection(bound: float) -> AsyncIterator[tuple[_Connection, StepClock]]:
    """A connection on a socket pair that busy-polls up to ``bound`` seconds on a step clock."""
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    with right:
        _, connection = await loop.create_connection(lambda: _Connection(loop, 5.0, bound), sock=left)
        clock = connection.busy_poll.clock = StepClock()
        try:
            yield connection, clock
        finally:
            connection.fail(ConnectionResetError())


@pytest.mark.gen_test
async def test_busy_polling_lasts_until_the_answers_or_its_bound():
    loop = asyncio.get_running_loop()
    async with polled_connection(0.0002) as (connection, clock):
        results: list[Exchanged | BaseException | None] = []
        connection.send(b"", _Batch(0, ["k"], collector(results), loop.time()))
        connection.send(b"", _Batch(0, ["k"], collector(results), loop.time()))  # pipelined: one poller
        reads = clock.reads
        await loop_turns(20)
        assert clock.reads - reads >= 15  # each turn of the loop polled once, as answers are due
        connection.data_received(b"END\r\nEND\r\n")
        await loop_turns(3)
        assert len(results) == 2 and not connection.busy_poll.polling  # answered: polling ends

        connection.send(b"", _Batch(0, ["k"], collector(results), loop.time()))  # due again: polls again
        await loop_turns(3)
        assert connection.busy_poll.polling
        clock.now = 0.00021  # past the bound with no answer: the loop may sleep again
        await loop_turns(3)
        assert not connection.busy_poll.polling and len(results) == 2
        reads = clock.reads
        await loop_turns(20)
        assert clock.reads == reads  # still waiting, no longer polling
        connection.fail(ConnectionResetError())
        assert isinstance(results[-1], ConnectionResetError)


@pytest.mark.gen_test
async def test_busy_polling_off_reads_no_clock():
    loop = asyncio.get_running_loop()
    async with polled_connection(0.0) as (connection, clock):
        connection.send(b"", _Batch(0, ["k"], collector([]), loop.time()))
        await loop_turns(10)
        assert clock.reads == 0 and not connection.busy_poll.polling


@pytest.mark.gen_test
async def test_a_real_exchange_stops_polling_once_answered(memcached: Memcached):
    wire = Wire("127.0.0.1", memcached.port, connect_timeout=1, timeout=1, busy_poll_seconds=10.0)
    try:
        assert await exchange(wire, [], ["session:none"]) == Exchanged([], {})  # connected
        waiting = asyncio.ensure_future(exchange(wire, [], ["session:none"]))
        polled_while_waiting = False
        while not waiting.done():
            connection = wire._connection
            polled_while_waiting |= connection is not None and connection.busy_poll.polling
            await asyncio.sleep(0)
        assert waiting.result() == Exchanged([], {})
        await loop_turns(3)
        assert polled_while_waiting
        assert wire._connection is not None and not wire._connection.busy_poll.polling
    finally:
        wire.close()


def test_busy_poll_is_read_in_microseconds_and_zero_turns_it_off():
    assert MemcachedStore.check_options({}).busy_poll == 200
    assert MemcachedStore.check_options({"busy_poll": "0"}).busy_poll == 0
    assert MemcachedStore.check_options({"busy_poll": "50"}).busy_poll == 50


def test_a_poller_left_on_a_closed_loop_polls_on_the_next():
    clock = StepClock()
    due = [True]
    poll = BusyPoll(1.0, lambda: due[0], clock)
    first = asyncio.new_event_loop()
    poll.sent(first)  # its turn is queued on a loop that never runs again
    first.close()
    second = asyncio.new_event_loop()
    try:
        poll.sent(second)
        second.run_until_complete(loop_turns(1))
        reads = clock.reads
        second.run_until_complete(loop_turns(5))
        assert clock.reads >= reads + 4  # polling on the loop that runs
        due[0] = False
        second.run_until_complete(loop_turns(3))
        assert not poll.polling
    finally:
        second.close()
