"""What stands in the way of each missed target, in words, from a benchmark run's own figures."""

from __future__ import annotations

from typing import Any

from bench.figures import find, in_mode, mode_of, modes_of


def explain(report: dict[str, Any], top: int) -> list[str]:
    """What stands in the way of each missed target, from this run's own figures."""
    results = report["results"]
    missed = {t["target"] for t in report["targets"] if not t["met"]}

    def rps(server: str, scenario: str) -> float:
        r = find(results, server, scenario, top)
        return float(r["rps"]) if r else float("nan")

    notes = []

    measured = {t["target"]: t["value"] for t in report["targets"]}

    def extra_us(store: str, scenario: str) -> float:
        # The server runs near one full core under load, so 1/rps is its time per request; the
        # paired ratio (not the two medians) says how much longer the session route takes.
        ratio = measured.get(f"{store} {scenario} / ceiling")
        ceiling_us = 1e6 / rps(f"ours-{store}", "ceiling")
        return ceiling_us * (1 / ratio - 1) if ratio else float("nan")

    if "memcached counter / memory counter" in missed:
        notes.append(
            "- **memcached page counter.** The loads and compare-and-swap writes of one loop iteration go "
            "to memcached as one batch: one send on a pipelined connection the IOLoop reads itself "
            "(`stores/memcached_wire.py`), answers parsed as they arrive, no thread hand-off. A run below "
            "the target is within this machine's spread (see the spread columns) or a sign that batches "
            "were small (few connections)."
        )
    counted = report.get("instructions", {}).get("memory")
    counted_text = (
        f"Counted in instructions (this run's table above), the counter keeps "
        f"{counted['ceiling'] / counted['counter']:.3f} of the ceiling and the balance "
        f"{counted['ceiling'] / counted['balance']:.3f}."
        if counted
        else "Counted in instructions (`bench/instructions.py`), the counter kept 0.926 of the ceiling and "
        "the balance 0.934 when last counted."
    )

    if missed & {"memory counter / ceiling", "memory balance / ceiling"}:
        alone = report.get("session_layer_us", {})
        json_us = alone.get("decode_record_json", 0) + alone.get("encode_record_json", 0)
        ceiling_us = 1e6 / rps("ours-memory", "ceiling")
        cpu = {r["scenario"]: r for r in report.get("cpu", []) if r["server"] == "ours-memory"}
        cpu_text = ""
        if all(cpu.get(k, {}).get("cpu_ratio") for k in ("counter", "balance")):
            cpu_text = (
                f'It is CPU, not waiting ("Server CPU per request"): ceiling CPU / route CPU '
                f"{cpu['counter']['cpu_ratio'][0]:.3f} on the counter and {cpu['balance']['cpu_ratio'][0]:.3f} on the "
                f"balance, beside throughput ratios of {cpu['counter']['rps_ratio'][0]:.3f} and "
                f"{cpu['balance']['rps_ratio'][0]:.3f}, with the core {cpu['counter']['busy']:.2f} and "
                f"{cpu['balance']['busy']:.2f} busy. "
            )
        notes.append(
            f"- **Session routes against the ceiling.** In this run the session layer adds "
            f"{extra_us('memory', 'counter'):.0f} µs to the memory-store counter and "
            f"{extra_us('memory', 'balance'):.0f} µs to the balance, against {ceiling_us:.0f} µs for a "
            f"whole sessionless request; a 0.90 ratio allows {ceiling_us / 9:.0f} µs. {cpu_text}Alone, in a tight loop "
            f'("The session layer alone"), loading, incrementing and saving a session costs '
            f"{alone.get('load_increment_save', float('nan')):.0f} µs, {json_us:.0f} µs of it the record's "
            "JSON (orjson); the rest is Python: the cookie and timeout checks, the Session object and its "
            "operations, the store's bookkeeping. Inside a loaded server the same work takes about twice "
            "as long, and the handler adds its own share (one more coroutine, the session's headers, the "
            "XSRF cookie check). The ratio also falls as the bare request gets cheaper: cutting Tornado's "
            "per-request costs (access lines, the Date header, TCP_NODELAY, 64 KiB zero-filled reads) sped "
            f"every route up by the same microseconds, which is a larger share of the ceiling's. {counted_text} Of "
            "the balance's extra instructions (56k when last taken apart), about 9k are Tornado writing the "
            "one header it adds, Cache-Control, and about 10k the handler's own coroutine and finish. "
            "The rest is cache misses: with "
            "callgrind's simulated caches (one connection, counted before the cookie-header cache and the "
            "other trims of 2026-11-27) the balance adds 3.3k level-1 instruction-cache "
            "and 1.8k data-cache misses per request to the ceiling's 21.7k and 10.9k, about 25 µs at "
            "level-2 latency, spread over the interpreter and the C functions the session path calls "
            "(HMAC, JSON, dicts, allocation), none adding a tenth of them. It is not the rotation over "
            "1,000 sessions (rotating over 10, the balance was no faster in paired runs). Compiling the "
            "session core with mypyc (tried, not kept) halved the tight loop but moved a whole request by "
            "about 2%: no single function stands out any more, and what would reach 0.90 is a shorter "
            "path per request (less Python run and less code touched between the socket and the store: "
            "fewer Tornado and coroutine layers), not a faster session core."
        )
    if "memcached balance / ceiling" in missed:
        notes.append(memcached_read_note(report, extra_us("memcached", "balance"), extra_us("memory", "balance")))
    if any("c=1 p50" in t or t.startswith("lead:") for t in missed):
        note = one_connection_note(report)
        if note:
            notes.append(note)
    if any(t.endswith("/ express-session") for t in missed):
        ours, theirs = rps("ours-memory", "ceiling"), rps("express-memory", "ceiling")
        notes.append(
            f"- **express-session.** Node's HTTP stack (llhttp in C, V8) serves a sessionless route at "
            f"{theirs:.0f} req/s here against Tornado's pure-Python HTTP/1.1 at {ours:.0f}. Relative to its "
            f"own ceiling our session layer is the cheaper one: the memory-store counter keeps "
            f"{rps('ours-memory', 'counter') / ours:.2f} of our ceiling, express-session's "
            f"{rps('express-memory', 'counter') / theirs:.2f} of Express's. Beyond that the gap is the HTTP "
            "layer, not sessions; in production several processes per host behind nginx scale with cores."
        )
    return notes


