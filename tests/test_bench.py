"""The benchmark's machinery, in a few seconds (timings are never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.services import ROOT, require_binary

pytestmark = pytest.mark.slow  # the benchmark's machinery, valgrind included


def test_paired_rounds_against_a_revision_measure_both_sides(tmp_path):
    require_binary("wrk")
    require_binary("memcached")
    command = [sys.executable, "bench/paired.py", "--baseline", "HEAD", "--rounds", "1", "--duration", "1"]
    command += ["--concurrency", "2", "--stores", "memory", "--sessions", "5", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = tmp_path.glob("paired-*.json")
    report = json.loads(path.read_text())
    assert report["errors"] == {"ours": 0, "base": 0}
    rows = {(r["store"], r["route"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("memory", "counter", 2), ("memory", "balance", 2)}
    for row in rows.values():
        assert row["ours_rps"] > 0 and row["baseline_rps"] > 0 and row["ratio"]["median"] > 0
    # The baseline's temporary worktree is gone again.
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "bench-baseline-" not in worktrees


def test_bench_smoke_run_measures_every_scenario_in_both_modes(tmp_path):
    require_binary("wrk")
    require_binary("memcached")
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    from bench.run import split_cpus

    split = split_cpus()
    modes = ["pinned", "unpinned"] if split else ["unpinned"]
    assert report["modes"] == modes
    seen = {(r["mode"], r["server"], r["scenario"], r["concurrency"]) for r in report["results"]}
    for mode in modes:
        for server in ("ours-memory", "ours-memcached"):
            for scenario in ("ceiling", "counter", "balance"):
                for concurrency in (1, 4):
                    assert (mode, server, scenario, concurrency) in seen
        assert (mode, "ours-delayed", "counter", 1) in seen
        # The raw round trip to memcached, timed from the benchmark's process in each mode.
        assert 0 < report["raw_round_trip"][mode]["median_ms"] <= report["raw_round_trip"][mode]["p90_ms"] < 5
    for r in report["results"]:
        assert r["rps"] > 0 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        if r["server"] in ("ours-memory", "ours-memcached"):
            # The server's CPU over each run: whole-process figures, the IOLoop thread's within them.
            # Pinned, a server has one core; unpinned, it may use both.
            cores = 1.2 if r["mode"] == "pinned" else len(os.sched_getaffinity(0)) + 0.2
            assert 0 < r["loop_us"] <= r["cpu_us"] and 0 < r["busy"] <= cores, r
    check_floor(report, modes)
    check_cpu_rows(report, modes)
    check_targets(report, modes)
    assert "targets:" in result.stdout and "distance to the floor" in result.stdout
    assert report["machine"]["server_cpus"] == (sorted(split[0]) if split else None)
    alone = report["session_layer_us"]
    assert set(alone) >= {"load_increment_save", "decode_record_json", "encode_record_json"}
    assert all(us > 0 for us in alone.values())
    check_markdown(report, tmp_path, modes)


def check_floor(report: dict[str, Any], modes: list[str]) -> None:
    """Each memcached scenario at one connection beside the memory store's p50 plus its round trips."""
    floor = {(row["mode"], row["scenario"]): row for row in report["floor"]}
    assert set(floor) == {(mode, scenario) for mode in modes for scenario in ("counter", "balance")}
    for (mode, scenario), row in floor.items():
        memory = next(
            r
            for r in report["results"]
            if (r["mode"], r["server"], r["scenario"], r["concurrency"]) == (mode, "ours-memory", scenario, 1)
        )
        trips = {"counter": 1, "balance": 1}[scenario]  # the counter writes against this process's copy
        assert row["round_trips"] == trips and row["rtt_ms"] == report["raw_round_trip"][mode]["median_ms"]
        assert row["floor_ms"] == pytest.approx(memory["p50_ms"] + trips * row["rtt_ms"], abs=1e-3)
        assert row["above_floor_ms"] == pytest.approx(row["p50_ms"] - row["floor_ms"], abs=1e-3)


def check_cpu_rows(report: dict[str, Any], modes: list[str]) -> None:
    cpu = {(row["mode"], row["server"], row["scenario"]): row for row in report["cpu"]}
    servers, scenarios = ("ours-memory", "ours-memcached"), ("ceiling", "counter", "balance")
    assert set(cpu) == {(m, s, c) for m in modes for s in servers for c in scenarios}
    for mode in modes:
        assert cpu[(mode, "ours-memcached", "balance")]["cpu_ratio"][0] > 0
        assert "cpu_ratio" not in cpu[(mode, "ours-memory", "ceiling")]
        assert cpu[(mode, "ours-memcached", "balance")]["busy_ratio"][0] > 0


def check_targets(report: dict[str, Any], modes: list[str]) -> None:
    names = {(t["mode"], t["target"]) for t in report["targets"]}
    for mode in modes:
        assert {
            (mode, "memory counter / ceiling"),
            (mode, "memory balance / ceiling"),
            (mode, "memcached counter / ceiling"),
            (mode, "memcached balance / ceiling"),
            (mode, "memcached counter c=1 p50 ms"),
            (mode, "memcached balance c=1 p50 ms"),
            (mode, "20 ms memcached: counter c=4 / c=1"),
        } <= names
    latency = next(t for t in report["targets"] if t["target"] == "memcached counter c=1 p50 ms")
    assert latency["goal"] == "<= 0.45" and latency["spread"][0] <= latency["value"] <= latency["spread"][1]


def check_markdown(report: dict[str, Any], tmp_path: Any, modes: list[str]) -> None:
    """The report renders: the targets per mode, the floor table and every figure per mode."""
    from bench.report import write_markdown

    report["seconds"] = 1.0
    report["instructions"] = {"memory": {"ceiling": 800.0, "counter": 880.0, "balance": 860.0}}
    write_markdown(report, tmp_path / "BENCHMARKS.md", "chart.png", "latency.png")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "![Median latency against connections](latency.png)" in text
    assert "## Distance to the floor" in text and "## The session layer alone" in text
    for mode in modes:
        assert f"| {mode} | memory counter / ceiling |" in text
        assert f"| {mode} | page counter (GET /api) | 1 |" in text  # the floor table's counter row
        assert f"### {mode}, 4 connections" in text
    assert "## Server CPU per request (4 connections)" in text
    assert "| counter | 880.0 | 0.909 |" in text and "| ceiling | 800.0 |  |" in text
    assert ("## How to read: pinned and unpinned" in text) == (len(modes) == 2)