def _points(share: float) -> str:
    points = round(100 * share)
    return f"{points} point{'' if points == 1 else 's'}"


def memcached_read_note(report: dict[str, Any], extra_us: float, memory_extra_us: float) -> str:
    """What stands in the way of the memcached read's target, from this run's CPU and instruction figures."""
    cpu = {(r["server"], r["scenario"]): r for r in report.get("cpu", [])}
    read, ceiling = cpu.get(("ours-memcached", "balance")), cpu.get(("ours-memcached", "ceiling"))
    memory_read = cpu.get(("ours-memory", "balance"))
    where = ""
    if read and ceiling and memory_read and all(read.get(k) for k in ("cpu_ratio", "rps_ratio", "busy_ratio")):
        where = (
            f'Where it goes ("Server CPU per request" above): the server kept its core '
            f"{read['busy']:.2f} busy on the read ({ceiling['busy']:.2f} on its ceiling), and the read cost "
            f"{read['cpu_us']:.0f} µs of CPU a request against the ceiling's {ceiling['cpu_us']:.0f}: ceiling "
            f"CPU / read CPU {read['cpu_ratio'][0]:.3f}, beside a throughput ratio of {read['rps_ratio'][0]:.3f}. "
            f"In each round the throughput ratio is the CPU ratio times the core's busy share against the "
            f"ceiling's, and that busy ratio is {read['busy_ratio'][0]:.3f} (median): waiting on memcached costs "
            f"about {_points(1 - read['busy_ratio'][0])}, the CPU the read spends the rest (the two "
            "medians can differ by more, being taken over rounds this far apart). Against the memory "
            f"store's read ({memory_read['cpu_us']:.0f} µs) it spends {read['loop_us'] - memory_read['loop_us']:+.0f} "
            f"µs on the IOLoop thread and {read['others_us'] - memory_read['others_us']:+.0f} µs on the worker "
            "threads. "
        )
    counted = report.get("instructions", {})
    on_memcached, on_memory = counted.get("memcached"), counted.get("memory")
    count = ""
    if on_memcached and on_memory:
        extra = on_memcached["balance"] - on_memory["balance"]
        count = (
            f"Counted under callgrind at {report.get('instructions_connections', '?')} connections, the "
            f"memcached read executes {extra:+.0f}k instructions ({extra / on_memory['balance']:+.1%}) against "
            "the memory read: the same work, counted. The counts vary more than the work does (a memcached "
            "read 860-912k over seven counts, a memory read 856-871k), since valgrind runs one thread at a "
            "time and its batches are not always whole. "
        )
    return (
        f"- **memcached reads.** In this run a memcached read adds {extra_us:.0f} µs to a request against the "
        f"ceiling; the memory store's adds {memory_extra_us:.0f} µs. {where}{count}"
        "What that CPU is: about 120 more Python calls a request than on the memory store (cProfile): the "
        "key's SHA-256, a future per load, the batch's bookkeeping, the answer parsed and the record's MAC "
        "checked, and the coroutine frames between the handler and the store resumed after the wait; "
        "each a microsecond or less. The batch itself goes out on a pipelined connection the IOLoop reads "
        "(`stores/memcached_wire.py`). Measured and removed earlier: a second value per load, the garbage "
        "collector walking the suspended requests, touches as round trips of their own, and (at one "
        "connection) the worker threads' hand-offs. Measured and not kept: the batch's reads parsed in C "
        "(libmemcached through pylibmc: no fewer instructions per read) and a compiled session core "
        "(mypyc: about 2% of a whole request). What would reach 0.90 is fewer Python steps between the "
        "socket and the store, not a faster one."
    )