def test_charts_draw_every_mode(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.report import write_chart, write_latency_chart

    results = []
    for mode in ("pinned", "unpinned"):
        for server in ("ours-memory", "ours-memcached", "express-memory", "express-memcached"):
            for scenario in ("ceiling", "counter", "balance"):
                for c in (1, 10, 50):
                    results.append(
                        {"mode": mode, "server": server, "scenario": scenario, "concurrency": c, "rps": 1000.0}
                        | {"rps_min": 900.0, "rps_max": 1100.0, "p50_ms": c * 0.4, "p99_ms": c * 0.9}
                    )
    report = {"modes": ["pinned", "unpinned"], "settings": {"concurrency": [1, 10, 50]}, "results": results}
    write_chart(report, tmp_path / "a.png")
    write_latency_chart(report, tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_targets_pair_the_runs_of_each_round():
    from bench.run import evaluate

    def entry(server: str, scenario: str, per_round: list[float]) -> dict[str, Any]:
        runs = [{"rps": r, "p50_ms": 10.0, "p99_ms": 20.0} for r in per_round]
        median = sorted(per_round)[1]
        return {**runs[0], "server": server, "scenario": scenario, "concurrency": 50, "rps": median, "runs": runs}

    # Round 2 ran on a fast stretch of the machine for the counter only: the ratio of the medians
    # would say 1.35; the rounds' own ratios say 0.9, 1.5 and 0.9.
    results = [
        entry("ours-memory", "ceiling", [100, 200, 300]),
        entry("ours-memory", "counter", [90, 300, 270]),
    ]
    target = next(t for t in evaluate(results, None, 50) if t["target"] == "memory counter / ceiling")
    assert (target["value"], target["spread"], target["met"]) == (0.9, [0.9, 1.5], True)


def test_instruction_counter_measures_every_route():
    require_binary("valgrind")
    result = subprocess.run(
        [sys.executable, "bench/instructions.py", "--requests", "10", "--connections", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {line.split()[2]: float(line.split()[3]) for line in result.stdout.splitlines()}
    assert set(figures) == {"ceiling", "counter", "balance"}
    assert all(thousands > 0 for thousands in figures.values())


def test_runs_a_ratio_pairs_are_close_together(monkeypatch, tmp_path):
    import argparse

    import bench.run as bench_run

    calls: list[tuple[str, str, int]] = []

    def fake_wrk(url: str, path: str, cookies: Any, concurrency: int, duration: int) -> dict[str, float]:
        calls.append((url, path, concurrency))
        return {"rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "errors": 0}

    monkeypatch.setattr(bench_run, "wrk", fake_wrk)
    servers = [bench_run.Server(name, [], {}, tmp_path, port) for name, port in (("a", 1), ("b", 2), ("c", 3))]
    for server in servers:
        server.cookies = {"anonymous": tmp_path, "logged_in": tmp_path}
    bench_run.measure(servers, argparse.Namespace(runs=2, target_runs=4, concurrency=[1, 10, 50], duration=1))
    measured = calls[len(servers) :]  # after one warm-up per server
    per_round = len(servers) * len(bench_run.SCENARIOS) * 3
    # Two full rounds, then two more of one connection and the highest concurrency alone (the
    # targets' figures).
    extra = measured[2 * per_round :]
    assert len(extra) == 2 * 2 * len(servers) * len(bench_run.SCENARIOS)
    assert {c for _, _, c in extra} == {1, 50} and len(set(extra)) == len(extra) // 2
    measured = measured[: 2 * per_round]
    for start in range(0, len(measured), per_round):
        round_calls = measured[start : start + per_round]
        assert len(set(round_calls)) == per_round  # every combination once
        block = len(servers) * len(bench_run.SCENARIOS)
        for b in range(0, per_round, block):
            # One concurrency at a time, and one server's scenarios back to back within it.
            assert len({c for _, _, c in round_calls[b : b + block]}) == 1
            urls = [u for u, _, _ in round_calls[b : b + block]]
            runs_of_each = [urls[i : i + len(bench_run.SCENARIOS)] for i in range(0, block, len(bench_run.SCENARIOS))]
            assert all(len(set(run)) == 1 for run in runs_of_each)


def test_servers_are_pinned_to_a_core_of_their_own():
    import os
    import time
    from pathlib import Path

    from bench.run import pin, split_cpus

    split = split_cpus()
    if len(os.sched_getaffinity(0)) < 2:
        assert split is None
        return
    assert split is not None
    server_cpus, load_cpus = split
    assert len(server_cpus) == 1 and not server_cpus & load_cpus
    assert server_cpus | load_cpus == os.sched_getaffinity(0)
    # A process with a thread already running, like a server once it answers.
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pin(child.pid, server_cpus)
        assert {int(t.name): os.sched_getaffinity(int(t.name)) for t in tasks.iterdir()} == {
            int(t.name): server_cpus for t in tasks.iterdir()
        }
    finally:
        child.kill()
        child.wait()


def test_memory_store_measure_sweeps_each_wave_apart():
    result = memory_sessions("--sessions", "3000", "--expire", "400", "--waves", "3")
    assert result.returncode == 0, result.stderr
    memory = json.loads(result.stdout)
    # Each wave frees its own sessions and stops at the first live one.
    assert [wave["expired"] for wave in memory["waves"]] == [400, 400, 400]
    assert memory["remaining"] == 3000 - 3 * 400 and memory["expired"] == 400
    low, high = memory["longest_stall_spread_ms"]
    assert low <= memory["longest_stall_ms"] <= high
    assert sorted(wave["longest_stall_ms"] for wave in memory["waves"])[1] == memory["longest_stall_ms"]
    assert memory["rss_bytes_per_session"] > 0
    from bench.run import evaluate

    stall = next(t for t in evaluate([], memory, 50) if t["target"].startswith("longest stall"))
    assert stall["spread"] == [low, high]
    refused = memory_sessions("--sessions", "100", "--expire", "50", "--waves", "3")
    assert refused.returncode == 2 and "waves * expire" in refused.stderr


def memory_sessions(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/memory_sessions.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_free_ports_are_never_handed_out_twice():
    # Chosen ports are bound later (memcached, the delaying proxy, each server): a port handed out
    # twice put memcached itself where the 20 ms proxy should have been, in a published run.
    from harness import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_delayed_figure_that_shows_no_delay_is_refused():
    from bench.run import delayed_figure

    def run(p50_ms: float) -> dict[str, float]:
        return {"rps": 700.0, "p50_ms": p50_ms, "p99_ms": 2 * p50_ms, "errors": 0.0}

    # The withdrawn run's case: memcached itself on the proxy's port, 1.19 ms medians.
    with pytest.raises(RuntimeError, match="under 20 ms"):
        delayed_figure(1, [run(1.19), run(1.2), run(1.3)])
    assert delayed_figure(1, [run(44.3), run(44.1), run(45.0)])["p50_ms"] == 44.3


def test_server_cpu_is_split_between_the_main_thread_and_the_others():
    # The benchmark's CPU per request: the IOLoop (main thread) apart from the store's workers.
    from bench.run import cpu_per_request, cpu_seconds

    code = (
        "import threading, time\n"
        "def spin(seconds, then=None):\n"
        "    end = time.thread_time() + seconds\n"
        "    while time.thread_time() < end: pass\n"
        "    if then: then.set(); time.sleep(30)\n"
        "spin(0.3)\n"
        "spun = threading.Event()\n"
        "threading.Thread(target=spin, args=(0.6, spun), daemon=True).start()\n"
        "spun.wait(); print('spun', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "spun\n"
        main, others = cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert 0.25 <= main <= 0.55 and 0.55 <= others <= 0.8, (main, others)
    figures = cpu_per_request((1.0, 0.5), (1.3, 0.7), {"requests": 1000, "seconds": 1.0})
    assert figures == pytest.approx({"cpu_us": 500.0, "loop_us": 300.0, "busy": 0.5})


def test_missed_read_note_says_from_the_runs_cpu_whether_the_read_waited():
    from bench.run import memcached_read_note

    def row(scenario: str, cpu_us: float, loop_us: float, busy: float, ratios: bool = True) -> dict[str, Any]:
        found = {"server": "ours-memcached", "scenario": scenario, "cpu_us": cpu_us, "loop_us": loop_us}
        found.update(others_us=cpu_us - loop_us, busy=busy)
        if ratios:
            found.update(
                cpu_ratio=(0.911, [0.68, 0.97]), busy_ratio=(0.987, [0.95, 1.0]), rps_ratio=(0.867, [0.67, 0.97])
            )
        return found

    memory_read = {**row("balance", 409.0, 409.0, 1.0), "server": "ours-memory"}
    report = {"cpu": [row("ceiling", 374.0, 374.0, 0.99, False), row("balance", 431.0, 424.0, 0.98), memory_read]}
    note = memcached_read_note(report, 60.0, 38.0)
    assert "core 0.98 busy on the read (0.99 on its ceiling)" in note
    assert "431 µs of CPU a request against the ceiling's 374" in note
    assert "ceiling CPU / read CPU 0.911, beside a throughput ratio of 0.867" in note
    assert "busy ratio is 0.987 (median): waiting on memcached costs about 1 point," in note
    assert "+15 µs on the IOLoop thread and +7 µs on the worker threads" in note
    # A report without CPU figures (an older run) still gets a note, without the figures it lacks.
    assert "Where it goes" not in memcached_read_note({}, 60.0, 38.0)


def fake_entry(
    mode: str, server: str, scenario: str, c: int, per_round: list[float], p50: float = 1.0
) -> dict[str, Any]:
    runs = [{"rps": r, "p50_ms": p50, "p99_ms": 2 * p50} for r in per_round]
    entry = {"mode": mode, "server": server, "scenario": scenario, "concurrency": c, "runs": runs}
    return entry | {"rps": sorted(per_round)[len(per_round) // 2], "p50_ms": p50, "p99_ms": 2 * p50}


def test_targets_are_given_per_mode_with_the_new_goals():
    from bench.targets import evaluate_modes

    results = []
    for mode, ours in (("pinned", 150.0), ("unpinned", 95.0)):
        for c in (1, 10, 50):
            for scenario in ("ceiling", "counter", "balance"):
                for store in ("memory", "memcached"):
                    p50 = 0.4 if mode == "pinned" else 0.5
                    results.append(fake_entry(mode, f"ours-{store}", scenario, c, [ours, ours, ours], p50))
                    results.append(fake_entry(mode, f"express-{store}", scenario, c, [100.0, 100.0, 100.0]))
    memory = {"rss_bytes_per_session": 449.0, "longest_stall_ms": 1.5}
    targets = {(t["mode"], t["target"]): t for t in evaluate_modes(results, memory, 50, ["pinned", "unpinned"])}
    for mode, lead, behind in (("pinned", 1.5, True), ("unpinned", 0.95, False)):
        for store in ("memory", "memcached"):
            for scenario in ("counter", "balance"):
                for c in (1, 10, 50):  # never behind express-session: same store, scenario and concurrency
                    t = targets[(mode, f"{store} {scenario} c={c} / express-session")]
                    assert (t["value"], t["goal"], t["met"]) == (lead, ">= 1.0", behind)
                t = targets[(mode, f"{store} {scenario} / ceiling")]  # the session layer at 50 connections
                assert (t["value"], t["goal"], t["met"]) == (1.0, ">= 0.9", True)
        for scenario in ("counter", "balance"):
            t = targets[(mode, f"lead: memcached {scenario} c=1 / express-session")]
            assert (t["value"], t["goal"], t["met"]) == (lead, ">= 1.3", mode == "pinned")
            t = targets[(mode, f"memcached {scenario} c=1 p50 ms")]
            assert (t["goal"], t["met"]) == ("<= 0.45", mode == "pinned")
    # The memory store at scale is measured once, not per mode; the superseded targets are gone.
    assert targets[(None, "memory store bytes per session")]["met"]
    assert not any(name == "memory counter / express-session" for _, name in targets)
    assert {mode for mode, _ in targets} == {"pinned", "unpinned", None}


def test_floor_is_the_memory_store_plus_the_round_trips():
    from bench.floor import floor_rows

    results = [
        fake_entry("unpinned", "ours-memory", "counter", 1, [1.0], 0.30),
        fake_entry("unpinned", "ours-memcached", "counter", 1, [1.0], 0.52),
        fake_entry("unpinned", "ours-memory", "balance", 1, [1.0], 0.28),
        fake_entry("unpinned", "ours-memcached", "balance", 1, [1.0], 0.33),
        fake_entry("pinned", "ours-memory", "balance", 1, [1.0], 9.0),  # another mode's: not used
    ]
    rows = floor_rows(results, {"unpinned": {"median_ms": 0.05, "p90_ms": 0.06}})
    assert [(r["scenario"], r["round_trips"], r["floor_ms"], r["above_floor_ms"]) for r in rows] == [
        ("counter", 1, 0.35, 0.17),
        ("balance", 1, 0.33, 0.0),
    ]


def test_raw_round_trip_times_a_memcached_on_one_socket():
    import socketserver
    import threading

    from bench.floor import raw_round_trip

    class Version(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() == b"version\r\n":
                self.wfile.write(b"VERSION 1.6.0\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Version) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        timed = raw_round_trip(server.server_address[1], exchanges=200, warm_up=10)
        server.shutdown()
    assert 0 < timed["median_ms"] <= timed["p90_ms"] < 50


def test_pinning_modes_move_the_script_its_helpers_and_the_servers():
    import time
    from pathlib import Path

    from bench.pinning import apply_mode, split_cpus

    every_cpu, split = set(os.sched_getaffinity(0)), split_cpus()
    if split is None:
        pytest.skip("one CPU: nothing to pin")
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]

    class Running:
        cpus: set[int] | None = None
        pid = children[0].pid

    def cpus_of(pid: int) -> set[int]:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        found = {frozenset(os.sched_getaffinity(int(t.name))) for t in tasks}
        assert len(found) == 1, found  # every thread alike
        return set(next(iter(found)))

    server = Running()
    try:
        deadline = time.monotonic() + 10
        while len(list(Path(f"/proc/{children[0].pid}/task").iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        apply_mode("pinned", split, every_cpu, [server], [children[1].pid])
        assert (cpus_of(children[0].pid), server.cpus) == (split[0], split[0])
        assert cpus_of(children[1].pid) == split[1] and cpus_of(os.getpid()) == split[1]
        apply_mode("unpinned", split, every_cpu, [server], [children[1].pid])
        assert (cpus_of(children[0].pid), server.cpus) == (every_cpu, None)
        assert cpus_of(children[1].pid) == every_cpu and cpus_of(os.getpid()) == every_cpu
        with pytest.raises(ValueError):
            apply_mode("sideways", split, every_cpu, [], [])
    finally:
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            os.sched_setaffinity(int(task.name), every_cpu)
        for child in children:
            child.kill()
            child.wait()


def test_pinning_option_takes_the_modes_to_run():
    from bench.run import parse_args

    assert parse_args([]).pinning == ["pinned", "unpinned"]
    assert parse_args(["--pinning", "unpinned"]).pinning == ["unpinned"]
    assert parse_args(["--smoke", "--pinning", "pinned,unpinned"]).pinning == ["pinned", "unpinned"]
    with pytest.raises(SystemExit):
        parse_args(["--pinning", "pinned,sideways"])


def test_regenerated_markdown_keeps_the_written_sections_in_their_order(tmp_path):
    from bench.report import ABUSE_SECTION, HISTORY_SECTION, STORES_SECTION, kept_sections

    path = tmp_path / "BENCHMARKS.md"
    written = [f"{heading}\n\n{heading[3:]} text.\n" for heading in (ABUSE_SECTION, HISTORY_SECTION, STORES_SECTION)]
    path.write_text("# Benchmarks\n\n## Targets\n\nold figures\n\n" + "\n".join(written))
    assert kept_sections(path) == written