def one_connection_note(report: dict[str, Any]) -> str | None:
    """Where a memcached request's time goes at one connection, from this run's floor rows."""
    rows = {(r["mode"], r["scenario"]): r for r in report.get("floor", [])}
    if not rows:
        return None
    parts = [
        f"{mode} {scenario} p50 {r['p50_ms']:.3f} ms against a floor of {r['floor_ms']:.3f} "
        f"({r['round_trips']} x {r['rtt_ms'] * 1000:.0f} µs raw round trip)"
        for (mode, scenario), r in sorted(rows.items())
    ]
    return (
        "- **One connection on memcached.** "
        + "; ".join(parts)
        + ". A round trip timed from the servers' core to memcached on the other costs several times one "
        "on a shared core: on this virtual machine waking an idle core is dear. The counter needs one, "
        "where express-session's `get` and `set` take two: it runs on the copy of the session this process "
        "kept when it last wrote it, and writes with a `cas` against that copy's version, so a stored write "
        "proves the copy was current (a lost one runs the request again on a fresh load; "
        "`SessionHandler.runs_on_copies`); the response still waits for the write. While an answer is due "
        "the IOLoop keeps "
        "turning rather than sleeping (`stores/busy_poll.py`, `MEMCACHED_BUSY_POLL`): asleep, the core woke "
        "with cold caches and a counter request took 0.48 ms of CPU against 0.22 on the memory store "
        "(docs/BENCHMARKS.md, history); the polling is CPU time, bounded per round trip. What lies above "
        "the floor is the store's own work per request "
        "(the key's hash, the batch, the answer parsed and the record's MAC checked) and the sends' "
        "system calls, which pay the remote core's wake-up. A read-only request still loads: with nothing "
        "to write, only a read can confirm a copy."
    )


def explain_modes(report: dict[str, Any], top: int) -> list[str]:
    """The notes on each mode's missed targets, each note marked with its mode."""
    notes = []
    for mode in modes_of(report):
        view = {
            **report,
            "results": in_mode(report["results"], mode),
            "targets": [t for t in report["targets"] if t.get("mode") == mode],
            "cpu": [r for r in report.get("cpu", []) if mode_of(r) == mode],
            "floor": [r for r in report.get("floor", []) if r.get("mode") == mode],
        }
        notes += [note.replace(".**", f" ({mode}).**", 1) for note in explain(view, top)]
    return notes
